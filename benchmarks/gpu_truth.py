"""GPU truth check: NVML's energy counter against integrated power on real hardware, and the issue-19 checks.

On the first CUDA GPU (``cuda:0``, matched to NVML by UUID) it records, under two loads (idle, a bf16 matmul
loop), a trace of NVML's total-energy counter, ``nvmlDeviceGetPowerUsage`` and the instantaneous power field
(``NVML_FI_DEV_POWER_INSTANT``, where the GPU answers it), sampled every few milliseconds. From each trace:

- how often the counter really refreshes (the intervals between its steps);
- for windows of 0.05 to 10 s cut from the trace: the counter's energy and each integrated power reading
  against the trace's mean power x the window's length (the reference: the load is held steady, and over the
  whole trace the counter's lag is under 1%), as median and largest errors, and how often the counter's error
  stays inside the bound greenmeter states (update period x power / duration).

Then greenmeter's own behaviour on this GPU (issue 19), one PASS/FAIL line each: every CUDA device maps to the
NVML device with its UUID; a 150 ms window is flagged with its bound and its band holds the reference; window
edges synchronise every device with a CUDA context, wait for the work queued there and create no context;
another process on the GPU is flagged (or, where NVML cannot see it, said to be unknown); a GPU that cannot be
opened gives "GPU energy NOT included". A check that raises is a FAIL line with its error, and the others still
run. On a Grace module (GH200, GB200) one line says what greenmeter's NVML domain reads there: the whole module
(GPU + Grace CPU + LPDDR5X, the CPU and RAM estimates then kept out of the total) or the GPU alone; the traces
above are of the scopeless total energy counter, which on GH200 counts the whole module.

The JSON at ``--out`` is written once the GPU is known and after each trace and each check (``"status":
"partial"``), so a run stopped early keeps what it measured; a finished run says ``"ok"`` (exit 1 if a check
failed), one stopped by an error outside the checks ``"failed"`` with the error (exit 2). The raw traces are kept
in it for a later look.

It needs torch (with CUDA) and nvidia-ml-py; without a GPU it says so and exits 0. Expected to take about a
minute and a half on an H200 (three minutes at most: waiting for the other process's CUDA context is capped at
60 s, and for NVML to list it at 10 s). Not yet run on a GPU; ``main()`` runs end to end against the fake
``pynvml`` and ``torch.cuda`` (tests/sources/test_nvml_gpu_truth.py), with :class:`Rig` holding what differs there.

    python benchmarks/gpu_truth.py --out gpu_truth.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WINDOWS_S = (0.05, 0.1, 0.15, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
TRACE_S = 12.0
WARMUP_S = 2.0
SAMPLE_S = 0.004
SHORT_WINDOW_S = 0.15
#: The other process on the GPU: it makes a CUDA context on cuda:0, says so, and waits to be killed.
_CHILD = ("import sys, time, torch\n"
          "x = torch.zeros(1, device='cuda')\n"
          "torch.cuda.synchronize()\n"
          "print('ready', flush=True)\n"
          "time.sleep(float(sys.argv[1]))\n")
#: A fresh process whose only GPU is a MIG instance that does not exist: greenmeter cannot measure it.
_NOT_INCLUDED_CHILD = ("import json, time\nfrom greenmeter.metering.meter import Meter\n"
                       "m = Meter(sync=None)\nwith m.window('w') as w:\n    time.sleep(0.01)\nm.close()\n"
                       "print(json.dumps([f for f in w.measurement.flags if 'NOT included' in f]))\n")
_MISSING_MIG = "MIG-00000000-0000-0000-0000-000000000000"

Sample = tuple[float, int, int, "float | None"]  # (clock s, counter mJ, power mW, instant mW or None)


def _dtype(torch: Any) -> Any:
    """bf16 where cuda:0 computes it natively (Ampere and newer), else fp16: emulated bf16 would be far slower."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _matmul_load(torch: Any) -> Callable[[], None]:
    """The steady load: each call runs four 8192 x 8192 bf16 matmuls on cuda:0 and waits for them (~6 ms on an H200)."""
    a = torch.randn(8192, 8192, device="cuda:0", dtype=_dtype(torch))
    b = torch.randn(8192, 8192, device="cuda:0", dtype=_dtype(torch))

    def matmul() -> None:
        for _ in range(4):
            torch.mm(a, b)
        torch.cuda.synchronize(0)

    return matmul


