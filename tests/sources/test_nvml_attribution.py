"""Issue 19 item 5: other processes on a measured GPU are flagged, an empty list in a container is "unknown",
and a MIG instance is measured through its parent GPU, flagged as shared.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenmeter.sources import nvml
from greenmeter.sources.nvml import NvmlBackend
from tests.fakes import fake_pynvml as fake
from tests.fakes.clock import FakeClock
from tests.fakes.fake_pynvml import FakeGpu
from tests.fakes.fake_torch_cuda import FakeCuda, make_fake_torch
from tests.sources.test_nvml import _no_cuda_visible_devices, install  # noqa: F401 - autouse fixture

PARENT = "GPU-33333333-0000-0000-0000-000000000000"
MIG_A = "MIG-aaaaaaaa-0000-0000-0000-000000000000"
MIG_B = "MIG-bbbbbbbb-0000-0000-0000-000000000000"
OTHERS = "nvml:gpu0: other compute processes ran on this GPU (PIDs {}): NVML has no per-process energy, so their " \
         "work is in its figure"


@pytest.fixture(autouse=True)
def _outside_a_container(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(nvml, "_CONTAINER_MARKERS", (str(tmp_path / "no-dockerenv"),))


CLOCK = FakeClock()


def _backend() -> NvmlBackend:
    backend = NvmlBackend(clock=CLOCK)
    assert backend.probe().available
    return backend


def _flags_of_window(backend: NvmlBackend, between: object = None) -> tuple[str, ...]:
    """Read at a window's start, run ``between``, read at its end 2 s later: the backend's flags for that window."""
    backend.read()
    t0 = time.perf_counter()
    if callable(between):
        between()
    CLOCK.advance(2.0)  # long enough not to be a short window
    backend.read()
    return backend.anomalies_since(t0)


def test_another_process_seen_at_a_window_edge_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(processes=(os.getpid(), 4242))
    install(monkeypatch, gpu)
    backend = _backend()

    def leaves() -> None:
        gpu.processes = (os.getpid(),)

    assert _flags_of_window(backend, leaves) == (OTHERS.format(4242),)  # seen at the start only
    assert _flags_of_window(backend) == ()  # the next window: it has gone


def test_this_process_and_its_children_are_not_others(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        install(monkeypatch, FakeGpu(processes=(os.getpid(), child.pid)))
        backend = _backend()
        assert _flags_of_window(backend) == ()
    finally:
        child.kill()
        child.wait()


def test_an_empty_list_is_no_one_outside_a_container_and_unknown_inside(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install(monkeypatch, FakeGpu(processes=()))
    backend = _backend()
    assert _flags_of_window(backend) == ()
    backend.close()
    (tmp_path / ".dockerenv").touch()
    monkeypatch.setattr(nvml, "_CONTAINER_MARKERS", (str(tmp_path / ".dockerenv"),))
    backend.probe()
    assert _flags_of_window(backend) == (
        "nvml:gpu0: other processes on this GPU are unknown: NVML lists none, and in a container it cannot see "
        "other PID namespaces; its figure includes any other process's work",)


def test_a_gpu_that_cannot_list_its_processes_says_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeGpu(processes=fake.NVMLError_NotSupported()))
    backend = _backend()
    assert _flags_of_window(backend) == (
        "nvml:gpu0: other processes on this GPU are unknown (nvmlDeviceGetComputeRunningProcesses: Not Supported); "
        "its figure includes any other process's work",)


def test_a_mig_instance_is_measured_through_its_parent_gpu_and_flagged_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: "NVML measures whole GPUs, not MIG slices", and no GPU energy at all.
    parent = FakeGpu(uuid=PARENT, energy_mj=(1_000, 4_000), mig_uuids=(MIG_A, MIG_B))
    install(monkeypatch, FakeGpu(uuid="GPU-0"), parent)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_B)
    backend = NvmlBackend()
    result = backend.probe()
    (domain,) = result.domains
    assert domain.key == "nvml:gpu0" and domain.provenance.source == f"NVML GPU 1 NVIDIA H200 ({PARENT})"
    assert domain.provenance.method.endswith(f"; the whole GPU of MIG instance {MIG_B}, shared")
    assert NvmlBackend.device_name(domain.provenance) == "NVIDIA H200"
    assert backend.read().energy_j == {"nvml:gpu0": 3.0}
    shared = (f"nvml:gpu0 is MIG instance {MIG_B}: NVML has no energy reading per MIG instance, so nvml:gpu0 is its "
              f"whole parent GPU ({PARENT}), shared with that GPU's other instances, whose work is included")
    assert shared in backend.anomalies_since(time.perf_counter())


def test_two_mig_instances_of_one_gpu_count_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeGpu(uuid=PARENT, mig_uuids=(MIG_A, MIG_B)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{MIG_A},{MIG_B}")
    result = NvmlBackend().probe()
    assert [d.key for d in result.domains] == ["nvml:gpu0"]
    assert (f"nvml:gpu1 is MIG instance {MIG_B} of the GPU nvml:gpu0 measures ({PARENT}): its energy is counted "
            "once, under nvml:gpu0") in result.notes


def test_torch_names_a_mig_instance_by_its_bare_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeGpu(uuid=PARENT, mig_uuids=(MIG_A,)))
    monkeypatch.setitem(sys.modules, "torch", make_fake_torch(FakeCuda([MIG_A.removeprefix("MIG-")])))
    (domain,) = NvmlBackend().probe().domains
    assert domain.provenance.source == f"NVML GPU 0 NVIDIA H200 ({PARENT})"


def test_the_processes_seen_at_every_read_of_a_window_make_one_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(processes=(4242,))
    install(monkeypatch, gpu)
    backend = _backend()

    def epoch_read_then_another_process() -> None:
        gpu.processes = (4242, 5151)
        backend.read()  # an epoch mark, say
        gpu.processes = (os.getpid(), 6161)

    assert _flags_of_window(backend, epoch_read_then_another_process) == (OTHERS.format("4242, 5151, 6161"),)


def test_a_window_longer_than_the_reads_remembered_still_gets_its_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu()
    install(monkeypatch, gpu)
    backend = _backend()

    def many_reads_one_other_process() -> None:
        for n in range(6000):  # more reads than the backend keeps stamps of
            gpu.processes = (os.getpid(), 7171) if n == 10 else None
            CLOCK.advance(0.01)
            backend.read()

    assert _flags_of_window(backend, many_reads_one_other_process) == (OTHERS.format(7171),)
