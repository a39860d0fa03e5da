"""benchmarks/gpu_truth.py: it exits cleanly without a GPU, its analysis is right on a clock-driven fake trace, and
``main()`` runs end to end against the fake ``pynvml`` and ``torch.cuda`` on one fake clock.

The end-to-end tests stand in for what only a GPU machine has through the script's ``Rig``: the clock and sleep
(the fake clock, which ``time.perf_counter`` follows too, since the meter times its windows with it), the matmul
load (700 W while it runs, 6 ms of the clock per call), queued GPU work (``FakeCuda.queue``), the other process on
the GPU (the fake GPU lists the test's parent process) and the fresh interpreter (the child's code run here, with
its environment, without torch and on the real clocks).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.fakes.clock import FakeClock
from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml
from tests.fakes.fake_torch_cuda import FakeCuda, make_fake_torch
from tests.sources.test_nvml import _no_cuda_visible_devices  # noqa: F401 - autouse fixture

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_truth.py"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_truth", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # while it runs: its dataclass looks its module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def _nvml_works_here() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any failure means no GPU to measure here
        return False
    pynvml.nvmlShutdown()
    return True


def test_without_a_gpu_it_says_so_writes_the_reason_and_exits_0(tmp_path: Path) -> None:
    if _nvml_works_here():
        pytest.skip("this machine has a GPU: run the benchmark itself (about two minutes)")
    out = tmp_path / "truth.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("no GPU: ") and "nothing measured" in run.stdout
    result = json.loads(out.read_text())
    assert result["status"] == "skipped" and result["reason"] and result["date"]


def test_the_analysis_recovers_the_update_period_and_the_bound_on_a_fake_trace() -> None:
    # 700 W, a counter refreshed every 100 ms and a power reading averaged over 1 s, sampled every 4 ms for 12 s
    bench = _benchmark()
    clock = FakeClock(start_s=1000.0)
    gpu = FakeGpu(clock=clock, power_w=700.0, update_phase_s=0.037, instant_power=True)
    nvml = make_fake_pynvml(gpu)
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    clock.advance(2.0)  # the 1 s power mean has settled
    samples = []
    for _ in range(3000):
        samples.append((clock(), nvml.nvmlDeviceGetTotalEnergyConsumption(handle), nvml.nvmlDeviceGetPowerUsage(handle),
                        bench._instant_mw(nvml, handle)))
        clock.advance(0.004)
    stats = bench._analyse(samples)
    assert stats["mean_power_w"] == pytest.approx(700.0, rel=0.01)
    assert stats["counter_update_period_s"]["median"] == pytest.approx(0.1, abs=0.005)
    assert stats["instant_field"] is True
    rows = {row["window_s"]: row for row in stats["windows"]}
    assert rows[0.15]["counter"]["max_abs_error"] == pytest.approx(1 / 3, abs=0.05)  # 70 or 140 J for 105 J
    assert rows[10.0]["counter"]["max_abs_error"] < 0.015
    for row in rows.values():
        assert row["counter_within_stated_bound"] == 1.0
        assert row["power_average"]["max_abs_error"] < 0.01 and row["power_instant"]["max_abs_error"] < 0.01


def test_on_a_gh200_the_benchmark_says_what_the_domain_reads_and_elsewhere_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    bench = _benchmark()
    clock = FakeClock(start_s=1000.0)
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(FakeGpu.gh200(clock, 500.0, 150.0)))
    assert bench._grace_module() == (
        "nvml:gpu0 is on a Grace module: whole-module energy counter (NVML_FI_DEV_ENERGY, scope "
        "NVML_POWER_SCOPE_MODULE): GH200 480GB module: GPU + Grace CPU + LPDDR5X; the CPU and RAM estimates are kept "
        "out of the total")
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(FakeGpu(name="NVIDIA H100 80GB HBM3")))
    assert bench._grace_module() is None


# -- main() end to end against the fakes ------------------------------------------------------------------------

UUID = "GPU-8f6a1c2e-0d4b-4e1a-9c77-3b5d2e9f4a10"
IDLE_W, LOAD_W = 75.0, 700.0
CHECKS = ["uuid mapping", "short-window flag", "sync of every device", "foreign process flag", "not-included flag"]
_REAL_PERF_COUNTER, _REAL_SLEEP = time.perf_counter, time.sleep


class _SharedClock(FakeClock):
    """A fake clock that two threads (the trace's sampler and the load) move on."""

    def __init__(self, start_s: float = 1000.0) -> None:
        super().__init__(start_s)
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            super().advance(seconds)


def _gpu_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **rig: Callable[..., Any]) -> SimpleNamespace:
    """An H200 as cuda:0 on one fake clock, and the script's ``Rig`` for it (``rig`` replaces some of its parts)."""
    bench = _benchmark()
    clock = _SharedClock()
    gpu = FakeGpu(uuid=UUID, clock=clock, power_w=IDLE_W, update_phase_s=0.037, instant_power=True)
    cuda = FakeCuda([UUID], contexts={0}, clock=clock)
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(gpu))
    monkeypatch.setitem(sys.modules, "torch", make_fake_torch(cuda))
    monkeypatch.setattr(time, "perf_counter", clock)  # the meter's window times

    def sleep(seconds: float) -> None:
        clock.advance(seconds)
        _REAL_SLEEP(0.0001)  # lets the other thread run, as a real wait does

    def matmul_load(torch: Any) -> Callable[[], None]:
        def matmul() -> None:
            if gpu.power_at(clock()) != LOAD_W:
                gpu.set_power(LOAD_W)
            sleep(0.006)  # one call's four matmuls, synchronised

        return matmul

    def gpu_work(torch: Any) -> Callable[[], float]:
        torch.cuda.queue(0.3, 0)
        return lambda: 0.3

    @contextlib.contextmanager
    def foreign_process() -> Iterator[int]:
        other = os.getppid()  # a process that is not this one's descendant
        gpu.processes = (os.getpid(), other)
        try:
            yield other
        finally:
            gpu.processes = None

    def run_python(code: str, env: dict[str, str]) -> tuple[int, str, str]:
        with pytest.MonkeyPatch.context() as child:  # as a fresh interpreter: its environment, no torch, real clocks
            for name, value in env.items():
                child.setenv(name, value)
            child.setenv("GREENMETER_SYSFS_ROOT", str(tmp_path / "no-sysfs"))
            child.delitem(sys.modules, "torch")
            child.setattr(time, "perf_counter", _REAL_PERF_COUNTER)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, "<fresh interpreter>", "exec"), {"__name__": "__main__"})  # noqa: S102
        return 0, out.getvalue(), ""

    parts = {"clock": clock, "sleep": sleep, "matmul": matmul_load, "gpu_work": gpu_work,
             "foreign_process": foreign_process, "run_python": run_python, **rig}
    return SimpleNamespace(bench=bench, rig=bench.Rig(**parts), clock=clock, gpu=gpu, cuda=cuda,
                           out=tmp_path / "truth.json")


