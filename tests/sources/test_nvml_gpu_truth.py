"""benchmarks/gpu_truth.py: it exits cleanly without a GPU, and its analysis is right on a clock-driven fake trace."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.fakes.clock import FakeClock
from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_truth.py"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_truth", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
