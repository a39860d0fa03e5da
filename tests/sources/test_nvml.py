"""NvmlBackend against a fake pynvml module installed at the import boundary (sys.modules)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from greenmeter import ConfigError, CounterReadError, MeasurementError
from greenmeter.sources.nvml import COUNTER_UPDATE_PERIOD_S, POWER_AVERAGING_S, NvmlBackend
from tests.fakes import fake_pynvml as fake
from tests.fakes.fake_pynvml import FakeGpu, FakePynvml, make_fake_pynvml

COUNTER_METHOD = "total energy counter (nvmlDeviceGetTotalEnergyConsumption)"


@pytest.fixture(autouse=True)
def _no_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def install(
    monkeypatch: pytest.MonkeyPatch, *gpus: FakeGpu, init_error: Exception | None = None
) -> FakePynvml:
    module = make_fake_pynvml(*gpus, init_error=init_error)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def uuid(n: int) -> str:
    return f"GPU-{n:08x}-aaaa-bbbb-cccc-dddddddddddd"


def test_importing_greenmeter_and_the_backend_does_not_import_pynvml() -> None:
    code = "import sys, greenmeter, greenmeter.sources.nvml; print('pynvml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the energy counter ------------------------------------------------------------------------------


def test_counter_gpu_reads_exact_joules_since_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(name="NVIDIA H200", uuid=uuid(1), energy_mj=(5_000_000, 5_002_500, 5_010_001))
    install(monkeypatch, gpu)
    backend = NvmlBackend()

    result = backend.probe()

    assert result.available and result.reason == "" and result.notes == ()
    (domain,) = result.domains
    assert domain.key == "nvml:gpu0" and domain.kind == "gpu" and domain.in_total is True
    assert domain.update_period_s == COUNTER_UPDATE_PERIOD_S == 0.1
    assert domain.provenance.kind == "measured"
    assert domain.provenance.source == f"NVML GPU 0 NVIDIA H200 ({uuid(1)})"
    assert domain.provenance.method == COUNTER_METHOD
    assert domain.provenance.constants == {}
    assert backend.poll_interval_s is None
    before = time.monotonic()
    first = backend.read()
    second = backend.read()
    assert before <= first.timestamp_s <= second.timestamp_s <= time.monotonic()
    assert dict(first.energy_j) == {"nvml:gpu0": 2.5}
    assert dict(second.energy_j) == {"nvml:gpu0": 10.001}
    backend.poll()  # a counter needs no polling: no NVML call
    assert gpu.calls == ["energy"] * 3


def test_counter_going_backwards_counts_nothing_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # 9 J -> 4 J (the driver reloaded: the counter restarted) -> 4.5 J: only the 0.5 J after it counts
    install(monkeypatch, FakeGpu(energy_mj=(9_000, 4_000, 4_500)))
    backend = NvmlBackend()
    backend.probe()
    assert backend.read().energy_j == {"nvml:gpu0": 0.0}
    assert backend.read().energy_j == {"nvml:gpu0": 0.5}
    (message,) = backend.anomalies_since(0.0)
    assert message.startswith("nvml:gpu0 NVML energy counter went from 9,000 to 4,000 mJ in ")
    assert message.endswith(": it never decreases (the NVIDIA driver was probably reloaded, restarting it); "
                            "counted as 0 J, later readings count from the new value")


# -- integrated power samples ------------------------------------------------------------------------


def test_gpu_without_counter_integrates_power_by_trapezoid(monkeypatch: pytest.MonkeyPatch) -> None:
    # probe sample 50 W, then one sample per read: 150 W, 250 W, 70 W
    power_mw = (50_000, 150_000, 250_000, 70_000)
    gpu = FakeGpu(name="Tesla P100", uuid=uuid(2), energy_mj=None, power_mw=power_mw)
    install(monkeypatch, gpu)
    backend = NvmlBackend(power_sample_interval_s=0.25)
    before_probe = time.monotonic()
    result = backend.probe()
    after_probe = time.monotonic()

    (domain,) = result.domains
    assert domain.provenance.kind == "measured"
    assert domain.provenance.source == f"NVML GPU 0 Tesla P100 ({uuid(2)})"
    reading = "nvmlDeviceGetPowerUsage every 0.25 s, each possibly a mean over the last 1 s (Ampere and newer)"
    assert domain.provenance.method == (
        f"integrated power samples ({reading}; trapezoid rule; effective resolution 1.25 s)"
    )
    assert domain.update_period_s == 0.25 + POWER_AVERAGING_S  # its effective resolution
    assert backend.poll_interval_s == 0.25
    assert result.notes == (
        f"nvml:gpu0 (NVML GPU 0 Tesla P100 ({uuid(2)})) has no total energy counter (it needs a Volta or "
        f"newer GPU); integrating {reading} instead, effective resolution 1.25 s",
    )
    readings = []
    for _ in range(3):
        time.sleep(0.002)
        readings.append(backend.read())
    r1, r2, r3 = readings
    assert r1.timestamp_s < r2.timestamp_s < r3.timestamp_s
    # The probe's sample time is not public; it lies between the clocks taken around probe().
    e1 = r1.energy_j["nvml:gpu0"]
    assert 0.5 * (50 + 150) * (r1.timestamp_s - after_probe) <= e1
    assert e1 <= 0.5 * (50 + 150) * (r1.timestamp_s - before_probe)
    # Between reads the edges are the backend's own timestamps: the integral is exact.
    e2, e3 = r2.energy_j["nvml:gpu0"], r3.energy_j["nvml:gpu0"]
    assert e2 - e1 == pytest.approx(0.5 * (150 + 250) * (r2.timestamp_s - r1.timestamp_s), rel=1e-9)
    assert e3 - e2 == pytest.approx(0.5 * (250 + 70) * (r3.timestamp_s - r2.timestamp_s), rel=1e-9)
    assert gpu.calls == ["energy"] + ["power"] * 4


def test_poll_samples_count_in_the_integral(monkeypatch: pytest.MonkeyPatch) -> None:
    # read 100 W, poll 300 W, read 100 W: with one sample between equal end values, the trapezoid sum is
    # (100 + 300) / 2 W over the whole window wherever the poll fell; without the poll it would be 100 W.
    gpu = FakeGpu(energy_mj=None, power_mw=(100_000, 100_000, 300_000, 100_000))
    install(monkeypatch, gpu)
    backend = NvmlBackend()
    backend.probe()
    first = backend.read()
    time.sleep(0.002)
    backend.poll()
    time.sleep(0.002)
    second = backend.read()

    joules = second.energy_j["nvml:gpu0"] - first.energy_j["nvml:gpu0"]
    assert joules == pytest.approx(200.0 * (second.timestamp_s - first.timestamp_s), rel=1e-9)
    assert gpu.calls.count("power") == 4


def test_concurrent_reads_are_serialised(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every power call returns a new value (50 W, 51 W, ...), and the fake sleeps in each call, letting
    # threads interleave. Under the lock, call order is timestamp order, so sorted by timestamp the k-th
    # reading holds the (k+1)-th scripted value and each step is exactly one trapezoid.
    power_mw = tuple(range(50_000, 451_000, 1_000))
    install(monkeypatch, FakeGpu(energy_mj=None, power_mw=power_mw, latency_s=1e-4))
    backend = NvmlBackend()
    backend.probe()  # takes the 50 W sample
    readings = []

    def worker() -> None:
        for _ in range(100):
            readings.append(backend.read())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    readings.sort(key=lambda r: r.timestamp_s)
    assert len(readings) == 400
    for k in range(1, 400):
        earlier, later = readings[k - 1], readings[k]
        watts = 0.5 * ((50 + k) + (50 + k + 1))
        step_j = later.energy_j["nvml:gpu0"] - earlier.energy_j["nvml:gpu0"]
        assert step_j == pytest.approx(watts * (later.timestamp_s - earlier.timestamp_s), rel=1e-6, abs=1e-12)


# -- several GPUs ------------------------------------------------------------------------------------


def test_two_gpus_mixed_counter_and_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    volta = FakeGpu(name="Tesla V100", uuid=uuid(3), energy_mj=(1_000, 3_500), power_mw=(1,))
    kepler = FakeGpu(name="Tesla K80", uuid=uuid(4), energy_mj=None, power_mw=(60_000, 90_000))
    install(monkeypatch, volta, kepler)
    backend = NvmlBackend()
    result = backend.probe()

    assert [d.key for d in result.domains] == ["nvml:gpu0", "nvml:gpu1"]
    assert result.domains[0].provenance.method == COUNTER_METHOD
    assert result.domains[1].provenance.method.startswith("integrated power samples (nvmlDeviceGetPowerUsage")
    assert result.domains[1].provenance.source == f"NVML GPU 1 Tesla K80 ({uuid(4)})"
    assert len(result.notes) == 2 and result.notes[0].startswith("GPUs numbered in NVML's (PCI bus) order")
    assert result.notes[1].startswith("nvml:gpu1 (NVML GPU 1 Tesla K80")
    assert backend.poll_interval_s == 0.1
    first = backend.read()
    time.sleep(0.002)
    second = backend.read()
    assert first.energy_j["nvml:gpu0"] == second.energy_j["nvml:gpu0"] == 2.5
    k80 = second.energy_j["nvml:gpu1"] - first.energy_j["nvml:gpu1"]
    assert k80 == pytest.approx(90.0 * (second.timestamp_s - first.timestamp_s), rel=1e-9)
    assert volta.calls == ["energy"] * 3  # the counter GPU is never sampled


def test_devices_selects_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeGpu(uuid=uuid(0)), FakeGpu(uuid=uuid(1)), FakeGpu(uuid=uuid(2)))
    result = NvmlBackend(devices=[2, 0]).probe()
    assert [(d.key, d.provenance.source) for d in result.domains] == [
        ("nvml:gpu2", f"NVML GPU 2 NVIDIA H200 ({uuid(2)})"),
        ("nvml:gpu0", f"NVML GPU 0 NVIDIA H200 ({uuid(0)})"),
    ]


def test_other_counter_error_falls_back_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeGpu(energy_mj=(fake.NVMLError_NoPermission(),), power_mw=(40_000,)))
    result = NvmlBackend().probe()
    assert result.available
    assert result.domains[0].provenance.method.startswith("integrated power samples")
    assert "cannot read its total energy counter (Insufficient Permissions)" in result.notes[0]


def test_unreadable_gpu_is_left_out_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    lost = FakeGpu(open_error=fake.NVMLError_GpuIsLost())
    mute = FakeGpu(energy_mj=None, power_mw=(fake.NVMLError_NotSupported(),))
    install(monkeypatch, FakeGpu(energy_mj=(0, 1_000)), lost, mute)
    result = NvmlBackend().probe()
    assert [d.key for d in result.domains] == ["nvml:gpu0"]
    assert result.notes[-2] == "GPU energy NOT included: nvml:gpu1 (NVML GPU 1) cannot be opened (GPU is lost)"
    assert result.notes[-1].startswith("GPU energy NOT included: nvml:gpu2 (NVML GPU 2 NVIDIA H200")
    assert result.notes[-1].endswith(
        "has no energy counter (Not Supported) and no power reading (Not Supported)"
    )


def test_no_measurable_gpu_is_unavailable_and_shuts_nvml_down(monkeypatch: pytest.MonkeyPatch) -> None:
    module = install(monkeypatch, FakeGpu(open_error=fake.NVMLError_GpuIsLost()))
    result = NvmlBackend().probe()
    assert not result.available and result.domains == ()
    assert result.reason == "no selected GPU can be measured: nvml:gpu0 (NVML GPU 0) cannot be opened (GPU is lost)"
    assert result.notes == ("GPU energy NOT included: " + result.reason,)  # NVML saw the GPU: it is present
    assert not module.initialised and module.shutdown_calls == 1


# -- unavailable -------------------------------------------------------------------------------------


def test_missing_pynvml_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    result = NvmlBackend().probe()
    assert result.backend == "nvml" and not result.available and result.domains == ()
    assert "pynvml module cannot be imported" in result.reason
    assert result.reason.endswith("pip install nvidia-ml-py")


@pytest.mark.parametrize(
    ("error", "phrases"),
    [
        (
            fake.NVMLError_LibraryNotFound(),
            ["NVMLError_LibraryNotFound: NVML Shared Library Not Found", "libnvidia-ml.so.1",
             "Install the NVIDIA driver", "NVIDIA Container Toolkit", "--gpus all"],
        ),
        (
            fake.NVMLError_DriverNotLoaded(),
            ["NVMLError_DriverNotLoaded: Driver Not Loaded", "kernel driver is not loaded",
             "sudo modprobe nvidia", "--gpus all"],
        ),
        (fake.NVMLError_NoPermission(), ["Insufficient Permissions", "/dev/nvidia*"]),
        (fake.NVMLError_LibRmVersionMismatch(), ["version mismatch", "Reboot"]),
        (fake.NVMLError_Unknown(), ["NVMLError_Unknown: Unknown Error", "nvidia-smi", "--gpus all"]),
    ],
)
def test_init_failure_gives_the_error_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, error: Exception, phrases: list[str]
) -> None:
    module = install(monkeypatch, FakeGpu(), init_error=error)
    backend = NvmlBackend()
    result = backend.probe()
    assert not result.available and result.domains == ()
    for phrase in phrases:
        assert phrase in result.reason
    assert module.shutdown_calls == 0  # nothing to shut down
    with pytest.raises(MeasurementError):
        backend.read()


def test_no_gpus_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    module = install(monkeypatch)
    result = NvmlBackend().probe()
    assert not result.available
    assert "NVML works but sees no NVIDIA GPU" in result.reason and "--gpus all" in result.reason
    assert not module.initialised and module.shutdown_calls == 1


# -- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"devices": []}, "non-empty sequence"),
        ({"devices": [-1]}, "integers >= 0"),
        ({"devices": ["0"]}, "integers >= 0"),
        ({"devices": [True]}, "integers >= 0"),
        ({"devices": [1.0]}, "integers >= 0"),
        ({"devices": "0"}, "sequence of GPU indices"),
        ({"devices": [1, 1]}, r"devices lists a GPU twice: \[1, 1\]"),
        ({"power_sample_interval_s": 0}, "power_sample_interval_s must be a number of seconds > 0"),
        ({"power_sample_interval_s": -0.5}, "power_sample_interval_s must be a number of seconds > 0"),
        ({"power_sample_interval_s": float("nan")}, "power_sample_interval_s must be a number of seconds > 0"),
        ({"power_sample_interval_s": float("inf")}, "power_sample_interval_s must be a number of seconds > 0"),
        ({"power_sample_interval_s": "0.1"}, "power_sample_interval_s must be a number of seconds > 0"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NvmlBackend(**kwargs)


def test_device_index_past_the_last_gpu_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module = install(monkeypatch, FakeGpu(), FakeGpu())
    message = r"devices=\[0, 2\]: there is no GPU 2; NVML sees 2 GPU\(s\), indices 0 to 1"
    with pytest.raises(ConfigError, match=message):
        NvmlBackend(devices=[0, 2]).probe()
    assert not module.initialised


# -- read errors and lifecycle -----------------------------------------------------------------------


def test_counter_read_error_wraps_the_nvml_error(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeGpu(energy_mj=(0, fake.NVMLError_GpuIsLost())))
    backend = NvmlBackend()
    backend.probe()
    message = "nvml:gpu0: nvmlDeviceGetTotalEnergyConsumption failed: GPU is lost"
    with pytest.raises(CounterReadError, match=message) as info:
        backend.read()
    assert isinstance(info.value.__cause__, fake.NVMLError_GpuIsLost)


@pytest.mark.parametrize("call", ["read", "poll"])
def test_power_read_error_wraps_the_nvml_error(monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    install(monkeypatch, FakeGpu(energy_mj=None, power_mw=(10_000, fake.NVMLError_Unknown())))
    backend = NvmlBackend()
    backend.probe()
    message = "nvml:gpu0: nvmlDeviceGetPowerUsage failed: Unknown Error"
    with pytest.raises(CounterReadError, match=message) as info:
        getattr(backend, call)()
    assert isinstance(info.value.__cause__, fake.NVMLError_Unknown)


def test_probe_is_cached_and_close_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    module = install(monkeypatch, FakeGpu(energy_mj=(0, 2_000)))
    backend = NvmlBackend()
    backend.close()  # before any probe: nothing to do
    assert module.shutdown_calls == 0
    first = backend.probe()
    assert backend.probe() is first
    assert module.init_calls == 1
    backend.close()
    backend.close()
    assert module.shutdown_calls == 1 and not module.initialised
    with pytest.raises(MeasurementError, match=r"read\(\) needs a successful probe\(\)"):
        backend.read()
    with pytest.raises(MeasurementError, match=r"poll\(\) needs a successful probe\(\)"):
        backend.poll()
    assert backend.probe().available  # opens again, counting from the new probe
    assert module.init_calls == 2
    assert backend.read().energy_j["nvml:gpu0"] == 0.0  # the script repeats 2000 mJ: nothing since
    backend.close()
    assert module.shutdown_calls == 2 and not module.initialised


def test_read_before_probe_is_a_measurement_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module = install(monkeypatch, FakeGpu())
    with pytest.raises(MeasurementError):
        NvmlBackend().read()
    assert module.init_calls == 0

