"""NvmlBackend and CUDA_VISIBLE_DEVICES, against the fake pynvml module (see test_nvml.py)."""

from __future__ import annotations

import pytest

from greenmeter import ConfigError
from greenmeter.sources.nvml import NvmlBackend
from tests.sources.test_nvml import _no_cuda_visible_devices, install, uuid  # noqa: F401 - autouse fixture
from tests.fakes.fake_pynvml import FakeGpu


def test_cuda_visible_devices_renumbers_gpus_like_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [FakeGpu(uuid=uuid(n), energy_mj=(0, 1_000 * (n + 1))) for n in range(3)]
    install(monkeypatch, *gpus)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 0")
    backend = NvmlBackend()
    result = backend.probe()

    assert [(d.key, d.provenance.source) for d in result.domains] == [
        ("nvml:gpu0", f"NVML GPU 2 NVIDIA H200 ({uuid(2)})"),
        ("nvml:gpu1", f"NVML GPU 0 NVIDIA H200 ({uuid(0)})"),
    ]
    assert result.notes == (
        "GPUs numbered as in CUDA_VISIBLE_DEVICES='2, 0': gpu0 is NVML GPU 2, gpu1 is NVML GPU 0",
    )
    assert dict(backend.read().energy_j) == {"nvml:gpu0": 3.0, "nvml:gpu1": 1.0}
    assert gpus[1].calls == []


def test_devices_count_within_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, *[FakeGpu(uuid=uuid(n)) for n in range(4)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    result = NvmlBackend(devices=[1]).probe()
    assert [(d.key, d.provenance.source) for d in result.domains] == [
        ("nvml:gpu1", f"NVML GPU 1 NVIDIA H200 ({uuid(1)})")
    ]
    with pytest.raises(ConfigError, match=r"there is no GPU 2; CUDA_VISIBLE_DEVICES='3,1' leaves 2 GPU\(s\)"):
        NvmlBackend(devices=[2]).probe()


def test_cuda_visible_devices_accepts_gpu_uuids(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeGpu(uuid="GPU-1111-aaaa"), FakeGpu(uuid="GPU-2222-bbbb"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-2222")  # CUDA accepts a unique prefix
    result = NvmlBackend().probe()
    assert [(d.key, d.provenance.source) for d in result.domains] == [
        ("nvml:gpu0", "NVML GPU 1 NVIDIA H200 (GPU-2222-bbbb)")
    ]


@pytest.mark.parametrize("value", ["", "-1", " ", "-1,0"])
def test_cuda_visible_devices_hiding_every_gpu_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    module = install(monkeypatch, FakeGpu())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    result = NvmlBackend().probe()
    assert not result.available
    assert result.reason == (
        f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU, so there is none to measure; "
        "unset it or list the GPUs to use"
    )
    assert not module.initialised


def test_cuda_visible_devices_stops_at_a_negative_index_like_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeGpu(uuid=uuid(0)), FakeGpu(uuid=uuid(1)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,0")
    result = NvmlBackend().probe()
    assert [d.provenance.source for d in result.domains] == [f"NVML GPU 1 NVIDIA H200 ({uuid(1)})"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0,zero", r"'zero' is neither a GPU index nor a GPU UUID"),
        ("1,1", r"lists GPU 1 twice"),
    ],
)
def test_bad_cuda_visible_devices_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    module = install(monkeypatch, FakeGpu(uuid=uuid(0)), FakeGpu(uuid=uuid(1)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    with pytest.raises(ConfigError, match=message):
        NvmlBackend().probe()
    assert not module.initialised


def test_cuda_visible_devices_with_a_mig_instance_nvml_cannot_open_is_unavailable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a MIG instance NVML knows is measured through its parent GPU: see test_nvml_attribution.py
    install(monkeypatch, FakeGpu())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-0a1b2c3d-0000-1111-2222-333333333333")
    result = NvmlBackend().probe()
    assert not result.available and "which NVML cannot open" in result.reason
    assert result.notes == ("GPU energy NOT included: " + result.reason,)


@pytest.mark.parametrize(("value", "why"), [("GPU-9999", "matches no GPU"), ("GPU-", "matches several GPUs")])
def test_a_uuid_matching_no_single_gpu_ends_the_list_like_cuda(
    monkeypatch: pytest.MonkeyPatch, value: str, why: str
) -> None:
    install(monkeypatch, FakeGpu(uuid=uuid(0)), FakeGpu(uuid=uuid(1)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{uuid(1)},{value},{uuid(0)}")
    backend = NvmlBackend()
    result = backend.probe()
    assert [d.provenance.source for d in result.domains] == [f"NVML GPU 1 NVIDIA H200 ({uuid(1)})"]
    (flag,) = backend.anomalies_since(0.0)
    assert flag.startswith(f"CUDA_VISIBLE_DEVICES='{uuid(1)},{value},{uuid(0)}': '{value}' {why} (NVML sees ")
    assert flag.endswith("like CUDA, the list ends there (GPUs listed after it are not visible to CUDA either, so "
                         "they are not measured)")