def test_main_runs_end_to_end_on_the_fakes_and_every_check_passes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    machine = _gpu_machine(monkeypatch, tmp_path)
    assert machine.bench.main(["--out", str(machine.out)], rig=machine.rig) == 0
    result = json.loads(machine.out.read_text())
    assert result["status"] == "ok" and result["gpu"] == "NVIDIA H200" and result["driver"] == "550.54.15"
    assert result["nvml_handle"] == f"by UUID {UUID}" and result["grace_module"] is None
    idle, load = result["loads"]["idle"], result["loads"]["matmul"]
    assert idle["mean_power_w"] == pytest.approx(IDLE_W, rel=0.01)
    assert load["mean_power_w"] == pytest.approx(LOAD_W, rel=0.01)
    assert idle["counter_update_period_s"]["median"] == pytest.approx(0.1, abs=0.005)  # sampled every 4 ms
    assert load["counter_update_period_s"]["median"] == pytest.approx(0.1, abs=0.015)  # every 4 to 10 ms
    assert idle["instant_field"] is load["instant_field"] is True
    assert idle["trace_s"] == pytest.approx(12.0, abs=0.01) and idle["samples"] == pytest.approx(3000, abs=2)
    assert len(result["traces"]["idle"]) == idle["samples"] and result["traces"]["idle"][0][0] == 0.0
    assert [c["check"] for c in result["checks"]] == CHECKS
    assert all(c["pass"] is True for c in result["checks"]), result["checks"]
    details = {c["check"]: c["detail"] for c in result["checks"]}
    assert f"NVML ['{UUID}']" in details["uuid mapping"]
    assert "synchronize calls [0, 0] (expected [0] at each edge)" in details["sync of every device"]
    assert "window 0.300 s for 0.300 s of queued GPU work" in details["sync of every device"]
    assert f"pid {os.getppid()} listed by NVML: True, this process ({os.getpid()}): True" in details[
        "foreign process flag"]
    assert "GPU energy NOT included: CUDA_VISIBLE_DEVICES names MIG instance" in details["not-included flag"]
    assert result["read_cost"]["greenmeter_read_us"] > 0
    assert machine.cuda.created == []  # the sync created no context
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith(("PASS", "FAIL"))] == [
        f"PASS {name}" for name in CHECKS]
    assert "5 of 5 checks passed" in printed


