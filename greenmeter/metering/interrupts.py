"""How greenmeter's long jobs treat SIGINT and SIGTERM: as an interruption that ends the stored run ``interrupted``.

Ctrl-C (SIGINT) already reaches Python code as a :class:`KeyboardInterrupt`. SIGTERM, by default, ends
the process at once, leaving its stored run ``running`` (listed as ``incomplete``) and losing what a job
held in memory. :func:`sigterm_interrupts` turns SIGTERM into :class:`Terminated`, a ``KeyboardInterrupt``
of its own, for the length of a job (``compare`` uses it), so the job ends as Ctrl-C ends it: the run is
finished ``interrupted``, what was measured is kept, and the command line prints one line and exits 143.

:func:`signals_deferred` holds both signals back for a short step that must not be cut in two (storing a
record), and delivers them when it ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Terminated", "exit_code_for", "signals_deferred", "sigterm_interrupts"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, received while :func:`sigterm_interrupts` was in force: an interruption, as Ctrl-C is.

    A ``KeyboardInterrupt``, so every rule for Ctrl-C applies to it (a stored run ends ``interrupted``).

    Attributes:
        signal_name: ``"SIGTERM"``.
    """

    signal_name = "SIGTERM"

    def __init__(self) -> None:
        super().__init__("received SIGTERM")


def exit_code_for(interrupt: KeyboardInterrupt) -> int:
    """The shell's exit status for a process ended by this interruption: 128 + the signal's number.

    130 for Ctrl-C (SIGINT), 143 for :class:`Terminated` (SIGTERM).
    """
    name = getattr(interrupt, "signal_name", "SIGINT")
    return 128 + int(signal.Signals[name])


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread instead of ending the process.

    Only where SIGTERM still has its default action (a handler the program installed is left alone) and
    in the main thread (Python runs signal handlers nowhere else); elsewhere the block changes nothing.
    The previous handler is restored when the block ends. Blocks may nest.
    """
    if not _main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back during the block, then deliver the first one that came to its handler.

    For short steps that must not be cut in two, such as storing a record. Delivered when the block ends
    (also when it raises), to the handler in place before it: Ctrl-C then raises ``KeyboardInterrupt``
    after the step. Outside the main thread the block changes nothing.
    """
    if not _main_thread() or any(signal.getsignal(s) is None for s in (signal.SIGINT, signal.SIGTERM)):
        yield  # (None: a handler set outside Python, which could not be put back)
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])
