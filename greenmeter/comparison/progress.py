"""Progress lines for long jobs (:func:`greenmeter.compare`, the architecture search, the demo), one rule for all.

Each of them takes ``progress: bool | Callable[[str], None]``:

* ``True``: each line goes to standard error (flushed at once), after the job's prefix;
* ``False``: nothing is shown;
* a callable: it is called with each line (no prefix), and nothing is printed;
* anything else is a :class:`~greenmeter.ConfigError`, raised where the job is called, before any work.

:func:`progress_printer` turns the argument into a function of one line. :class:`Progress` counts the
items of a job of known size (as ``compare`` has): on standard error each line says ``[done/total]``, or
a bar is redrawn in place when standard error is a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter._text import terminal_text

__all__ = ["Progress", "progress_printer"]

_BAR = 30  # characters in the terminal bar


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
    """Progress of a job of ``total`` items: a redrawn bar on a terminal, a ``[done/total]`` line per item
    otherwise, or the user's callable given each line.

    Args:
        progress: as for :func:`progress_printer`.
        total: the number of items the job will count (at least 1 is assumed).

    Raises:
        ConfigError: a bad ``progress``.
    """

    def __init__(self, progress: bool | Callable[[str], None], total: int) -> None:
        self._show = progress_printer(progress)
        self.total, self.done = max(total, 1), 0
        self.enabled = progress is not False
        self._counted = progress is True  # on stderr: lines carry the count
        self.tty = self._counted and sys.stderr.isatty()

    def __call__(self, text: str, advance: int = 0) -> None:
        """Show ``text``, first counting ``advance`` more items done."""
        self.done += advance
        if not self.enabled:
            return
        if not self._counted:
            self._show(text)
        elif self.tty:
            filled = int(_BAR * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (_BAR - filled)}] {self.done}/{self.total} {terminal_text(text)[:60]:<60}")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        else:
            self._show(f"[{self.done}/{self.total}] {text}")