def test_a_check_that_raises_is_a_fail_line_and_the_others_still_run_after_a_partial_json(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}

    @contextlib.contextmanager
    def no_cuda_in_the_child() -> Iterator[int]:
        seen["json"] = json.loads(machine.out.read_text())  # written after the traces and each check so far
        raise RuntimeError("the other process (PID 4242) ended before making its CUDA context")
        yield 0  # pragma: no cover

    machine = _gpu_machine(monkeypatch, tmp_path, foreign_process=no_cuda_in_the_child)
    assert machine.bench.main(["--out", str(machine.out)], rig=machine.rig) == 1
    partial = seen["json"]
    assert partial["status"] == "partial" and set(partial["loads"]) == set(partial["traces"]) == {"idle", "matmul"}
    assert [c["check"] for c in partial["checks"]] == CHECKS[:3]
    result = json.loads(machine.out.read_text())
    assert result["status"] == "ok" and [c["check"] for c in result["checks"]] == CHECKS
    failed = {c["check"]: c for c in result["checks"] if not c["pass"]}
    assert list(failed) == ["foreign process flag"]
    assert re.fullmatch(r"raised RuntimeError: the other process \(PID 4242\) ended before making its CUDA context "
                        r"\(at test_nvml_gpu_truth\.py:\d+\)", failed["foreign process flag"]["detail"])
    assert "RuntimeError" in failed["foreign process flag"]["traceback"]
    assert "greenmeter_read_us" in result["read_cost"]
    printed = capsys.readouterr().out
    assert "FAIL foreign process flag: raised RuntimeError: the other process (PID 4242)" in printed
    assert "PASS not-included flag" in printed and "4 of 5 checks passed; failed: ['foreign process flag']" in printed


def test_a_meter_edge_that_does_not_wait_for_queued_work_fails_the_sync_check(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    machine = _gpu_machine(monkeypatch, tmp_path)
    machine.cuda.contexts.clear()  # no context on cuda:0 as far as torch can tell: the edges sync nothing
    passed, detail = machine.bench._check_sync(machine.rig, sys.modules["torch"])
    assert not passed
    assert "synchronize calls [] (expected [] at each edge)" in detail and "window 0.000 s for 0.300 s" in detail


# -- the real stand-ins that need no GPU -------------------------------------------------------------------------


def test_the_fresh_interpreter_gets_the_environment_given_and_this_checkout() -> None:
    bench = _benchmark()
    code, out, err = bench._run_python("import os, greenmeter\nprint(os.environ['GM_TRUTH'], greenmeter.__file__)",
                                       {"GM_TRUTH": "given"})
    assert code == 0, err
    value, where = out.split()
    assert value == "given" and Path(where).parent == Path(bench.ROOT) / "greenmeter"


def test_another_process_that_cannot_make_a_cuda_context_is_an_error_with_its_own(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the other process would start")
    bench = _benchmark()
    with pytest.raises(RuntimeError, match=r"the other process \(PID \d+\) ended before making its CUDA context: "
                                           r"(?s:.*)Torch not compiled with CUDA enabled"):
        with bench._foreign_process():
            pass  # pragma: no cover - it never starts
