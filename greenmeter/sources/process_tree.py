"""The live processes below this one: what the process-mode CPU and RAM estimates add for child processes.

Work a measured block hands to child processes (``DataLoader(num_workers=4)``, a ``multiprocessing`` pool, a
subprocess) runs outside this process. ``os.times()`` counts a child's CPU time only once the child has been
waited for, so a block whose workers outlive it, or are still running when the window closes, would measure
almost nothing. The process-mode estimates therefore add, at every read, the CPU time and resident memory of
every live descendant (children, grandchildren, ...), read with psutil:

* **CPU:** each live descendant's user + system time, plus the time of its own children that it has waited
  for (they left the live tree and their time moved into its parent's counters). A descendant this process
  waits for moves into ``os.times()`` at that moment and out of the tree, so nothing is counted twice.
* **Memory:** each live descendant's unique set size (USS: the pages no other process maps). A forked worker
  maps this process's pages until it writes to them; its RSS would count them a second time.

A descendant that cannot be read (another user's process, one that exits while it is read) is left out,
and a descendant that detached itself from the tree (a daemon that forked twice) is not seen; a window
spanning a descendant that could not be read says so in its flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["TreeSnapshot", "live_descendants", "snapshot"]


@dataclass(frozen=True)
class TreeSnapshot:
    """The live descendants of a process at one moment.

    Attributes:
        cpu_s: their CPU seconds: user + system of each, plus its waited-for children's.
        rss_b: their unique resident memory (USS), in bytes.
        unreadable: how many could not be read (permissions); 0 normally.
        error: why the tree could not be listed at all (psutil missing), else ``None``.
    """

    cpu_s: float = 0.0
    rss_b: int = 0
    unreadable: int = 0
    error: str | None = None


def _proc_children(pid: int) -> list[int] | None:
    """The child pids of ``pid`` from Linux's ``/proc/PID/task/TID/children`` (every thread's children), or
    ``None`` where the kernel does not offer those files."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    children: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                children.extend(int(c) for c in handle.read().split())
        except FileNotFoundError:
            if tid == tasks[0] and not children:
                return None  # no children files in this kernel (CONFIG_PROC_CHILDREN off)
        except OSError:
            continue  # the thread ended while it was read
    return children


def live_descendants(pid: int | None = None) -> list[Any]:
    """The live descendants of ``pid`` (default: this process) as ``psutil.Process`` objects.

    On Linux the tree is walked through ``/proc/PID/task/TID/children`` (cost: the descendants, not the
    machine's process table); elsewhere psutil scans the process table.

    Raises:
        ImportError: psutil is not installed.
    """
    import psutil

    root = os.getpid() if pid is None else pid
    first = _proc_children(root)
    if first is None:
        try:
            return psutil.Process(root).children(recursive=True)
        except psutil.Error:
            return []
    out, stack, seen = [], list(first), {root}
    while stack:
        child = stack.pop()
        if child in seen:
            continue
        seen.add(child)
        try:
            out.append(psutil.Process(child))
        except psutil.Error:
            continue  # ended since it was listed
        stack.extend(_proc_children(child) or ())
    return out


def snapshot(pid: int | None = None, *, cpu: bool = True, memory: bool = True) -> TreeSnapshot:
    """CPU time and resident memory of the live descendants of ``pid`` (default: this process), now.

    A snapshot lists the process table once (a few milliseconds with hundreds of processes).
    """
    try:
        import psutil

        processes = live_descendants(pid)
    except ImportError as err:
        return TreeSnapshot(error=f"psutil is not installed ({err})")
    cpu_s, rss_b, unreadable = 0.0, 0, 0
    for process in processes:
        try:
            if cpu:
                t = process.cpu_times()
                cpu_s += t.user + t.system + t.children_user + t.children_system
            if memory:
                rss_b += int(process.memory_full_info().uss)
        except psutil.AccessDenied:
            unreadable += 1
            continue
        except psutil.Error:
            continue  # it exited between listing and reading: waited for, its time is its parent's now
    return TreeSnapshot(cpu_s, rss_b, unreadable)
