"""Grace Hopper modules (issue 19 item 5, last part): a whole-module counter is labelled so, and the CPU and RAM
estimates inside it are kept in the record but out of the total, so the Grace CPU is not counted twice.

Against the fake ``pynvml``'s GH200 mode only (its docstring says what it is built from); a normal H100 is
unchanged.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from greenmeter.metering.meter import Meter
from greenmeter.records.measurement import Measurement
from greenmeter.sources.base import ProbeResult
from greenmeter.sources.nvml import NvmlBackend
from tests.fakes.clock import FakeClock
from tests.fakes.fake_pynvml import FakeGpu, FakePynvml, make_fake_pynvml
from tests.sources.test_nvml import COUNTER_METHOD, _no_cuda_visible_devices  # noqa: F401 - autouse fixture

GPU = "nvml:gpu0"
MODULE_METHOD = ("whole-module energy counter (NVML_FI_DEV_ENERGY, scope NVML_POWER_SCOPE_MODULE): "
                 "GH200 480GB module: GPU + Grace CPU + LPDDR5X")
INSIDE = "; inside the module counter nvml:gpu0, not added"


def _install(monkeypatch: pytest.MonkeyPatch, *gpus: FakeGpu) -> FakePynvml:
    module = make_fake_pynvml(*gpus)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def _probe(monkeypatch: pytest.MonkeyPatch, gpu: FakeGpu, clock: FakeClock) -> tuple[NvmlBackend, ProbeResult]:
    _install(monkeypatch, gpu)
    backend = NvmlBackend(clock=clock)
    result = backend.probe()
    assert result.available
    return backend, result


def _burn_cpu(seconds: float) -> None:
    """Busy CPU time for this process, so that the CPU estimate has something to count."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _meter_window(meter: Meter, clock: FakeClock, seconds: float) -> Measurement:
    """One meter window in which the fake clock moves ``seconds`` and this process burns a little CPU time."""
    with meter.window("train") as window:
        _burn_cpu(0.05)
        clock.advance(seconds)
    meter.close()
    return window.measurement


# -- the fake is honest ---------------------------------------------------------------------------------


def test_the_fake_gh200_counts_the_gpu_plus_the_grace_side_on_one_clock() -> None:
    clock = FakeClock(start_s=1000.0)
    gpu = FakeGpu.gh200(clock, power_w=500.0, module_power_w=150.0)
    nvml = make_fake_pynvml(gpu)
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    module, gpu_scope, instant = (nvml.NVML_FI_DEV_ENERGY, 1), (nvml.NVML_FI_DEV_ENERGY, 0), (186, 1)
    start = nvml.nvmlDeviceGetFieldValues(handle, [module])[0].value.ullVal
    total = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    assert total == start  # the scopeless counter is the module's, as Zeus found on GH200
    clock.advance(0.099)
    assert nvml.nvmlDeviceGetFieldValues(handle, [module])[0].value.ullVal == start  # no refresh yet
    clock.advance(0.001)
    assert nvml.nvmlDeviceGetFieldValues(handle, [module])[0].value.ullVal == start + 65_000  # 650 W x 100 ms
    gpu.set_module_power(50.0)
    clock.advance(0.1)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(handle) == start + 65_000 + 55_000
    assert nvml.nvmlDeviceGetFieldValues(handle, [instant])[0].value.uiVal == 550_000
    assert nvml.nvmlDeviceGetFieldValues(handle, [gpu_scope])[0].nvmlReturn != 0  # no GPU scope unless asked
    assert nvml.nvmlDeviceGetC2cModeInfoV(handle).isC2cEnabled == 1


# -- the label ----------------------------------------------------------------------------------------------


def test_a_gh200_counter_is_labelled_as_the_whole_module_and_reads_gpu_plus_grace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(start_s=1000.0)
    gpu = FakeGpu.gh200(clock, power_w=500.0, module_power_w=150.0)
    backend, result = _probe(monkeypatch, gpu, clock)
    (domain,) = result.domains
    assert domain.kind == "gpu" and domain.in_total and domain.includes == ("cpu", "ram")
    assert domain.provenance.method == MODULE_METHOD
    assert domain.provenance.source == "NVML GPU 0 NVIDIA GH200 480GB (GPU-00000000-0000-0000-0000-000000000000)"
    assert NvmlBackend.device_name(domain.provenance) == "NVIDIA GH200 480GB"
    (note,) = [n for n in result.notes if "Grace module" in n]
    assert note.endswith("its figure is the whole GH200 480GB module: GPU + Grace CPU + LPDDR5X, so the CPU and RAM "
                         "sources' figures are not added to the total")
    start = backend.read().energy_j[GPU]
    clock.advance(1.0)
    assert backend.read().energy_j[GPU] - start == pytest.approx(650.0)  # the GPU's 500 W and the Grace side's 150 W
    assert "module-energy" in gpu.calls and "energy" not in gpu.calls[1:]  # the scoped field, not the scopeless call


