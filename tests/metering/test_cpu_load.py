"""Other processes' load during a comparison: measured from CPU-time counters, flagged when it is high."""

from __future__ import annotations

import os
import time

import pytest

from greenmeter.metering import cpu_load as _load
from greenmeter.metering.cpu_load import BUSY_LIMIT_CORES, LoadWatch, busy_flag, machine_busy_s, process_cpu_s


def scripted(*values: float | None):  # type: ignore[no-untyped-def]
    it = iter(values)
    return lambda: next(it)


def test_other_cores_is_machine_time_less_own_time_over_wall_time() -> None:
    # 10 s of wall time; the machine used 25 CPU-seconds of which this process 5: others kept 2 cores busy
    watch = LoadWatch(machine=scripted(100.0, 125.0), own=scripted(1.0, 6.0), clock=scripted(50.0, 60.0))
    assert watch.other_cores() == pytest.approx(2.0)


def test_unknown_or_negative_load() -> None:
    assert LoadWatch(machine=scripted(None, 5.0), own=scripted(0, 0), clock=scripted(0, 1)).other_cores() is None
    assert LoadWatch(machine=scripted(1.0, 2.0), own=scripted(0, 0), clock=scripted(3, 3)).other_cores() is None
    # counter granularity can make own time exceed the machine's: never below zero
    assert LoadWatch(machine=scripted(10.0, 10.5), own=scripted(0, 0.6), clock=scripted(0, 1)).other_cores() == 0.0


def test_flag_only_above_the_limit_and_it_says_what_to_do() -> None:
    assert busy_flag(None, "x") is None
    assert busy_flag(BUSY_LIMIT_CORES, "x") is None
    text = busy_flag(1.5, "the timed passes", threads=2)
    assert text is not None
    assert text.startswith(f"other processes kept 1.50 of this machine's {os.cpu_count()} cores busy during the "
                           "timed passes; torch used 2 thread(s)")
    assert "torch.set_num_threads" in text and "quiet machine" in text


def test_real_counters_see_this_process_burn_cpu() -> None:
    busy0, own0 = machine_busy_s(), process_cpu_s()
    assert busy0 is not None
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    busy1, own1 = machine_busy_s(), process_cpu_s()
    assert own1 - own0 >= 0.3 - 0.02  # two clock ticks
    assert busy1 - busy0 >= own1 - own0 - 0.05  # the machine counts at least what this process used


def test_unreadable_machine_counters_give_none(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    def broken() -> None:
        raise OSError("no /proc/stat")

    monkeypatch.setattr(psutil, "cpu_times", broken)
    assert _load.machine_busy_s() is None


def test_compare_flags_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from greenmeter.comparison.compare import compare

    asked: list[LoadWatch] = []

    def busy(self: LoadWatch) -> float:
        asked.append(self)
        return 1.25

    monkeypatch.setattr(LoadWatch, "other_cores", busy)
    model = torch.nn.Sequential(torch.nn.Linear(8, 3)).eval()
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    busy = compare({"a": model, "b": torch.nn.Sequential(torch.nn.Linear(8, 3)).eval()}, (x, y), repeats=2,
                   min_repeat_s=0.02, progress=False)
    assert len(asked) == 1  # asked once, after the timed passes
    flags = [f for f in busy.flags if f.startswith("other processes kept 1.25 of")]
    assert len(flags) == 1 and f"torch used {torch.get_num_threads()} thread(s)" in flags[0]
    monkeypatch.setattr(LoadWatch, "other_cores", lambda self: 0.0)
    quiet = compare({"a": model}, (x, y), repeats=2, min_repeat_s=0.02, progress=False)
    assert not any(f.startswith("other processes") for f in quiet.flags)


def test_compare_threads_are_set_recorded_and_restored() -> None:
    torch = pytest.importorskip("torch")
    from greenmeter import ConfigError
    from greenmeter.comparison.compare import compare

    before = torch.get_num_threads()
    seen: list[int] = []

    def metric(outputs: object, targets: object) -> float:
        seen.append(torch.get_num_threads())
        return 1.0

    model = torch.nn.Sequential(torch.nn.Linear(8, 3)).eval()
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    result = compare({"a": model}, (x, y), repeats=2, min_repeat_s=0.02, progress=False, metric=metric, threads=1)
    assert result.torch_threads == 1 and set(seen) == {1}
    assert torch.get_num_threads() == before
    assert type(result).from_json(result.to_json()).torch_threads == 1
    from greenmeter.output.report import comparison_report

    assert "- **PyTorch threads**: 1\n" in comparison_report(result, "md")
    default = compare({"a": model}, (x, y), repeats=2, min_repeat_s=0.02, progress=False)
    assert default.torch_threads == before
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="threads must be a whole number >= 1"):
            compare({"a": model}, (x, y), threads=bad)
