"""GPU truth check: NVML's energy counter against integrated power on real hardware, and the issue-19 checks.

On the first CUDA GPU (``cuda:0``, matched to NVML by UUID) it records, under two loads (idle, a bf16 matmul
loop), a trace of NVML's total-energy counter, ``nvmlDeviceGetPowerUsage`` and the instantaneous power field
(``NVML_FI_DEV_POWER_INSTANT``, where the GPU answers it), sampled every few milliseconds. From each trace:

- how often the counter really refreshes (the intervals between its steps);
- for windows of 0.05 to 10 s cut from the trace: the counter's energy and each integrated power reading
  against the trace's mean power x the window's length (the reference: the load is held steady, and over the
  whole trace the counter's lag is under 1%), as median and largest errors, and how often the counter's error
  stays inside the bound greenmeter states (update period x power / duration);
- on long windows, the counter against the integrated power samples on the same window.

Then greenmeter's own behaviour on this GPU (issue 19), one PASS/FAIL line each: a 150 ms window is flagged with
its bound and its band holds the reference; window edges synchronise every device with a CUDA context and create
none; every CUDA device maps to the NVML device with its UUID; another process on the GPU is flagged (or,
where NVML cannot see it, said to be unknown); a GPU that cannot be opened gives "GPU energy NOT included".
On a Grace module (GH200, GB200) one line says what greenmeter's NVML domain reads there: the whole module (GPU +
Grace CPU + LPDDR5X, the CPU and RAM estimates then kept out of the total) or the GPU alone; the traces above are
of the scopeless total energy counter, which on GH200 counts the whole module.

It needs torch (with CUDA) and nvidia-ml-py; without a GPU it says so and exits 0. Expected to take about two
minutes (five at most: a foreign process that NVML never lists costs a 60 s wait); not yet run on a GPU.

    python benchmarks/gpu_truth.py --out gpu_truth.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WINDOWS_S = (0.05, 0.1, 0.15, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
TRACE_S = 12.0
WARMUP_S = 2.0
SAMPLE_S = 0.004
_CHILD = ("import sys, time, torch\n"
          "x = torch.zeros(1, device='cuda')\n"
          "print('ready', flush=True)\n"
          "time.sleep(float(sys.argv[1]))\n")


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


def _trace(nvml: Any, handle: Any, seconds: float, load: Any = None) -> list[tuple[float, int, int, float | None]]:
    """(monotonic s, counter mJ, power mW, instant mW or None) every ~SAMPLE_S while ``load()`` runs (or idle)."""
    samples: list[tuple[float, int, int, float | None]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            t = time.monotonic()
            samples.append((t, int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)),
                            int(nvml.nvmlDeviceGetPowerUsage(handle)), _instant_mw(nvml, handle)))
            time.sleep(SAMPLE_S)

    if load is not None:  # reach a steady state first
        end = time.monotonic() + WARMUP_S
        while time.monotonic() < end:
            load()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if load is None:
            time.sleep(0.05)
        else:
            load()
    stop.set()
    thread.join()
    return samples


def _trapezoid(ts: list[float], ws: list[float]) -> float:
    return sum(0.5 * (ws[k] + ws[k + 1]) * (ts[k + 1] - ts[k]) for k in range(len(ts) - 1))


def _analyse(samples: list[tuple[float, int, int, float | None]]) -> dict[str, Any]:
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


def _check(checks: list[dict[str, Any]], name: str, passed: bool, detail: str) -> None:
    checks.append({"check": name, "pass": bool(passed), "detail": detail})
    _say(f"{'PASS' if passed else 'FAIL'} {name}: {detail}")


def _checks(torch: Any, matmul: Any, ref_w: float) -> list[dict[str, Any]]:
    from greenmeter.metering.meter import Meter
    from greenmeter.sources.nvml import NvmlBackend

    checks: list[dict[str, Any]] = []
    count = torch.cuda.device_count()

    # UUID mapping: every CUDA device is the NVML device with its UUID
    backend = NvmlBackend()
    result = backend.probe()
    backend.close()
    want = [str(torch.cuda.get_device_properties(i).uuid) for i in range(count)]
    got = [d.provenance.source.rsplit("(", 1)[-1].rstrip(")") for d in result.domains]
    same = len(got) == count and all(g.upper().endswith(w.upper()) for g, w in zip(got, want))
    _check(checks, "uuid mapping", result.available and same, f"CUDA {want} -> NVML {got}; notes {list(result.notes)}")

    # a 150 ms window is flagged with its bound, and its band holds the reference
    meter = Meter(backends=[NvmlBackend(devices=[0])])
    for _ in range(3):
        matmul()
    with meter.window("short") as w:
        end = time.monotonic() + 0.15
        while time.monotonic() < end:
            matmul()
    meter.close()
    m = w.measurement
    flagged = [f for f in m.flags if "between NVML reads" in f]
    (domain,) = m.domains
    truth = ref_w * m.duration_s
    holds = domain.band is not None and domain.band.low_j <= truth <= domain.band.high_j
    _check(checks, "short-window flag", bool(flagged) and holds,
           f"{m.duration_s * 1e3:.0f} ms, {domain.energy_j:.1f} J read, reference {truth:.1f} J, "
           f"band {domain.band.describe() if domain.band else None}; flag: {flagged}")

    # window edges synchronise every device with a context, and create none
    has_context = getattr(torch._C, "_cuda_hasPrimaryContext", None)
    before = [bool(has_context(i)) for i in range(count)] if has_context else []
    synced: list[Any] = []
    real_sync = torch.cuda.synchronize

    def recording_sync(device: Any = None) -> None:
        synced.append(device)
        real_sync(device)

    torch.cuda.synchronize = recording_sync
    try:
        meter = Meter(backends=[NvmlBackend()])
        with meter.window("sync") as w:
            a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(200):
                a = (a @ a).clamp_(-1, 1)
            stop.record()
        meter.close()
    finally:
        torch.cuda.synchronize = real_sync
    gpu_s = start.elapsed_time(stop) / 1e3
    after = [bool(has_context(i)) for i in range(count)] if has_context else []
    expected = [i for i, c in enumerate(before) if c] or [0]
    waited = w.measurement.duration_s >= 0.95 * gpu_s
    _check(checks, "sync of every device", sorted(set(synced)) == expected and before == after and waited,
           f"synchronize calls {synced}, devices with a context before {before} after {after}; window "
           f"{w.measurement.duration_s:.3f} s for {gpu_s:.3f} s of queued GPU work")

    # another process on the GPU: flagged, or said to be unknown where NVML cannot see it
    # started by a shell that exits at once, so it is not a descendant of this process (those are not "others")
    shell = f"{shlex.quote(sys.executable)} -c {shlex.quote(_CHILD)} 90 >/dev/null 2>&1 & echo $!"
    launcher = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, timeout=30)
    pid = int(launcher.stdout.split()[0])
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        deadline, seen = time.monotonic() + 60, False
        while time.monotonic() < deadline and not seen:
            seen = pid in {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
            time.sleep(0.5)
        listed = [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        pynvml.nvmlShutdown()
        meter = Meter(backends=[NvmlBackend(devices=[0])])
        with meter.window("foreign"):
            time.sleep(1.2)
        meter.close()
        flags = [f for f in meter.measurements[-1].flags if "other" in f and "process" in f]
        named = any(str(pid) in f for f in flags)
        unknown = any("unknown" in f for f in flags)
        _check(checks, "foreign process flag", named or (unknown and not seen),
               f"pid {pid} listed by NVML: {seen} (NVML lists {listed}); flags {flags}")
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass

    # a GPU that cannot be opened: "GPU energy NOT included" (a MIG UUID that does not exist)
    code = ("import time, greenmeter\nfrom greenmeter.metering.meter import Meter\nm = Meter(sync=None)\n"
            "with m.window('w') as w: time.sleep(0.01)\nprint([f for f in w.measurement.flags if 'NOT included' in f])")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "MIG-00000000-0000-0000-0000-000000000000",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    _check(checks, "not-included flag", "GPU energy NOT included" in run.stdout,
           (run.stdout.strip() or run.stderr.strip()[-500:]))
    return checks


def _read_cost_us() -> dict[str, float]:
    from greenmeter.sources.nvml import NvmlBackend

    backend = NvmlBackend(devices=[0])
    backend.probe()
    try:
        start = time.perf_counter()
        for _ in range(200):
            backend.read()
        return {"greenmeter_read_us": (time.perf_counter() - start) / 200 * 1e6}
    finally:
        backend.close()


def _grace_module() -> str | None:
    """What greenmeter's NVML domain of ``cuda:0`` reads on a Grace module (GH200, GB200), or ``None`` elsewhere."""
    from greenmeter.sources.nvml import NvmlBackend

    backend = NvmlBackend(devices=[0])
    probe = backend.probe()
    try:
        if not probe.available or "module" not in probe.domains[0].provenance.method:
            return None
        domain = probe.domains[0]
        kept_out = "; the CPU and RAM estimates are kept out of the total" if domain.includes else ""
        return f"{domain.key} is on a Grace module: {domain.provenance.method}{kept_out}"
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where to write the results as JSON")
    args = parser.parse_args(argv)
    out = Path(args.out)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    nvml, torch, why = _gpu_or_reason()
    if nvml is None:
        _say(f"no GPU: {why}; nothing measured (this check needs an NVIDIA GPU, torch with CUDA and nvidia-ml-py)")
        out.write_text(json.dumps({"status": "skipped", "reason": why, "date": stamp}, indent=2))
        return 0
    nvml.nvmlInit()
    try:
        uuid = str(torch.cuda.get_device_properties(0).uuid)
        handle = None
        for candidate in (uuid, f"GPU-{uuid}", f"MIG-{uuid}"):
            try:
                handle = nvml.nvmlDeviceGetHandleByUUID(candidate)
                break
            except nvml.NVMLError:
                continue
        if handle is None:
            handle = nvml.nvmlDeviceGetHandleByIndex(0)
        name, driver = (v.decode() if isinstance(v, bytes) else str(v)
                        for v in (nvml.nvmlDeviceGetName(handle), nvml.nvmlSystemGetDriverVersion()))
        a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)

        def matmul() -> None:
            for _ in range(4):
                torch.mm(a, b)
            torch.cuda.synchronize(0)

        _say(f"GPU: {name}, driver {driver}, torch {torch.__version__}, CUDA {torch.version.cuda}")
        module = _grace_module()
        if module is not None:
            _say(f"GH200/Grace module: {module} (verified before only against the fake pynvml)")
        loads: dict[str, Any] = {}
        for label, load in (("idle", None), ("matmul", matmul)):
            _say(f"tracing {label} for {TRACE_S:g} s ...")
            loads[label] = _analyse(_trace(nvml, handle, TRACE_S, load))
            stats = loads[label]
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
    finally:
        nvml.nvmlShutdown()
    checks = _checks(torch, matmul, loads["matmul"]["mean_power_w"])
    cost = _read_cost_us()
    _say(f"greenmeter NvmlBackend.read(): {cost['greenmeter_read_us']:.0f} us (counter and process list)")
    out.write_text(json.dumps({
        "status": "ok", "date": stamp, "gpu": name, "driver": driver, "torch": torch.__version__,
        "cuda": torch.version.cuda, "grace_module": module, "loads": loads, "checks": checks, "read_cost": cost,
    }, indent=2))
    failed = [c["check"] for c in checks if not c["pass"]]
    _say(f"{len(checks) - len(failed)} of {len(checks)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
