"""An estimate of CPU energy from CPU time and a linear power model, for machines without RAPL.

The model (Cloud Carbon Footprint's, after Etsy's Cloud Jewels): one logical CPU (vCPU) draws
``P = P_idle + u * (P_max - P_idle)`` at utilisation ``u``. Utilisation comes from CPU-time counters,
read without blocking, so cumulative energy at a read is:

- ``mode="process"`` (default): ``E = t_cpu * P_max_vcpu``, where ``t_cpu`` is the user + system time of
  this process and of its children that have been waited for (``os.times``), plus that of its live
  descendants (DataLoader workers, pool processes, subprocesses: :mod:`greenmeter.sources.process_tree`),
  since the backend was made.
  While the process runs on a vCPU that vCPU is busy, so the process is charged a busy vCPU's power; the
  idle power of the rest of the machine is not the process's doing and is not counted. So in this mode
  *the estimated energy is CPU time times a modelled power*.
- ``mode="machine"``: ``E = n * P_idle_vcpu * dt + t_busy * (P_max_vcpu - P_idle_vcpu)``, with ``t_busy``
  the busy time of all ``n`` logical CPUs (``psutil.cpu_times``: user, nice, system, irq, softirq; not
  idle, iowait or steal) and ``dt`` the wall time.

Per-vCPU powers come, in this order of preference, from the user (``p_idle_w``/``p_max_w``, whole-machine
watts), from CodeCarbon's TDP table when the model name matches exactly (see :mod:`cpu_model`), or from
Cloud Carbon Footprint's SPECpower-derived per-vCPU coefficients. Every constant and its source goes into
the domain's :class:`Provenance`.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError, CounterReadError
from greenmeter.sources.band import BandModel
from greenmeter.sources.base import AnomalyLog, Backend, Domain, ProbeResult, Provenance, Reading, SourceInfo
from greenmeter.sources.cpu_model import CpuFacts, is_generic_model_name, lookup_tdp, read_cpu_facts
from greenmeter.sources.process_tree import snapshot

if TYPE_CHECKING:
    from greenmeter.calibration.profile import CalibrationProfile

__all__ = [
    "CCF_COEFFICIENTS",
    "IDLE_FRACTION_OF_TDP",
    "CpuEstimateBackend",
    "PowerModel",
    "build_power_model",
    "machine_busy_s",
    "process_cpu_s",
]

_CCF_METHODOLOGY = (
    "Cloud Carbon Footprint methodology, Compute and Appendix I "
    "(https://www.cloudcarbonfootprint.org/docs/methodology/, Thoughtworks, read 2026): "
    "per-vCPU watts at 0% and 100% utilisation from SPECpower_ssj2008 results"
)
_CCF_PROCESSORS = (
    "Cloud Carbon Footprint packages/core/src/compute/ComputeProcessorTypes.ts "
    "(github.com/cloud-carbon-footprint/cloud-carbon-footprint, Thoughtworks 2021-2023): "
    "min_watts_avg/max_watts_avg per vCPU, from SPECpower_ssj2008 via ccf-coefficients"
)

#: Cloud Carbon Footprint per-vCPU coefficients: key -> (min W per vCPU, max W per vCPU, source).
CCF_COEFFICIENTS: dict[str, tuple[float, float, str]] = {
    "ccf-aws-average": (0.74, 3.5, f"AWS average over all micro-architectures; {_CCF_METHODOLOGY}"),
    "ccf-amd-epyc-1st-gen": (0.82, 2.55, f"AMD EPYC 1st Gen (Naples); {_CCF_PROCESSORS}"),
    "ccf-amd-epyc-2nd-gen": (0.47, 1.69, f"AMD EPYC 2nd Gen (Rome); {_CCF_PROCESSORS}"),
    "ccf-amd-epyc-3rd-gen": (0.45, 2.02, f"AMD EPYC 3rd Gen (Milan); {_CCF_PROCESSORS}"),
}
_EPYC_GENS = ("ccf-amd-epyc-1st-gen", "ccf-amd-epyc-2nd-gen", "ccf-amd-epyc-3rd-gen")
CCF_COEFFICIENTS["ccf-amd-epyc-average"] = (
    sum(CCF_COEFFICIENTS[k][0] for k in _EPYC_GENS) / len(_EPYC_GENS),
    sum(CCF_COEFFICIENTS[k][1] for k in _EPYC_GENS) / len(_EPYC_GENS),
    f"mean of Cloud Carbon Footprint's AMD EPYC 1st, 2nd and 3rd Gen coefficients; {_CCF_PROCESSORS}",
)
# EPYC 7xx1 = Naples, 7xx2 = Rome, 7xx3 = Milan (AMD's model numbering; the last digit is the generation).
_EPYC_7000 = re.compile(r"\bEPYC\s+7\w\w([123])\b", re.IGNORECASE)

_CCF_AWS_CONSTANTS = (
    "Cloud Carbon Footprint AWS_CLOUD_CONSTANTS MIN_WATTS_BY_COMPUTE_PROCESSOR and MAX_WATTS_BY_COMPUTE_PROCESSOR "
    "(CPUs; github.com/cloud-carbon-footprint/cloud-carbon-footprint, Thoughtworks, read 2026)"
)
#: Cloud Carbon Footprint's per-vCPU (min W, max W) for each CPU micro-architecture it knows: the range a vCPU
#: whose chip is unknown could draw, for the band of :data:`CCF_COEFFICIENTS` ``"ccf-aws-average"``.
CCF_MICROARCHITECTURES: dict[str, tuple[float, float]] = {
    "Cascade Lake": (0.64, 3.97), "Skylake": (0.65, 4.26), "Broadwell": (0.71, 3.69), "Haswell": (1.0, 4.74),
    "Coffee Lake": (1.14, 5.42), "Sandy Bridge": (2.17, 8.58), "Ivy Bridge": (3.04, 8.25),
    "AMD EPYC 1st Gen": (0.82, 2.55), "AMD EPYC 2nd Gen": (0.47, 1.69), "AMD EPYC 3rd Gen": (0.45, 2.02),
    "AWS Graviton2": (0.47, 1.69),
}

#: Assumed spread of one micro-architecture's per-vCPU powers around Cloud Carbon Footprint's average for it:
#: its SKUs differ in watts per core and CCF publishes only the mean. An assumption, said so in every band.
SKU_SPREAD = (0.75, 1.25)
#: Assumed range of a busy vCPU's power as a fraction of its TDP share (a sustained all-core load may stay
#: below the TDP, turbo may run a little above it), and of idle power as a fraction of TDP: assumptions.
TDP_MAX_RANGE = (0.6, 1.1)
TDP_IDLE_RANGE = (0.05, 0.3)

#: Idle power as a fraction of the TDP-derived maximum: CodeCarbon's floor for its CPU-load model.
IDLE_FRACTION_OF_TDP = 0.1
_IDLE_FRACTION_SOURCE = (
    "CodeCarbon 3.3.2 codecarbon/external/hardware.py, CPU._calculate_power_from_cpu_load "
    "('Minimum power consumption is 10% of TDP'; machine cpu_load model 0.1 + 0.9 * load**3)"
)

_KEY = "cpu-estimate:cpu"
#: CPU-time counters a process-mode window reads at each edge (``os.times``: user, system and the children's),
#: and the busy-time fields per logical CPU in machine mode (user, nice, system, irq, softirq).
_PROCESS_COUNTERS = 4
_MACHINE_FIELDS = 5
_SOURCE = "CPU power model (cpu-estimate)"
_METHODS = {
    "process": (
        "linear CPU-utilisation model over process CPU time (os.times: user + system of this process "
        "and its waited-for children) plus its live descendants' (psutil), charged at a busy vCPU's modelled power"
    ),
    "machine": (
        "linear CPU-utilisation model over machine busy CPU time (psutil.cpu_times: user, nice, system, "
        "irq, softirq) plus idle power of every logical CPU"
    ),
}


@dataclass(frozen=True)
class PowerModel:
    """Per-vCPU powers of the linear model and where they came from.

    Attributes:
        p_idle_w_per_vcpu: power of one idle logical CPU, in watts.
        p_max_w_per_vcpu: power of one fully busy logical CPU, in watts.
        constants: every constant with units in its key and ``*_source`` entries.
        notes: fallbacks and caveats, one line each, for ``ProbeResult.notes``.
        candidates: the (idle, busy) per-vCPU watts this machine's CPU could have, for the band: one pair per
            micro-architecture it could be, or the corners of an assumed range; the chosen pair alone when the
            user gave both powers.
        range_source: where the candidates come from, one line.
    """

    p_idle_w_per_vcpu: float
    p_max_w_per_vcpu: float
    constants: Mapping[str, Any]
    notes: tuple[str, ...] = ()
    candidates: tuple[tuple[float, float], ...] = ()
    range_source: str = ""

    def band_factors(self, mode: str) -> tuple[float, float]:
        """The range of a window's true energy as factors of its estimate, over :attr:`candidates`.

        In process mode the estimate is proportional to the busy power; in machine mode it is a sum of an idle
        part and a busy-minus-idle part, each bounded by its own ratio (so the bound holds whatever the mix).
        """
        idle, busy = self.p_idle_w_per_vcpu, self.p_max_w_per_vcpu
        ratios: list[float] = [1.0]
        for c_idle, c_busy in self.candidates or ((idle, busy),):
            if mode == "process":
                ratios.append(c_busy / busy if busy > 0 else 1.0)
            else:
                ratios.append(c_idle / idle if idle > 0 else 1.0)
                ratios.append(max(0.0, c_busy - c_idle) / (busy - idle) if busy > idle else 1.0)
        return min(ratios), max(ratios)


def _check_watts(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number of watts >= 0, not {value!r}")
    return float(value)


def _ccf_choice(facts: CpuFacts) -> str:
    name = facts.model_name or ""
    if "EPYC" not in name.upper():
        return "ccf-aws-average"
    match = _EPYC_7000.search(name)
    return _EPYC_GENS[int(match.group(1)) - 1] if match else "ccf-amd-epyc-average"


def build_power_model(
    facts: CpuFacts, *, p_idle_w: float | None = None, p_max_w: float | None = None
) -> PowerModel:
    """Choose per-vCPU idle and maximum powers for this CPU, stating every constant and its source.

    Args:
        facts: what :func:`read_cpu_facts` found.
        p_idle_w: the user's idle power of the whole machine, in watts; spread evenly over its
            ``os.cpu_count()`` logical CPUs. Replaces the modelled idle power.
        p_max_w: the user's fully-busy power of the whole machine, in watts; spread likewise.

    Raises:
        ConfigError: an override is negative or not finite, or idle ends up above maximum.
    """
    p_idle_w = _check_watts("p_idle_w", p_idle_w)
    p_max_w = _check_watts("p_max_w", p_max_w)
    name = facts.model_name
    notes: list[str] = []
    constants: dict[str, Any] = {
        "cpu_model": name,
        "vendor_id": facts.vendor_id,
        "hypervisor": facts.hypervisor,
        "sockets": facts.sockets,
        "threads_per_socket": facts.threads_per_socket,
    }
    if not facts.readable:
        notes.append(f"{facts.error}; the CPU model is unknown, so generic per-vCPU coefficients are used")

    tdp = None
    if facts.hypervisor and is_generic_model_name(name):
        notes.append(
            f"virtual machine with the generic CPU model name {name!r}: the physical chip is unknown, "
            "so no TDP is looked up"
        )
    elif name:
        tdp = lookup_tdp(name)
        if tdp is None:
            notes.append(f"CPU model {name!r} is not in CodeCarbon's TDP table (exact match)")
    elif facts.readable:
        notes.append(f"{facts.cpuinfo_path} names no CPU model")
    chip_threads = facts.threads_per_socket or max(1, facts.logical_cpus // facts.sockets)
    use_tdp = tdp is not None
    guest_sees_whole_socket = facts.brand_cores is not None and chip_threads >= facts.brand_cores
    if tdp is not None and facts.hypervisor and not guest_sees_whole_socket:
        use_tdp = False
        notes.append(
            f"virtual machine: the guest sees {chip_threads} threads per socket, which need not be the "
            f"physical chip's, so its share of the {tdp.tdp_w:g} W TDP is unknown"
        )

    if use_tdp and tdp is not None:
        model_max = tdp.tdp_w / chip_threads
        model_idle = IDLE_FRACTION_OF_TDP * model_max
        constants.update(
            coefficients="codecarbon-tdp",
            coefficients_source=(
                "TDP x sockets x visible / (threads per socket x sockets), i.e. "
                f"TDP / {chip_threads} threads per vCPU; idle = 10% of that"
            ),
            tdp_w=tdp.tdp_w,
            tdp_source=tdp.describe(),
            idle_fraction_of_tdp=IDLE_FRACTION_OF_TDP,
            idle_fraction_source=_IDLE_FRACTION_SOURCE,
        )
        candidates = _corners((TDP_IDLE_RANGE[0] * tdp.tdp_w / chip_threads, TDP_IDLE_RANGE[1] * tdp.tdp_w / chip_threads),
                              (TDP_MAX_RANGE[0] * model_max, TDP_MAX_RANGE[1] * model_max))
        range_source = (f"assumed: a busy vCPU draws {TDP_MAX_RANGE[0]:g}-{TDP_MAX_RANGE[1]:g} x its TDP share, "
                        f"idle {TDP_IDLE_RANGE[0]:g}-{TDP_IDLE_RANGE[1]:g} x TDP per thread")
        idle_source = f"{IDLE_FRACTION_OF_TDP:g} x TDP / {chip_threads} threads per socket"
        notes.append(
            f"using the {tdp.tdp_w:g} W TDP of {tdp.table_name!r} from CodeCarbon's table, "
            f"{model_max:g} W per busy vCPU ({chip_threads} threads per socket)"
        )
        max_source = f"TDP {tdp.tdp_w:g} W / {chip_threads} threads per socket"
    else:
        key = _ccf_choice(facts)
        model_idle, model_max, source = CCF_COEFFICIENTS[key]
        constants.update(coefficients=key, coefficients_source=source, tdp_w=tdp.tdp_w if tdp else None)
        constants["tdp_source"] = tdp.describe() + " (not used)" if tdp else "no TDP used"
        idle_source = max_source = key
        candidates, range_source = _ccf_candidates(key, model_idle, model_max)
        if p_idle_w is None or p_max_w is None:
            notes.append(
                f"using Cloud Carbon Footprint per-vCPU coefficients {key!r} ({model_idle:g}-{model_max:g} W)"
            )

    divisor = facts.logical_cpus
    if p_idle_w is not None:
        model_idle = p_idle_w / divisor
        idle_source = f"user override p_idle_w={p_idle_w:g} W for the machine / {divisor} logical CPUs"
    if p_max_w is not None:
        model_max = p_max_w / divisor
        max_source = f"user override p_max_w={p_max_w:g} W for the machine / {divisor} logical CPUs"
    if p_idle_w is not None:
        candidates = tuple((model_idle, c_max) for _, c_max in candidates)
    if p_max_w is not None:
        candidates = tuple((c_idle, model_max) for c_idle, _ in candidates)
    if p_idle_w is not None or p_max_w is not None:
        range_source += "; the user's stated machine powers are taken as exact"
    if p_idle_w is not None and p_max_w is not None:
        range_source = "the user's stated machine powers, taken as exact"
        constants["coefficients"] = "user"
        notes.append(f"using the user's machine powers: idle {p_idle_w:g} W, maximum {p_max_w:g} W")
    if model_idle > model_max:
        raise ConfigError(
            f"idle power ({model_idle * divisor:g} W) exceeds maximum power ({model_max * divisor:g} W) "
            "for the machine; pass both p_idle_w and p_max_w"
        )
    constants.update(
        p_idle_w_per_vcpu=model_idle,
        p_max_w_per_vcpu=model_max,
        p_idle_source=idle_source,
        p_max_source=max_source,
    )
    candidates = tuple(dict.fromkeys(candidates))
    return PowerModel(model_idle, model_max, constants, tuple(notes), candidates, range_source)


def _corners(idle: tuple[float, float], busy: tuple[float, float]) -> tuple[tuple[float, float], ...]:
    return tuple((i, b) for i in idle for b in busy)


def _ccf_candidates(key: str, idle: float, busy: float) -> tuple[tuple[tuple[float, float], ...], str]:
    """The (idle, busy) per-vCPU watts a Cloud Carbon Footprint choice could stand for, and their source."""
    if key == "ccf-aws-average":
        return (tuple(CCF_MICROARCHITECTURES.values()),
                f"every CPU micro-architecture Cloud Carbon Footprint lists ({_CCF_AWS_CONSTANTS})")
    if key == "ccf-amd-epyc-average":
        return (tuple(CCF_COEFFICIENTS[k][:2] for k in _EPYC_GENS),
                "AMD EPYC 1st, 2nd and 3rd Gen (Cloud Carbon Footprint), the chips this name can be")
    lo, hi = SKU_SPREAD
    return (_corners((idle * lo, idle * hi), (busy * lo, busy * hi)),
            f"assumed {lo:g}-{hi:g} x Cloud Carbon Footprint's mean for this micro-architecture (SKUs differ)")


def _calibrated_model(model: PowerModel, profile: CalibrationProfile) -> PowerModel:
    """``model`` (built from the profile's machine powers) restated as the calibration's."""
    constants = {**model.constants, "coefficients": "calibration", "p_idle_source": profile.describe(),
                 "p_max_source": profile.describe(), **profile.constants()}
    note = (f"using this machine's calibration ({profile.describe()}): idle {profile.idle_w:.4g} W, "
            f"{profile.w_cpu:.4g} W per busy CPU, within +/-{profile.band_error:.1%} ({profile.band_basis()})")
    return replace(model, constants=constants, notes=(note,),
                   range_source=f"the calibration's {profile.band_basis()}, +/-{profile.band_error:.1%}")


def _busy_s(times: Any) -> float:
    """Busy seconds from a psutil ``scputimes`` (Linux folds guest time into user and nice)."""
    busy = times.user + times.system
    for field in ("nice", "irq", "softirq"):
        busy += getattr(times, field, 0.0)
    return float(busy)


def process_cpu_s() -> float:
    """CPU seconds of this process and its reaped children (``os.times()``: user + system of both)."""
    t = os.times()
    return t[0] + t[1] + t[2] + t[3]


def machine_busy_s() -> float | None:
    """Busy CPU seconds of every process on the machine (psutil's ``cpu_times``), or None if unreadable."""
    try:
        import psutil

        return _busy_s(psutil.cpu_times())
    except (ImportError, OSError, RuntimeError):
        return None


class CpuEstimateBackend(Backend):
    """Estimated CPU energy from CPU time and a linear power model (see the module docstring).

    Args:
        mode: ``"process"`` (this process and its waited-for children) or ``"machine"`` (all CPU work).
        cpuinfo_path: the cpuinfo file to read CPU facts from.
        p_idle_w: override of the whole machine's idle CPU power, in watts.
        p_max_w: override of the whole machine's fully-busy CPU power, in watts.
        profile: a :class:`~greenmeter.calibration.profile.CalibrationProfile` of this host (``greenmeter
            calibrate``): its coefficients replace the generic ones (per vCPU: idle ``idle_W / n``, busy
            ``idle_W / n + w_cpu``, so machine mode gives the fit's ``idle_W * dt + w_cpu * busy_s``); the provenance
            says "calibrated against <meter log>, R^2 = ..., n runs" and the band is the fit's held-out error.
            The Meter passes it as ``Meter(calibration=profile)``.

    Raises:
        ConfigError: an unknown mode or a bad override; a profile of another host, or with p_idle_w/p_max_w.
    """

    info = SourceInfo(
        name="cpu-estimate", kind="estimate", domains=("cpu",), options={"mode": "mode", "calibration": "profile"},
        selection="stand-in",
        fallback_note="{hardware} energy is estimated, not measured: {reasons}",
    )
    poll_interval_s = None

    def __init__(
        self,
        mode: str = "process",
        *,
        cpuinfo_path: str | os.PathLike[str] = "/proc/cpuinfo",
        p_idle_w: float | None = None,
        p_max_w: float | None = None,
        profile: CalibrationProfile | None = None,
    ) -> None:
        if mode not in _METHODS:
            raise ConfigError(f"cpu-estimate mode must be 'process' or 'machine', not {mode!r}")
        self.mode = mode
        self.facts = read_cpu_facts(cpuinfo_path)
        self.profile: CalibrationProfile | None = None
        if profile is not None:
            from greenmeter.calibration.profile import checked_profile  # the calibration stage, loaded when given one

            self.profile = checked_profile(profile, "cpu-estimate")
            if p_idle_w is not None or p_max_w is not None:
                raise ConfigError("cpu-estimate takes a calibration profile or p_idle_w/p_max_w, not both")
            n = self.facts.logical_cpus
            p_idle_w, p_max_w = self.profile.idle_w, self.profile.idle_w + n * self.profile.w_cpu
        self.power_model = build_power_model(self.facts, p_idle_w=p_idle_w, p_max_w=p_max_w)
        if self.profile is not None:
            self.power_model = _calibrated_model(self.power_model, self.profile)
        self.vcpus = self.facts.visible_cpus if mode == "process" else self.facts.logical_cpus
        self._p_idle = self.power_model.p_idle_w_per_vcpu
        self._p_max = self.power_model.p_max_w_per_vcpu
        try:
            ticks = os.sysconf("SC_CLK_TCK")
        except (AttributeError, ValueError, OSError):
            ticks = 100
        resolution_s = 1.0 / ticks
        constants = {
            "mode": mode,
            "vcpus": self.vcpus,
            **self.power_model.constants,
            "p_idle_w": self._p_idle * self.vcpus,
            "p_max_w": self._p_max * self.vcpus,
            "cpu_time_resolution_s": resolution_s,
        }
        source, method = _SOURCE, _METHODS[mode]
        if self.profile is not None:
            source = f"{_SOURCE}, {self.profile.describe()}"
            method += "; per-vCPU powers from the calibration: idle idle_W / n, busy idle_W / n + w_cpu"
        provenance = Provenance("estimated", source, method, constants)
        self.domain = Domain(_KEY, "cpu", True, provenance, resolution_s, self._band_model(resolution_s))
        self._unavailable = ""
        self._cpu_times: Any = None
        self._anomalies = AnomalyLog()
        self._tree_problem = ""
        if mode == "process":
            self._cpu0 = self._process_tree_cpu_s()
            self._t0 = time.monotonic()
        else:
            try:
                import psutil
            except ImportError as err:
                self._unavailable = f"machine mode needs psutil ({err}); install it with 'pip install psutil'"
                self._cpu0, self._t0 = 0.0, time.monotonic()
            else:
                self._cpu_times = psutil.cpu_times
                self._cpu0 = _busy_s(self._cpu_times())
                self._t0 = time.monotonic()

    def _band_model(self, tick_s: float) -> BandModel:
        """The band of this estimate: the spread of its power constants, and the CPU-time tick at each counter."""
        low, high = self.power_model.band_factors(self.mode)
        if self.profile is not None:  # the fit's own error: one model shared with the calibrated RAM estimate
            error = self.profile.band_error
            low, high = 1.0 - error, 1.0 + error
        if self.mode == "process":
            counters, watts = _PROCESS_COUNTERS, self._p_max  # os.times: user, system, children's user and system
            what = f"W per busy vCPU {self._p_max:.4g}"
        else:
            counters, watts = _MACHINE_FIELDS * self.vcpus, self._p_max - self._p_idle
            what = f"W per vCPU idle {self._p_idle:.4g}, busy {self._p_max:.4g}"
        model = f"cpu-estimate {self.mode} mode, {what} ({self.power_model.range_source})"
        if self.profile is not None:
            model = self.profile.band_model()
        basis = (f"CPU estimate: its constants could be {low:.3g}-{high:.3g} x those used ({self.power_model.range_source}); "
                 f"CPU time ticks at {tick_s * 1e3:g} ms on {counters} counters")
        return BandModel(model, low, high, fixed_j=counters * tick_s * watts, basis=basis)

    def probe(self) -> ProbeResult:
        """Available wherever the CPU time can be read; the notes say which constants were chosen and why."""
        if self._unavailable:
            return ProbeResult(self.name, False, reason=self._unavailable)
        notes = list(self.power_model.notes)
        if self.mode == "process":
            notes.append(
                "process mode counts this process, the children it has waited for and its live descendants "
                "(DataLoader workers, pool processes, subprocesses)"
            )
        return ProbeResult(self.name, True, domains=(self.domain,), notes=tuple(notes))

    def read(self) -> Reading:
        """Cumulative estimated joules since the backend was made. One ``os.times()`` call in process mode.

        Raises:
            CounterReadError: the machine's CPU times could not be read.
        """
        if self._cpu_times is None:
            if self._unavailable:
                raise CounterReadError(self._unavailable)
            cpu = self._process_tree_cpu_s()
            return Reading(time.monotonic(), {_KEY: (cpu - self._cpu0) * self._p_max})
        try:
            busy = _busy_s(self._cpu_times())
        except OSError as err:
            raise CounterReadError(f"cannot read machine CPU times: {err}") from err
        now = time.monotonic()
        idle_j = self.vcpus * self._p_idle * (now - self._t0)
        energy = idle_j + (busy - self._cpu0) * (self._p_max - self._p_idle)
        return Reading(now, {_KEY: energy})

    def _process_tree_cpu_s(self) -> float:
        """CPU seconds of this process, its waited-for children and its live descendants; a descendant that
        cannot be read is recorded as an anomaly, for the flags of the windows it falls in."""
        tree = snapshot(memory=False)
        problem = ""
        if tree.error is not None:
            problem = f"child processes are not counted in the CPU estimate: {tree.error}"
        elif tree.unreadable:
            problem = (f"{tree.unreadable} child process{'es' if tree.unreadable > 1 else ''} could not be read "
                       "(permissions): their CPU time is not counted in the CPU estimate")
        if problem and problem != self._tree_problem:
            self._anomalies.add(problem)
        self._tree_problem = problem
        return process_cpu_s() + tree.cpu_s

    def anomalies_since(self, t0: float) -> tuple[str, ...]:
        """Child processes that could not be counted since ``t0``, or at the last read (see
        :meth:`Backend.anomalies_since`)."""
        current = (self._tree_problem,) if self._tree_problem else ()
        return tuple(dict.fromkeys(self._anomalies.since(t0) + current))

    def follow(self, pid: int) -> None:
        """Check that ``pid`` is a live process that process mode will count (it counts every live descendant).

        Kept for ``greenmeter run`` and older callers: the command it starts is a child of this process, so its
        tree is counted with every other descendant, once.

        Raises:
            ConfigError: in machine mode (which counts every process already) or for a missing pid.
        """
        if self.mode != "process":
            raise ConfigError("follow() applies to process mode; machine mode already counts every process")
        import psutil

        if not psutil.pid_exists(pid):
            raise ConfigError(f"cannot follow process {pid}: it does not exist")

    def close(self) -> None:
        """Nothing to release."""
