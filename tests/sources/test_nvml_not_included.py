"""Issue 19 item 2: a GPU that is here but cannot be measured says "GPU energy NOT included" in every measurement.

The driver's presence is faked at the filesystem boundary (``_DRIVER_PATHS`` pointed at a file in ``tmp_path``),
NVML by the fake ``pynvml`` module.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from greenmeter.metering.distributed import RankInfo, RankMeter
from greenmeter.metering.meter import Meter
from greenmeter.sources import nvml
from greenmeter.sources.nvml import NOT_INCLUDED, NvmlBackend
from greenmeter.sources.select import NOT_INCLUDED_MARK
from tests.fakes import fake_pynvml as fake
from tests.fakes.fake_pynvml import FakeGpu
from tests.sources.test_nvml import _no_cuda_visible_devices, install  # noqa: F401 - autouse fixture

INIT_FAILED = "GPU energy NOT included: NVML failed to initialise (NVMLError_Unknown: Unknown Error)"


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An NVIDIA driver on this (Linux) machine: /dev/nvidiactl exists."""
    (tmp_path / "nvidiactl").touch()
    monkeypatch.setattr(nvml, "_DRIVER_PATHS", (str(tmp_path / "nvidiactl"),))
    monkeypatch.setattr(sys, "platform", "linux")


@pytest.fixture
def no_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(nvml, "_DRIVER_PATHS", (str(tmp_path / "absent"),))
    monkeypatch.setattr(sys, "platform", "linux")


def _measure(tmp_path: Path) -> tuple[str, ...]:
    meter = Meter(sysfs_root=str(tmp_path / "no-rapl"), sync=None)
    with meter.window("w") as w:
        time.sleep(0.002)
    meter.close()
    assert w.measurement is not None
    return w.measurement.flags


def test_the_mark_is_in_the_words_of_the_flag() -> None:
    assert NOT_INCLUDED == "GPU energy NOT included: " and NOT_INCLUDED_MARK in NOT_INCLUDED


def test_nvml_failing_where_a_driver_is_present_is_in_every_measurements_flags(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, driver: None) -> None:
    install(monkeypatch, FakeGpu(), init_error=fake.NVMLError_Unknown())
    result = NvmlBackend().probe()
    assert not result.available and result.notes == (NOT_INCLUDED + result.reason,)
    flags = _measure(tmp_path)
    assert any(flag.startswith(INIT_FAILED) for flag in flags), flags


def test_nvml_failing_without_a_driver_says_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    no_driver: None) -> None:
    # pynvml imported on a CPU-only machine: NVML cannot find its library, and there is no GPU to miss
    install(monkeypatch, init_error=fake.NVMLError_LibraryNotFound())
    assert NvmlBackend().probe().notes == ()
    assert not any("NOT included" in flag for flag in _measure(tmp_path))


def test_a_missing_pynvml_on_a_machine_with_a_driver_is_flagged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                driver: None) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    (flag,) = [f for f in _measure(tmp_path) if "NOT included" in f]
    assert flag.startswith("GPU energy NOT included: the pynvml module cannot be imported")
    assert flag.endswith("pip install nvidia-ml-py")


def test_no_gpu_that_opens_is_flagged_even_without_driver_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                no_driver: None) -> None:
    # NVML itself counted the GPU, so it is here
    install(monkeypatch, FakeGpu(open_error=fake.NVMLError_NoPermission()))
    (flag,) = [f for f in _measure(tmp_path) if "NOT included" in f]
    assert flag == ("GPU energy NOT included: no selected GPU can be measured: nvml:gpu0 (NVML GPU 0) cannot be "
                    "opened (Insufficient Permissions)")


def test_an_unknown_mig_instance_is_flagged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_driver: None) -> None:
    install(monkeypatch, FakeGpu(uuid="GPU-1111", mig_uuids=("MIG-aaaa",)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-bbbb")
    (flag,) = [f for f in _measure(tmp_path) if "NOT included" in f]
    assert flag.startswith("GPU energy NOT included: CUDA_VISIBLE_DEVICES names MIG instance 'MIG-bbbb', which NVML "
                           "cannot open")


def test_one_gpu_left_out_of_two_is_flagged_in_every_window(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install(monkeypatch, FakeGpu(uuid="GPU-0", energy_mj=(0, 1_000)), FakeGpu(open_error=fake.NVMLError_GpuIsLost()))
    meter = Meter(backends=[NvmlBackend()], sync=None)  # named, not the automatic choice: still said
    flags = []
    for _ in range(2):
        with meter.window("w") as w:
            time.sleep(0.002)
        assert w.measurement is not None
        flags.append(w.measurement.flags)
    meter.close()
    for window_flags in flags:
        assert "GPU energy NOT included: nvml:gpu1 (NVML GPU 1) cannot be opened (GPU is lost)" in window_flags


def test_every_rank_says_its_gpu_is_not_included(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  driver: None) -> None:
    # Before: a failed probe counted as zero GPUs, and only "no energy source of its own" was said.
    install(monkeypatch, FakeGpu(), FakeGpu(), init_error=fake.NVMLError_Unknown())
    flags = []
    for rank in range(2):
        meter = RankMeter(rank=RankInfo(rank, 2, rank, 2, 0, "a"), sysfs_root=str(tmp_path / "none"), sync=None,
                          store=None)
        with meter.window("train") as w:
            time.sleep(0.002)
        meter.close()
        assert w.measurement is not None
        flags.append(w.measurement.flags)
    for rank_flags in flags:
        said = [f for f in rank_flags if f.startswith(INIT_FAILED)]
        assert len(said) == 1, rank_flags