def test_without_the_scoped_energy_field_the_total_counter_is_read_as_the_module(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(start_s=1000.0)
    gpu = FakeGpu.gh200(clock, power_w=400.0, module_power_w=100.0)
    fields = FakePynvml._field

    def no_energy_field(g: FakeGpu, field_id: int, scope: int) -> tuple[int, int] | None:
        return None if field_id == 191 else fields(g, field_id, scope)

    monkeypatch.setattr(FakePynvml, "_field", staticmethod(no_energy_field))
    backend, result = _probe(monkeypatch, gpu, clock)
    (domain,) = result.domains
    assert domain.includes == ("cpu", "ram")
    assert domain.provenance.method == (
        "whole-module energy counter (nvmlDeviceGetTotalEnergyConsumption, which counts the whole module on Grace "
        "Hopper): GH200 480GB module: GPU + Grace CPU + LPDDR5X")
    start = backend.read().energy_j[GPU]
    clock.advance(2.0)
    assert backend.read().energy_j[GPU] - start == pytest.approx(1000.0)


def test_a_module_counter_step_is_judged_against_the_module_power_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(start_s=1000.0)
    gpu = FakeGpu.gh200(clock, power_w=500.0, module_power_w=150.0)
    backend, _ = _probe(monkeypatch, gpu, clock)
    t0 = time.perf_counter()
    start = backend.read().energy_j[GPU]
    clock.advance(1.0)
    gpu.module_counter_start_mj += 10**9  # a jump of 1 MJ in one second: no module draws that
    assert backend.read().energy_j[GPU] == start
    (anomaly,) = [a for a in backend.anomalies_since(t0) if "not plausible" in a]
    assert "4 x 1000 W (its module's largest power limit)" in anomaly


def test_the_gpu_only_scope_is_preferred_where_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(start_s=1000.0)
    gpu = FakeGpu.gh200(clock, power_w=500.0, module_power_w=150.0, gpu_scope=True)
    backend, result = _probe(monkeypatch, gpu, clock)
    (domain,) = result.domains
    assert domain.includes == () and domain.in_total
    assert domain.provenance.method == (
        "GPU-only energy counter (NVML_FI_DEV_ENERGY, scope NVML_POWER_SCOPE_GPU) of a GH200 480GB module: the GPU "
        "alone, without its Grace CPU and LPDDR5X")
    start = backend.read().energy_j[GPU]
    clock.advance(1.0)
    assert backend.read().energy_j[GPU] - start == pytest.approx(500.0)  # the GPU alone


@pytest.mark.parametrize("gpu_options", [
    {"c2c": True},  # a GB10 (DGX Spark): NVLink-C2C, but NVML answers no module scope
    {"scope_ignored": True},  # a driver older than scopeId answers any scope, but the GPU has no C2C link
], ids=["c2c-without-module-scope", "scope-ignored-without-c2c"])
def test_one_signal_alone_does_not_make_a_module(monkeypatch: pytest.MonkeyPatch, gpu_options: dict) -> None:
    clock = FakeClock(start_s=1000.0)
    _, result = _probe(monkeypatch, FakeGpu(clock=clock, power_w=300.0, **gpu_options), clock)
    (domain,) = result.domains
    assert domain.provenance.method == COUNTER_METHOD and domain.includes == ()


# -- no double count -------------------------------------------------------------------------------------------


def test_the_total_is_the_module_energy_and_the_cpu_and_ram_estimates_are_kept_flagged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(start_s=1000.0)
    gpu = FakeGpu.gh200(clock, power_w=500.0, module_power_w=150.0)
    _install(monkeypatch, gpu)
    meter = Meter(backends=[NvmlBackend(clock=clock), "cpu-estimate", "ram-estimate"], sync=None)
    m = _meter_window(meter, clock, 1.0)
    by_key = {d.key: d for d in m.domains}
    assert set(by_key) == {GPU, "cpu-estimate:cpu", "ram-estimate:ram"}
    assert by_key[GPU].energy_j == pytest.approx(650.0) and by_key[GPU].in_total
    assert m.energy_j == pytest.approx(650.0)  # the module alone: its Grace CPU and memory are not added again
    for key in ("cpu-estimate:cpu", "ram-estimate:ram"):
        inside = by_key[key]
        assert not inside.in_total and inside.energy_j > 0.0  # kept in the record, with its figure
        assert inside.provenance.kind == "estimated" and inside.provenance.method.endswith(INSIDE)
    assert m.carbon is None or m.carbon.energy_j == pytest.approx(650.0)
    (note,) = [f for f in m.flags if f.startswith(f"{GPU} measures a whole module")]
    assert note == (f"{GPU} measures a whole module ({MODULE_METHOD}), which includes CPU and RAM: cpu-estimate:cpu, "
                    "ram-estimate:ram lie inside it and are kept out of the total (shown, not added), so nothing is "
                    "counted twice")
    summary = m.summary()
    assert "cpu-estimate:cpu" in summary and "(inside another domain, not in total)" in summary
    restored = Measurement.from_dict(m.to_dict())
    assert [(d.key, d.in_total, d.provenance.method) for d in restored.domains] == \
        [(d.key, d.in_total, d.provenance.method) for d in m.domains]


def test_the_automatic_choice_measures_cpu_and_ram_inside_the_module_without_a_fallback_note(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gpu = FakeGpu.gh200(time.monotonic, power_w=500.0, module_power_w=150.0)
    _install(monkeypatch, gpu)
    meter = Meter(sysfs_root=str(tmp_path / "no-rapl"), sync=None).start()  # a Grace CPU: no RAPL
    try:
        domains = {d.key: d for d in meter.domains}
        assert [d.key for d in meter.domains if d.in_total] == [GPU]
        assert {"cpu-estimate:cpu", "ram-estimate:ram"} <= set(domains)
        assert all(domains[k].provenance.method.endswith(INSIDE) for k in ("cpu-estimate:cpu", "ram-estimate:ram"))
        assert not [n for n in meter.notes if "energy is estimated" in n]  # measured, inside the module counter
        assert [n for n in meter.notes if n.startswith(f"{GPU} measures a whole module")]
    finally:
        meter.close()


def test_the_gpu_only_scope_leaves_the_cpu_and_ram_estimates_in_the_total(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(start_s=1000.0)
    _install(monkeypatch, FakeGpu.gh200(clock, power_w=500.0, module_power_w=150.0, gpu_scope=True))
    meter = Meter(backends=[NvmlBackend(clock=clock), "cpu-estimate", "ram-estimate"], sync=None)
    m = _meter_window(meter, clock, 1.0)
    assert all(d.in_total for d in m.domains)
    assert m.energy_j == pytest.approx(sum(d.energy_j for d in m.domains))
    assert next(d for d in m.domains if d.key == GPU).energy_j == pytest.approx(500.0)
    assert not [f for f in m.flags if "whole module" in f]


def test_a_normal_h100_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(start_s=1000.0)
    gpu = FakeGpu(name="NVIDIA H100 80GB HBM3", clock=clock, power_w=700.0)
    _install(monkeypatch, gpu)
    meter = Meter(backends=[NvmlBackend(clock=clock), "cpu-estimate", "ram-estimate"], sync=None)
    m = _meter_window(meter, clock, 1.0)
    nvml_domain = next(d for d in m.domains if d.key == GPU)
    assert nvml_domain.provenance.method == COUNTER_METHOD and nvml_domain.energy_j == pytest.approx(700.0)
    assert all(d.in_total and "inside the module" not in d.provenance.method for d in m.domains)
    assert m.energy_j == pytest.approx(sum(d.energy_j for d in m.domains)) and m.energy_j > 700.0
    assert not [f for f in m.flags if "module" in f]
    assert not [c for c in gpu.calls if c.startswith(("module", "gpu-"))]  # no scoped read on a discrete GPU


def test_on_a_two_module_node_rank_0_keeps_the_node_wide_estimates_out_and_each_rank_measures_its_module(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from greenmeter.metering.distributed import RankInfo, RankMeter

    modules = [FakeGpu.gh200(time.monotonic, power_w=500.0, module_power_w=150.0,
                             uuid=f"GPU-{n:08x}-aaaa-bbbb-cccc-dddddddddddd") for n in range(2)]
    _install(monkeypatch, *modules)
    in_total = []
    for rank in range(2):
        meter = RankMeter(rank=RankInfo(rank, 2, rank, 2, 0, "a"), sysfs_root=str(tmp_path / "none"), sync=None,
                          store=None).start()
        in_total.append([d.key for d in meter.domains if d.in_total])
        if rank == 0:
            inside = [d.key for d in meter.domains if not d.in_total]
        meter.close()
    assert in_total == [["nvml:gpu0"], ["nvml:gpu1"]]  # each rank its own module, nothing else
    assert inside == ["cpu-estimate:cpu", "ram-estimate:ram"]  # node-wide, inside the modules the ranks measure


def test_info_says_the_cpu_is_measured_inside_the_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from greenmeter.sources.select import describe_choice, probe_sources

    _install(monkeypatch, FakeGpu.gh200(time.monotonic, power_w=500.0, module_power_w=150.0))
    results = probe_sources(sysfs_root=str(tmp_path / "no-rapl"))
    try:
        assert describe_choice(results) == [
            "CPU energy will be measured inside the whole-module counter of NVML; the estimates (cpu-estimate) are "
            "shown, not added.",
            "GPU energy will be measured by NVML.",
        ]
    finally:
        for backend, probe in results:
            if probe.available:
                backend.close()
