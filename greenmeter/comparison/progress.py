"""Progress of long jobs (:func:`greenmeter.compare`, :func:`greenmeter.optimize`, the architecture search,
the demo), one rule for all.

Each of them takes ``progress: bool | Callable[[str], None]``:

* ``True``: progress on standard error. A job of known size (:class:`Progress`: ``compare``, ``optimize``,
  per-layer sensitivity) shows a tqdm progress bar (``tqdm.auto``) where one can be drawn: on a terminal,
  and in a Jupyter notebook (a widget bar with ``ipywidgets`` installed, a text bar in the cell's output
  without). Where none can (a log file, a pipe) it writes one line per item, ``[done/total] text``, so
  logs stay readable. Other jobs write one line per step (flushed at once), after the job's prefix;
* ``False``: nothing is shown;
* a callable: it is called with each line (no prefix, no count), and nothing is printed;
* anything else is a :class:`~greenmeter.ConfigError`, raised where the job is called, before any work.

:func:`progress_printer` turns the argument into a function of one line; :class:`Progress` counts the
items of a job of known size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

from greenmeter._errors import ConfigError
from greenmeter._text import terminal_text

__all__ = ["Progress", "progress_printer"]

_T = TypeVar("_T")
_TEXT = 60  # characters of the current item shown after a bar


def progress_printer(progress: Any, *, prefix: str = "") -> Callable[[str], None]:
    """The function that shows one progress line, as ``progress`` asks.

    Args:
        progress: ``True`` (lines on standard error), ``False`` (none) or a callable given each line.
        prefix: put before each line on standard error (e.g. ``"[search] "``); a callable gets the bare line.

    Returns:
        A function of one ``str``; it writes to the ``sys.stderr`` of the moment it is called.

    Raises:
        ConfigError: ``progress`` is none of these (``None`` included).
    """
    if progress is True:
        def show(line: str) -> None:
            print(terminal_text(f"{prefix}{line}"), file=sys.stderr, flush=True)  # variant names are the user's

        return show
    if progress is False:
        return _quiet
    if callable(progress):
        return progress  # type: ignore[no-any-return]
    raise ConfigError(f"progress must be True (lines on stderr), False (none) or a callable given each line, "
                      f"not {progress!r}")


def _quiet(line: str) -> None:
    """Shows nothing."""


class Progress:
    """Progress of a job of ``total`` items: a tqdm bar on a terminal or in a notebook, a ``[done/total]``
    line per item on other standard errors, or the user's callable given each line.

    Args:
        progress: as for :func:`progress_printer`.
        total: the number of items the job will count (at least 1 is assumed); :meth:`grow` adds more.
        prefix: put before each line on standard error, and the bar's label (e.g. ``"[optimize] "``).
        counted: lines on standard error carry ``[done/total]`` (``False``: the bare line after the prefix).

    Raises:
        ConfigError: a bad ``progress``.
    """

    def __init__(self, progress: bool | Callable[[str], None], total: int, *, prefix: str = "",
                 counted: bool = True) -> None:
        self._show = progress_printer(progress, prefix=prefix)
        self.total, self.done = max(total, 1), 0
        self.enabled = progress is not False
        self._counted = progress is True and counted  # a callable gets the bare line
        self._prefix = prefix
        self._bar: Any = None
        self.bar = progress is True and _bar_renders(sys.stderr)

    def __call__(self, text: str, advance: int = 0, *, keep: bool = False) -> None:
        """Show ``text``, first counting ``advance`` more items done.

        Args:
            text: what the job is doing (or has just done).
            advance: items finished since the last call.
            keep: with a bar, write ``text`` above it as a line of its own, as well (a failure, an
                interruption: what must stay on screen after the bar moves on).
        """
        self.done += advance
        if not self.enabled:
            return
        if not self.bar:
            count = f"[{self.done}/{self.total}] " if self._counted else ""
            self._show(f"{count}{text}")
            return
        if self._bar is None:
            self._bar = _make_bar(self.total, self.done - advance, self._prefix.strip(" []:") or None,
                                  terminal_text(text)[:_TEXT])
        bar = self._bar
        if keep:
            bar.write(terminal_text(f"{self._prefix}{text}"), file=sys.stderr)
        bar.set_postfix_str(terminal_text(text)[:_TEXT], refresh=not advance)
        if advance:
            bar.update(advance)  # redraws (at most every tqdm's mininterval, and always at the end)
        if self.done >= self.total:
            self.close()

    def advance(self, items: int = 1) -> None:
        """Count ``items`` more done without a new line (the bar moves; nothing is written otherwise)."""
        self.done += items
        if self._bar is not None:
            self._bar.update(items)
            if self.done >= self.total:
                self.close()

    def iterate(self, items: Iterable[_T]) -> Iterator[_T]:
        """Yield each of ``items``, counting one done when the caller comes back for the next (whatever
        path the loop's body took)."""
        for item in items:
            yield item
            self.advance()

    def grow(self, more: int) -> None:
        """Count ``more`` items than first announced (a job that learns its size as it goes)."""
        self.total += max(more, 0)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def close(self) -> None:
        """End the bar, if one is shown (it stays on screen as last drawn); harmless when called again."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's kernel app is running): where ``tqdm.auto`` draws a notebook bar."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _bar_renders(stream: TextIO) -> bool:
    """Whether a progress bar can be drawn on ``stream``: a terminal, or a notebook cell's output."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a stand-in stream without isatty, or a closed one
        tty = False
    return bool(tty) or _in_notebook()


def _make_bar(total: int, done: int, label: str | None, text: str) -> Any:
    """A ``tqdm.auto`` bar on the ``sys.stderr`` of the moment: a notebook widget where ipywidgets is
    installed; in a notebook without it, tqdm's text bar in the cell's output."""
    from tqdm.auto import tqdm

    options = {"total": total, "initial": done, "desc": label, "postfix": text, "file": sys.stderr, "leave": True,
               "dynamic_ncols": True}
    try:
        return tqdm(**options)
    except ImportError:  # tqdm.notebook without ipywidgets: "IProgress not found"
        from tqdm.std import tqdm as text_tqdm

        return text_tqdm(**options)
