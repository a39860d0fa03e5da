"""NvmlBackend on a real NVIDIA GPU. Skipped cleanly without pynvml, a driver, a GPU or CUDA torch."""

from __future__ import annotations

import time

import pytest

from greenmeter.sources.nvml import NvmlBackend

pytestmark = pytest.mark.gpu


def _real_gpu_or_skip() -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        pytest.skip(f"NVML cannot initialise here: {err}")
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        pytest.skip("NVML sees no GPU")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no usable CUDA device")


def test_energy_of_a_matmul_loop_on_gpu0() -> None:
    _real_gpu_or_skip()
    import torch

    backend = NvmlBackend(devices=[0])
    result = backend.probe()
    assert result.available, result.reason
    (domain,) = result.domains
    assert domain.key == "nvml:gpu0" and domain.provenance.kind == "measured"
    if torch.cuda.get_device_capability(0) >= (7, 0):  # Volta or newer has the energy counter
        assert domain.provenance.method == "total energy counter (nvmlDeviceGetTotalEnergyConsumption)"
        assert backend.poll_interval_s is None
    else:
        assert domain.provenance.method.startswith("integrated power samples")

    device = torch.device("cuda:0")
    a = torch.randn(4096, 4096, device=device)
    b = torch.randn(4096, 4096, device=device)
    torch.cuda.synchronize(device)
    try:
        start = backend.read()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for _ in range(20):
                a = torch.tanh(a @ b)  # tanh keeps the values finite
            if backend.poll_interval_s is not None:
                backend.poll()
            torch.cuda.synchronize(device)
        end = backend.read()
    finally:
        backend.close()

    joules = end.energy_j["nvml:gpu0"] - start.energy_j["nvml:gpu0"]
    seconds = end.timestamp_s - start.timestamp_s
    assert seconds >= 1.5
    assert joules > 0
    assert 20.0 <= joules / seconds <= 1500.0, f"{joules:.1f} J in {seconds:.2f} s"
