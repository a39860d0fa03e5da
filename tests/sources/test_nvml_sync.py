"""Issue 19 item 3: window edges synchronise each measured CUDA device that has a context, and create none.

torch is faked at the import boundary (a fake ``torch`` module in ``sys.modules``, tests/fakes/fake_torch_cuda.py),
NVML by the fake ``pynvml``; the meter under test is used unchanged.
"""

from __future__ import annotations

import sys

import pytest

from greenmeter.metering.meter import Meter
from greenmeter.sources.nvml import NvmlBackend
from tests.fakes.fake_pynvml import FakeGpu
from tests.fakes.fake_torch_cuda import FakeCuda, make_fake_torch
from tests.fakes.scripted import ScriptedBackend
from tests.sources.test_nvml import _no_cuda_visible_devices, install  # noqa: F401 - autouse fixture

UUIDS = ("GPU-00000000-0000-0000-0000-00000000000a", "GPU-00000000-0000-0000-0000-00000000000b",
         "GPU-00000000-0000-0000-0000-00000000000c")


def _torch(monkeypatch: pytest.MonkeyPatch, cuda: FakeCuda, **options: bool) -> FakeCuda:
    monkeypatch.setitem(sys.modules, "torch", make_fake_torch(cuda, **options))
    return cuda


def _one_window(meter: Meter) -> None:
    with meter.window("w"):
        pass
    meter.close()


def test_each_measured_device_with_a_context_is_synchronised_at_both_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, *(FakeGpu(uuid=u) for u in UUIDS))
    cuda = _torch(monkeypatch, FakeCuda(UUIDS, contexts={0, 1, 2}, current=0))
    _one_window(Meter(backends=[NvmlBackend(devices=[1, 2])]))  # sync="auto"
    assert cuda.synced == [1, 2, 1, 2]  # before: [0, 0], the current device only
    assert cuda.created == []


def test_a_measured_device_without_a_context_is_not_synchronised(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, *(FakeGpu(uuid=u) for u in UUIDS))
    cuda = _torch(monkeypatch, FakeCuda(UUIDS, contexts={2}, current=2))
    _one_window(Meter(backends=[NvmlBackend()]))  # every GPU measured; only cuda:2 is in use here
    assert cuda.synced == [2, 2] and cuda.created == []
    assert cuda.contexts == {2}


def test_without_a_measured_gpu_every_device_with_a_context_is_synchronised(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = _torch(monkeypatch, FakeCuda(UUIDS, contexts={0, 2}))
    _one_window(Meter(backends=[ScriptedBackend([0.0, 1.0])]))
    assert cuda.synced == [0, 2, 0, 2] and cuda.created == []


def test_nothing_is_synchronised_before_cuda_is_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = _torch(monkeypatch, FakeCuda(UUIDS, initialised=False))
    _one_window(Meter(backends=[ScriptedBackend([0.0, 1.0])]))
    assert cuda.synced == []


def test_a_torch_that_cannot_say_which_devices_have_a_context_syncs_the_current_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = _torch(monkeypatch, FakeCuda(UUIDS, contexts={1}, current=1), context_query=False)
    _one_window(Meter(backends=[ScriptedBackend([0.0, 1.0])]))
    assert cuda.synced == [1, 1] and cuda.created == []


def test_sync_none_and_a_callable_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = _torch(monkeypatch, FakeCuda(UUIDS, contexts={0}))
    _one_window(Meter(backends=[ScriptedBackend([0.0, 1.0])], sync=None))
    calls: list[str] = []
    _one_window(Meter(backends=[ScriptedBackend([0.0, 1.0])], sync=lambda: calls.append("edge")))
    assert cuda.synced == [] and calls == ["edge", "edge"]
