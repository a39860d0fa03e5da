"""Synthetic stored runs and the wall meter's log of them, from known coefficients, noise and a clock offset.

The windows' CPU and RAM domains carry the provenance of the real backends (``CpuEstimateBackend("machine")``,
``RamEstimateBackend("process")``), and their energies follow those backends' formulas for a chosen activity, so
``activity_of`` inverts them as it would a real record. The meter's log samples the true wall power (the
coefficients applied to the activity, with idle power between the windows) on the meter's clock, which is
``offset_s`` behind this machine's.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

from greenmeter.metering.host import describe_host
from greenmeter.records.measurement import DomainEnergy, Measurement
from greenmeter.sources.cpu_estimate import CpuEstimateBackend
from greenmeter.sources.ram_estimate import RamEstimateBackend
from greenmeter.store.database import Store

#: The true coefficients: idle W, W per busy CPU, W per GB.
TRUE = (85.0, 11.0, 3.0)
T0 = 1_796_000_000.0  # 2026-11-30, UTC epoch seconds


@dataclass(frozen=True)
class Load:
    start_s: float
    duration_s: float
    busy_cpus: float  # mean busy CPUs over the window
    gb: float  # GB of memory held
    gap_s: float = 0.0


def loads(count: int, seed: int = 1, *, start: float = T0 + 60.0) -> list[Load]:
    """``count`` windows, back to back with short idle gaps, at varied CPU and memory loads."""
    rng = random.Random(seed)
    out, t = [], start
    for i in range(count):
        duration = rng.uniform(40.0, 90.0)
        busy = [0.0, 1.0, 2.0, 0.5, 1.5][i % 5] + rng.uniform(0, 0.3)
        gb = [0.2, 0.3, 0.2, 2.5, 1.2][(i * 3) % 5] + rng.uniform(0, 0.2)
        out.append(Load(t, duration, busy, gb))
        t += duration + rng.uniform(3.0, 10.0)
    return out


def window(load: Load, name: str = "work") -> Measurement:
    """A stored window of this load, its domains as the real estimate backends would have written them."""
    cpu = CpuEstimateBackend("machine").domain
    ram = RamEstimateBackend("process").domain
    c = cpu.provenance.constants
    cpu_j = (c["vcpus"] * c["p_idle_w_per_vcpu"] * load.duration_s
             + load.busy_cpus * load.duration_s * (c["p_max_w_per_vcpu"] - c["p_idle_w_per_vcpu"]))
    ram_j = load.gb * load.duration_s * ram.provenance.constants["w_per_gb"]
    domains = (DomainEnergy(cpu.key, "cpu", cpu_j, True, cpu.provenance),
               DomainEnergy(ram.key, "ram", ram_j, True, ram.provenance))
    started = dt.datetime.fromtimestamp(load.start_s, dt.timezone.utc).isoformat()
    return Measurement(name=name, status="ok", started_at=started, duration_s=load.duration_s,
                       energy_j=cpu_j + ram_j, domains=domains, host=describe_host(),
                       backends=("cpu-estimate", "ram-estimate"))


def store_runs(store: Store, items: list[Load]) -> list[str]:
    """Each load as a stored run of one window; returns the run ids."""
    ids = []
    for i, load in enumerate(items):
        run_id = store.start_run(name=f"synthetic {i}", kind="api", host=describe_host())
        m = window(load, f"window {i}")
        store.add_window(run_id, m)
        store.finish_run(run_id, status="ok", measurement=m)
        ids.append(run_id)
    return ids


def true_power(t: float, items: list[Load], coefficients: tuple[float, float, float] = TRUE) -> float:
    """The wall power at machine time ``t``: idle plus the load of the window running then."""
    idle, w_cpu, w_gb = coefficients
    for load in items:
        if load.start_s <= t < load.start_s + load.duration_s:
            return idle + w_cpu * load.busy_cpus + w_gb * load.gb
    return idle  # between windows: idle (no window is fitted there)


def true_energy(load: Load, coefficients: tuple[float, float, float] = TRUE) -> float:
    idle, w_cpu, w_gb = coefficients
    return (idle + w_cpu * load.busy_cpus + w_gb * load.gb) * load.duration_s


def meter_samples(items: list[Load], *, offset_s: float, interval_s: float = 1.0, noise: float = 0.01,
                  seed: int = 2, margin_s: float = 200.0) -> list[tuple[float, float]]:
    """``(meter time, watts)`` every ``interval_s`` from before the first window to after the last; the meter's
    clock reads ``offset_s`` behind this machine's (machine time = meter time + offset)."""
    rng = random.Random(seed)
    first = items[0].start_s - margin_s
    last = items[-1].start_s + items[-1].duration_s + margin_s
    out, k = [], 0
    while first + k * interval_s <= last:
        meter_t = first + k * interval_s - offset_s
        watts = true_power(meter_t + offset_s, items) * (1 + rng.gauss(0, noise))
        out.append((meter_t, round(watts, 2)))
        k += 1
    return out


def write_csv(path: Path, samples: list[tuple[float, float]], *, iso: bool = True) -> Path:
    lines = ["timestamp,power_w"] if iso else []
    for t, w in samples:
        stamp = dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat() if iso else f"{t:.3f}"
        lines.append(f"{stamp},{w}")
    path.write_text("\n".join(lines) + "\n")
    return path
