"""Issue 19 items 4 and 7: CUDA's numbering matched to NVML's by UUID, only the handles needed opened, and
``CUDA_VISIBLE_DEVICES`` ending at an index past the last GPU, as CUDA does, with a flag.
"""

from __future__ import annotations

import sys
import time

import pytest

from greenmeter import ConfigError
from greenmeter.metering.meter import Meter
from greenmeter.sources.nvml import NvmlBackend
from tests.fakes import fake_pynvml as fake
from tests.fakes.fake_pynvml import FakeGpu
from tests.fakes.fake_torch_cuda import FakeCuda, make_fake_torch
from tests.sources.test_nvml import _no_cuda_visible_devices, install  # noqa: F401 - autouse fixture

SLOW = "GPU-11111111-0000-0000-0000-000000000000"  # NVML index 0 (PCI order): the older board
FAST = "GPU-22222222-0000-0000-0000-000000000000"  # NVML index 1: CUDA's device 0 (fastest first)


def _mixed(monkeypatch: pytest.MonkeyPatch, **fast: object) -> tuple[fake.FakePynvml, FakeGpu, FakeGpu]:
    slow_gpu = FakeGpu(name="NVIDIA A100", uuid=SLOW, energy_mj=(0, 1_000))
    fast_gpu = FakeGpu(name="NVIDIA H100", uuid=FAST, energy_mj=(0, 5_000))
    for name, value in fast.items():
        setattr(fast_gpu, name, value)
    return install(monkeypatch, slow_gpu, fast_gpu), slow_gpu, fast_gpu


def test_cuda_devices_are_matched_to_nvml_by_uuid_when_cuda_order_differs_from_pci_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _mixed(monkeypatch)
    monkeypatch.setitem(sys.modules, "torch", make_fake_torch(FakeCuda([FAST, SLOW])))  # torch: fastest first
    backend = NvmlBackend()
    result = backend.probe()
    assert [(d.key, d.provenance.source) for d in result.domains] == [
        ("nvml:gpu0", f"NVML GPU 1 NVIDIA H100 ({FAST})"),  # cuda:0 is the H100, NVML's GPU 1
        ("nvml:gpu1", f"NVML GPU 0 NVIDIA A100 ({SLOW})"),
    ]
    assert result.notes == (
        "GPUs numbered as CUDA numbers them, each matched to NVML by its UUID (torch's device properties)",)
    assert dict(backend.read().energy_j) == {"nvml:gpu0": 5.0, "nvml:gpu1": 1.0}


def test_only_the_handles_needed_are_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    # The A100 may not be opened by this user: measuring cuda:0 (the H100) still works, and says nothing of it.
    module, slow_gpu, _ = _mixed(monkeypatch)
    slow_gpu.open_error = fake.NVMLError_NoPermission()
    monkeypatch.setitem(sys.modules, "torch", make_fake_torch(FakeCuda([FAST, SLOW])))
    result = NvmlBackend(devices=[0]).probe()
    assert result.available and [d.provenance.source for d in result.domains] == [f"NVML GPU 1 NVIDIA H100 ({FAST})"]
    assert module.opened == [1]


def test_without_torch_the_pci_order_is_used_and_said(monkeypatch: pytest.MonkeyPatch) -> None:
    _mixed(monkeypatch)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    result = NvmlBackend().probe()
    assert [d.provenance.source for d in result.domains] == [f"NVML GPU 0 NVIDIA A100 ({SLOW})",
                                                             f"NVML GPU 1 NVIDIA H100 ({FAST})"]
    assert result.notes[0].startswith("GPUs numbered in NVML's (PCI bus) order; CUDA's default order is fastest first")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # then CUDA's order is NVML's: nothing to say
    assert NvmlBackend().probe().notes == ()


def test_torch_without_cuda_initialised_leaves_the_mapping_to_cuda_visible_devices(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _mixed(monkeypatch)
    monkeypatch.setitem(sys.modules, "torch", make_fake_torch(FakeCuda([FAST, SLOW], initialised=False)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    result = NvmlBackend().probe()
    assert [d.provenance.source for d in result.domains] == [f"NVML GPU 1 NVIDIA H100 ({FAST})"]


def test_devices_past_what_torch_sees_are_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _mixed(monkeypatch)
    monkeypatch.setitem(sys.modules, "torch", make_fake_torch(FakeCuda([FAST])))  # CUDA_VISIBLE_DEVICES=1, say
    with pytest.raises(ConfigError, match=r"there is no GPU 1; CUDA \(torch\) sees 1 GPU\(s\), indices 0 to 0"):
        NvmlBackend(devices=[1]).probe()


# -- item 7: an index past the last GPU ends the list, as in CUDA --------------------------------------


def test_an_index_past_the_last_gpu_ends_the_list_and_every_window_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeGpu(uuid=SLOW, energy_mj=(0, 1_000)), FakeGpu(uuid=FAST))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7,0")  # before: a ConfigError
    backend = NvmlBackend()
    result = backend.probe()
    assert [d.provenance.source for d in result.domains] == [f"NVML GPU 1 NVIDIA H200 ({FAST})"]
    meter = Meter(backends=[backend], sync=None)
    with meter.window("w") as w:
        time.sleep(0.002)
    meter.close()
    assert w.measurement is not None
    assert ("CUDA_VISIBLE_DEVICES='1,7,0' names GPU 7, but NVML sees 2 GPU(s), indices 0 to 1: like CUDA, the list "
            "ends there (GPUs listed after it are not visible to CUDA either, so they are not measured)"
            ) in w.measurement.flags


def test_an_index_past_the_last_gpu_first_leaves_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    module = install(monkeypatch, FakeGpu(), FakeGpu())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    result = NvmlBackend().probe()
    assert not result.available and result.notes == ()  # CUDA sees no GPU either: none is missing
    assert result.reason.startswith("CUDA_VISIBLE_DEVICES='7' names GPU 7, but NVML sees 2 GPU(s)")
    assert not module.initialised