def _queue_gpu_work(torch: Any) -> Callable[[], float]:
    """Queue about 0.3 s of matmuls on cuda:0 without waiting (5 to 200 of them, as many as take that long here:
    200 on an H200); the function returned waits for them and gives the seconds the GPU spent on them (CUDA events;
    ``elapsed_time`` needs the stop event done). It waits on events only, never through ``torch.cuda.synchronize``,
    whose calls the sync check counts."""
    with torch.cuda.device(0):
        a = torch.randn(8192, 8192, device="cuda:0", dtype=_dtype(torch))
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        (a @ a).clamp_(-1, 1)  # warm: cuBLAS picks its kernel
        start.record()
        (a @ a).clamp_(-1, 1)
        stop.record()
        stop.synchronize()
        count = max(5, min(200, int(0.3 / max(start.elapsed_time(stop) / 1e3, 1e-6))))
        start.record()
        for _ in range(count):
            a = (a @ a).clamp_(-1, 1)
        stop.record()

    def gpu_seconds() -> float:
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3

    return gpu_seconds


@contextlib.contextmanager
def _foreign_process() -> Iterator[int]:
    """Another process with a CUDA context on cuda:0, for as long as the block runs; yields its PID.

    Started by a shell that exits at once, so it is not a descendant of this process (a descendant is this job,
    not "another process"). Waits up to 60 s for it to say its context is made; it is killed when the block ends.
    """
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "child.log"
        shell = (f"{shlex.quote(sys.executable)} -c {shlex.quote(_CHILD)} 120 >{shlex.quote(str(log))} 2>&1 "
                 "& echo $!")
        launcher = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, timeout=30, check=True)
        pid = int(launcher.stdout.split()[0])
        try:
            deadline = time.monotonic() + 60
            while "ready" not in log.read_text(errors="replace").split():
                if not _alive(pid):
                    raise RuntimeError(f"the other process (PID {pid}) ended before making its CUDA context: "
                                       f"{log.read_text(errors='replace')[-500:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the other process (PID {pid}) made no CUDA context in 60 s")
                time.sleep(0.2)
            yield pid
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def _alive(pid: int) -> bool:
    """Whether a process runs: a zombie does not (one reparented to a PID 1 that never reaps stays a zombie)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _run_python(code: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``code`` in a fresh interpreter with ``env`` added to the environment: (exit code, stdout, stderr)."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    return run.returncode, run.stdout, run.stderr


@dataclass(frozen=True)
class Rig:
    """What the script times and drives the GPU with. The defaults are the real ones; the end-to-end test passes
    fakes driven by one fake clock.

    Attributes:
        clock: monotonic seconds, for every timed loop here and as the ``clock`` of every ``NvmlBackend``.
        sleep: waits that many seconds (the trace's sampling thread, the other process's window).
        matmul: given torch, the steady load (see :func:`_matmul_load`).
        gpu_work: given torch, queues GPU work and returns a function giving its GPU seconds once done
            (see :func:`_queue_gpu_work`).
        foreign_process: a context manager: another process on cuda:0 while it runs, its PID.
        run_python: runs Python code in a fresh interpreter with environment variables added.
    """

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    matmul: Callable[[Any], Callable[[], None]] = _matmul_load
    gpu_work: Callable[[Any], Callable[[], float]] = _queue_gpu_work
    foreign_process: Callable[[], contextlib.AbstractContextManager[int]] = _foreign_process
    run_python: Callable[[str, dict[str, str]], tuple[int, str, str]] = _run_python


def _say(message: str) -> None:
    print(message, flush=True)


def _gpu_or_reason() -> tuple[Any, Any, str]:
    """``(pynvml, torch, "")`` when an NVIDIA GPU can be measured here, else ``(None, None, why not)``."""
    try:
        import pynvml
    except ImportError as err:
        return None, None, f"pynvml cannot be imported ({err}); pip install nvidia-ml-py"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        return None, None, f"NVML cannot initialise here ({err})"
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        return None, None, "NVML sees no GPU"
    try:
        import torch
    except ImportError as err:
        return None, None, f"torch cannot be imported ({err})"
    if not torch.cuda.is_available():
        return None, None, "torch sees no usable CUDA device"
    return pynvml, torch, ""


def _cuda0_handle(nvml: Any, torch: Any) -> tuple[Any, str]:
    """The NVML handle of ``cuda:0`` (NVML must be initialised), and how it was found.

    torch's UUID is bare (``str(get_device_properties(0).uuid)`` has no ``GPU-``/``MIG-`` prefix, as NVML's has).
    """
    uuid = str(torch.cuda.get_device_properties(0).uuid)
    for candidate in (f"GPU-{uuid}", f"MIG-{uuid}", uuid):
        try:
            return nvml.nvmlDeviceGetHandleByUUID(candidate), f"by UUID {candidate}"
        except nvml.NVMLError:
            continue
    return nvml.nvmlDeviceGetHandleByIndex(0), f"NVML index 0: no NVML device has cuda:0's UUID {uuid}"


def _instant_mw(nvml: Any, handle: Any) -> float | None:
    field = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", 186)
    try:
        (value,) = nvml.nvmlDeviceGetFieldValues(handle, [field])
    except (nvml.NVMLError, AttributeError):
        return None
    if value.nvmlReturn != 0:
        return None
    members = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
    return float(getattr(value.value, members[value.valueType] if value.valueType < len(members) else "uiVal"))


def _trace(rig: Rig, nvml: Any, handle: Any, seconds: float, load: Callable[[], None] | None = None) -> list[Sample]:
    """(clock s, counter mJ, power mW, instant mW or None) every ~SAMPLE_S for ``seconds`` while ``load()`` runs
    (or idle). Under a load the first WARMUP_S are not kept (the GPU reaches a steady state). The sampling thread
    keeps the time: the load runs until it is done."""
    samples: list[Sample] = []
    done = threading.Event()
    failure: list[BaseException] = []
    warm = WARMUP_S if load is not None else 0.0

    def sample() -> None:
        try:
            start = rig.clock()
            while (t := rig.clock()) < start + warm + seconds:
                reading = (t, int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)),
                           int(nvml.nvmlDeviceGetPowerUsage(handle)), _instant_mw(nvml, handle))
                if t >= start + warm:
                    samples.append(reading)
                rig.sleep(SAMPLE_S)
        except BaseException as err:  # raised again below, in the caller's thread
            failure.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    while not done.is_set():
        if load is None:
            done.wait(0.05)
        else:
            load()
    thread.join()
    if failure:
        raise failure[0]
    return samples


def _trapezoid(ts: list[float], ws: list[float]) -> float:
    return sum(0.5 * (ws[k] + ws[k + 1]) * (ts[k + 1] - ts[k]) for k in range(len(ts) - 1))


def _analyse(samples: list[Sample]) -> dict[str, Any]:
    ts = [s[0] for s in samples]
    mj = [s[1] for s in samples]
    avg_w = [s[2] / 1000 for s in samples]
    inst_w = [s[3] / 1000 if s[3] is not None else None for s in samples]
    has_instant = all(w is not None for w in inst_w)
    steps = [ts[k] for k in range(1, len(ts)) if mj[k] != mj[k - 1]]
    periods = [b - a for a, b in zip(steps, steps[1:])]
    ref_w = (mj[-1] - mj[0]) / 1000 / (ts[-1] - ts[0])
    out: dict[str, Any] = {
        "samples": len(samples), "trace_s": ts[-1] - ts[0], "mean_power_w": ref_w,
        "counter_update_period_s": {
            "median": statistics.median(periods) if periods else None,
            "p10": statistics.quantiles(periods, n=10)[0] if len(periods) > 10 else None,
            "p90": statistics.quantiles(periods, n=10)[-1] if len(periods) > 10 else None,
        },
        "instant_field": has_instant,
        "windows": [],
    }
    period = out["counter_update_period_s"]["median"] or 0.1
    for w in WINDOWS_S:
        errors: dict[str, list[float]] = {"counter": [], "power_average": [], "power_instant": []}
        inside = 0
        stride = max(1, len(ts) // 200)
        for i in range(0, len(ts), stride):
            j = next((k for k in range(i + 1, len(ts)) if ts[k] >= ts[i] + w), None)
            if j is None:
                break
            d = ts[j] - ts[i]
            ref = ref_w * d
            counter = (mj[j] - mj[i]) / 1000
            errors["counter"].append((counter - ref) / ref)
            inside += abs(counter - ref) <= period * ref_w + 2e-3
            errors["power_average"].append((_trapezoid(ts[i:j + 1], avg_w[i:j + 1]) - ref) / ref)
            if has_instant:
                errors["power_instant"].append((_trapezoid(ts[i:j + 1], inst_w[i:j + 1]) - ref) / ref)  # type: ignore[arg-type]
        row: dict[str, Any] = {"window_s": w, "windows": len(errors["counter"])}
        for name, values in errors.items():
            if values:
                row[name] = {"median_abs_error": statistics.median(abs(v) for v in values),
                             "max_abs_error": max(abs(v) for v in values)}
        if errors["counter"]:
            row["counter_within_stated_bound"] = inside / len(errors["counter"])
            row["stated_bound"] = period / w
        out["windows"].append(row)
    return out


def _say_trace(label: str, stats: dict[str, Any]) -> None:
    _say(f"  {label}: mean {stats['mean_power_w']:.1f} W; counter refreshes every "
         f"{stats['counter_update_period_s']}; instantaneous field: {stats['instant_field']}")
    for row in stats["windows"]:
        cells = [f"{row['window_s']:>5g} s"]
        for key in ("counter", "power_average", "power_instant"):
            if key in row:
                cells.append(f"{key} median {row[key]['median_abs_error']:.1%} max {row[key]['max_abs_error']:.1%}")
        if "counter_within_stated_bound" in row:
            cells.append(f"counter inside the stated bound {row['stated_bound']:.0%}: "
                         f"{row['counter_within_stated_bound']:.0%} of windows")
        _say("  " + "; ".join(cells))


def _error(err: BaseException) -> str:
    """An exception in one line, with where it was raised."""
    where = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    place = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
    return f"{type(err).__name__}: {err}{place}"


# -- the issue-19 checks: each returns (passed, detail) ---------------------------------------------------------


def _check_uuid_mapping(rig: Rig, torch: Any) -> tuple[bool, str]:
    """Every CUDA device is the NVML device with its UUID."""
    from greenmeter.sources.nvml import NvmlBackend

    backend = NvmlBackend(clock=rig.clock)
    try:
        result = backend.probe()
    finally:
        backend.close()
    count = torch.cuda.device_count()
    want = [str(torch.cuda.get_device_properties(i).uuid) for i in range(count)]
    got = [d.provenance.source.rsplit("(", 1)[-1].rstrip(")") for d in result.domains]
    same = len(got) == count and all(g.upper().endswith(w.upper()) for g, w in zip(got, want))
    return result.available and same, f"CUDA {want} -> NVML {got}; notes {list(result.notes)}"


def _check_short_window(rig: Rig, matmul: Callable[[], None] | None, ref_w: float | None) -> tuple[bool, str]:
    """A 150 ms window under the matmul load is flagged with its bound, and its band holds the reference."""
    from greenmeter.metering.meter import Meter
    from greenmeter.sources.nvml import NvmlBackend

    if matmul is None or ref_w is None:
        raise RuntimeError("no matmul trace, so no reference power to judge the window by")
    meter = Meter(backends=[NvmlBackend(devices=[0], clock=rig.clock)])
    try:
        end = rig.clock() + 1.0  # back to the traced steady state
        while rig.clock() < end:
            matmul()
        with meter.window("short") as w:
            end = rig.clock() + SHORT_WINDOW_S
            while rig.clock() < end:
                matmul()
    finally:
        meter.close()
    m = w.measurement
    flagged = [f for f in m.flags if "between NVML reads" in f]
    others = [f for f in m.flags if "process" in f]
    (domain,) = m.domains
    truth = ref_w * m.duration_s
    holds = domain.band is not None and domain.band.low_j <= truth <= domain.band.high_j
    return bool(flagged) and holds, (
        f"{m.duration_s * 1e3:.0f} ms, {domain.energy_j:.1f} J read, reference {truth:.1f} J, "
        f"band {domain.band.describe() if domain.band else None}; flag: {flagged}; process flags: {others}")


def _check_sync(rig: Rig, torch: Any) -> tuple[bool, str]:
    """Window edges synchronise every device with a CUDA context (through ``torch.cuda.synchronize``, which is
    wrapped to record the calls), wait for the work queued there, and create no context."""
    from greenmeter.metering.meter import Meter
    from greenmeter.sources.nvml import NvmlBackend

    count = torch.cuda.device_count()
    has_context = getattr(torch._C, "_cuda_hasPrimaryContext", None)
    before = [bool(has_context(i)) for i in range(count)] if has_context else []
    expected = [i for i, c in enumerate(before) if c] if has_context else [None]  # without the query: current one
    synced: list[Any] = []
    real_sync = torch.cuda.synchronize

    def recording_sync(device: Any = None) -> None:
        synced.append(device)
        real_sync(device)

    torch.cuda.synchronize = recording_sync
    try:
        meter = Meter(backends=[NvmlBackend(clock=rig.clock)])
        try:
            meter.start()
            synced.clear()  # only the window's edges count
            with meter.window("sync") as w:
                gpu_seconds = rig.gpu_work(torch)
        finally:
            meter.close()
    finally:
        torch.cuda.synchronize = real_sync
    gpu_s = gpu_seconds()
    after = [bool(has_context(i)) for i in range(count)] if has_context else []
    waited = w.measurement.duration_s >= 0.95 * gpu_s
    return synced == expected * 2 and before == after and waited, (
        f"synchronize calls {synced} (expected {expected} at each edge), devices with a context before {before} "
        f"after {after}; window {w.measurement.duration_s:.3f} s for {gpu_s:.3f} s of queued GPU work")


def _check_foreign_process(rig: Rig, nvml: Any, torch: Any) -> tuple[bool, str]:
    """Another process on cuda:0 is flagged by PID, or, where NVML never lists it, said to be unknown."""
    from greenmeter.metering.meter import Meter
    from greenmeter.sources.nvml import NvmlBackend

    with rig.foreign_process() as pid:
        nvml.nvmlInit()
        try:
            handle, _ = _cuda0_handle(nvml, torch)
            deadline, seen = rig.clock() + 10, False
            while True:
                listed = [int(p.pid) for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)]
                seen = pid in listed
                if seen or rig.clock() >= deadline:
                    break
                rig.sleep(0.5)
        finally:
            nvml.nvmlShutdown()
        meter = Meter(backends=[NvmlBackend(devices=[0], clock=rig.clock)])
        try:
            with meter.window("foreign") as w:
                rig.sleep(1.2)
        finally:
            meter.close()
    flags = [f for f in w.measurement.flags if "other" in f and "process" in f]
    named = any(str(pid) in f for f in flags)
    unknown = any("unknown" in f for f in flags)
    own = os.getpid()  # where NVML lists PIDs of another namespace (some containers), neither PID is among them
    return named or (unknown and not seen), (f"pid {pid} listed by NVML: {seen}, this process ({own}): {own in listed} "
                                             f"(NVML lists {listed}); flags {flags}")


def _check_not_included(rig: Rig) -> tuple[bool, str]:
    """A fresh process whose only GPU cannot be opened (a MIG UUID that does not exist) says so in its flags."""
    code, out, err = rig.run_python(_NOT_INCLUDED_CHILD, {"CUDA_VISIBLE_DEVICES": _MISSING_MIG})
    if code != 0:
        raise RuntimeError(f"the child process exited {code}: {err.strip()[-500:]}")
    flags = json.loads(out.strip().splitlines()[-1])
    return any("GPU energy NOT included" in f for f in flags), f"flags {flags}"


def _read_cost_us(rig: Rig) -> dict[str, float]:
    """What one ``NvmlBackend.read()`` of cuda:0 costs, in microseconds (timed on the real clock)."""
    from greenmeter.sources.nvml import NvmlBackend

    backend = NvmlBackend(devices=[0], clock=rig.clock)
    probe = backend.probe()
    if not probe.available:
        raise RuntimeError(f"NVML is not usable: {probe.reason}")
    try:
        start = time.perf_counter_ns()
        for _ in range(200):
            backend.read()
        return {"greenmeter_read_us": (time.perf_counter_ns() - start) / 200 / 1e3}
    finally:
        backend.close()


def _grace_module(rig: Rig | None = None) -> str | None:
    """What greenmeter's NVML domain of ``cuda:0`` reads on a Grace module (GH200, GB200), or ``None`` elsewhere."""
    from greenmeter.sources.nvml import NvmlBackend

    backend = NvmlBackend(devices=[0], clock=(rig or Rig()).clock)
    probe = backend.probe()
    try:
        if not probe.available or "module" not in probe.domains[0].provenance.method:
            return None
        domain = probe.domains[0]
        kept_out = "; the CPU and RAM estimates are kept out of the total" if domain.includes else ""
        return f"{domain.key} is on a Grace module: {domain.provenance.method}{kept_out}"
    finally:
        backend.close()


def _check(checks: list[dict[str, Any]], name: str, run: Callable[[], tuple[bool, str]]) -> None:
    """Run one check and record it; one that raises is a FAIL with its error (the others still run)."""
    try:
        passed, detail = run()
        entry: dict[str, Any] = {"check": name, "pass": bool(passed), "detail": detail}
    except Exception as err:  # noqa: BLE001 - one real run must return as much as it can
        passed, detail = False, f"raised {_error(err)}"
        entry = {"check": name, "pass": False, "detail": detail, "traceback": traceback.format_exc()[-3000:]}
    checks.append(entry)
    _say(f"{'PASS' if passed else 'FAIL'} {name}: {detail}")


def main(argv: list[str] | None = None, rig: Rig | None = None) -> int:
    """Run the traces and the checks on ``cuda:0`` and write the JSON; ``rig``: see :class:`Rig` (default: real)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where to write the results as JSON")
    args = parser.parse_args(argv)
    rig = rig or Rig()
    out = Path(args.out)
    began = time.monotonic()
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    nvml, torch, why = _gpu_or_reason()
    if nvml is None:
        _say(f"no GPU: {why}; nothing measured (this check needs an NVIDIA GPU, torch with CUDA and nvidia-ml-py)")
        out.write_text(json.dumps({"status": "skipped", "reason": why, "date": stamp}, indent=2))
        return 0
    result: dict[str, Any] = {"status": "partial", "date": stamp, "torch": torch.__version__,
                              "cuda": torch.version.cuda, "loads": {}, "checks": [], "traces": {}}

    def save() -> None:
        result["elapsed_s"] = round(time.monotonic() - began, 1)
        out.write_text(json.dumps(result, indent=2))

    try:
        nvml.nvmlInit()
        try:
            handle, found = _cuda0_handle(nvml, torch)
            name, driver = (v.decode() if isinstance(v, bytes) else str(v)
                            for v in (nvml.nvmlDeviceGetName(handle), nvml.nvmlSystemGetDriverVersion()))
            result.update(gpu=name, driver=driver, nvml_handle=found)
            save()
            _say(f"GPU: {name} ({found}), driver {driver}, torch {torch.__version__}, CUDA {torch.version.cuda}")
            try:
                result["grace_module"] = module = _grace_module(rig)
                if module is not None:
                    _say(f"GH200/Grace module: {module} (verified before only against the fake pynvml)")
            except Exception as err:  # noqa: BLE001 - said, and the run goes on
                result["grace_module"] = f"raised {_error(err)}"
                _say(f"Grace module check raised {_error(err)}")
            try:
                matmul: Callable[[], None] | None = rig.matmul(torch)
            except Exception as err:  # noqa: BLE001 - the idle trace and most checks need no load
                matmul, matmul_error = None, err
            for label, load in (("idle", None), ("matmul", matmul)):
                _say(f"tracing {label} for {TRACE_S:g} s ...")
                try:
                    if label == "matmul" and matmul is None:
                        raise RuntimeError(f"the matmul load could not be set up: {_error(matmul_error)}")
                    samples = _trace(rig, nvml, handle, TRACE_S, load)
                    t0 = samples[0][0] if samples else 0.0
                    result["traces"][label] = [[round(t - t0, 6), mj, mw, inst] for t, mj, mw, inst in samples]
                    result["loads"][label] = stats = _analyse(samples)
                    _say_trace(label, stats)
                except Exception as err:  # noqa: BLE001 - the other trace and the checks still run
                    result["loads"][label] = {"error": _error(err), "traceback": traceback.format_exc()[-3000:]}
                    _say(f"  {label} trace failed: {_error(err)}")
                save()
        finally:
            nvml.nvmlShutdown()
        ref_w = result["loads"].get("matmul", {}).get("mean_power_w")
        checks: list[dict[str, Any]] = result["checks"]
        for name, run in (
            ("uuid mapping", lambda: _check_uuid_mapping(rig, torch)),
            ("short-window flag", lambda: _check_short_window(rig, matmul, ref_w)),
            ("sync of every device", lambda: _check_sync(rig, torch)),
            ("foreign process flag", lambda: _check_foreign_process(rig, nvml, torch)),
            ("not-included flag", lambda: _check_not_included(rig)),
        ):
            _check(checks, name, run)
            save()
        try:
            result["read_cost"] = cost = _read_cost_us(rig)
            _say(f"greenmeter NvmlBackend.read(): {cost['greenmeter_read_us']:.0f} us (counter and process list)")
        except Exception as err:  # noqa: BLE001 - said in the JSON
            result["read_cost"] = {"error": _error(err)}
            _say(f"read cost failed: {_error(err)}")
    except Exception as err:  # noqa: BLE001 - what was measured before it is kept
        result.update(status="failed", error=_error(err), traceback=traceback.format_exc()[-3000:])
        save()
        _say(f"stopped by {_error(err)}; what was measured before is in {out}")
        return 2
    result["status"] = "ok"
    save()
    failed = [c["check"] for c in result["checks"] if not c["pass"]]
    _say(f"{len(checks) - len(failed)} of {len(checks)} checks passed" + (f"; failed: {failed}" if failed else "")
         + f"; {result['elapsed_s']:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
