"""Which sources a meter uses: the ones asked for by name, or an automatic choice with said fallbacks.

Everything here is read from each source's :class:`~greenmeter.sources.base.SourceInfo`: a source gets only
the meter options it declares, and the automatic choice takes every ``"usable"`` source that is usable
here, then each ``"stand-in"`` source for its hardware where nothing chosen before reports that hardware
in its total (with the stand-in's note). With the built-ins: RAPL and NVML where usable, the CPU estimate
where RAPL is not, and the RAM estimate where there is no RAPL DRAM counter.

An automatic counter that is unusable although its hardware is here says so in its probe's notes, in words
that contain :data:`NOT_INCLUDED_MARK` (NVML: ``"GPU energy NOT included: <reason>"``); those notes join the
fallback notes, so every measurement says that this hardware's energy is missing.

A measured domain may include other hardware than its kind's (:attr:`~greenmeter.sources.base.Domain.includes`:
NVML's whole-module counter of a Grace Hopper module includes its Grace CPU and LPDDR5X memory). The domains of
that hardware from the other sources chosen (the CPU and RAM estimates) are then kept in the record but out of the
total, marked "inside the module counter ..., not added" (:func:`nest_in_modules`), and a stand-in chosen for that
hardware says no fallback note: its hardware is measured, inside the module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from greenmeter._errors import BackendUnavailable, ConfigError
from greenmeter.sources.base import METER_OPTIONS, Backend, Domain, ProbeResult, SourceInfo, hardware_of
from greenmeter.sources.registry import create_backend, source_info, source_names

__all__ = [
    "NOT_INCLUDED_MARK", "create_configured", "describe_choice", "nest_in_modules", "probe_sources", "select_backends",
    "unmeasured_notes",
]

#: In a note of an unusable counter's probe: its hardware is here but its energy is not measured.
NOT_INCLUDED_MARK = " energy NOT included: "


def create_configured(name: str, **options: object) -> Backend:
    """Create the source called ``name``, passing it only the meter options it declares.

    Args:
        name: a registered source's name.
        **options: meter options (:data:`~greenmeter.sources.base.METER_OPTIONS`: ``mode``,
            ``sysfs_root``, ``use_psys``, ``gpus``); each reaches the source under its own keyword
            (NVML's ``devices`` for ``gpus``), and only if the source declares it.

    Raises:
        ConfigError: an unknown source name or meter option (the message lists the known ones).
    """
    unknown = sorted(set(options) - set(METER_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown meter option(s) {', '.join(unknown)}; choose from {', '.join(METER_OPTIONS)}")
    info = source_info(name)
    return create_backend(name, **{kw: options[opt] for opt, kw in info.options.items() if opt in options})


def probe_sources(**options: object) -> list[tuple[Backend, ProbeResult]]:
    """Probe every registered source and return each with its probe result (for ``greenmeter info``).

    Nothing is started; unusable sources are returned too, with the reason and the fix. ``options`` are
    meter options, as for :func:`create_configured`.
    """
    return [(backend, backend.probe()) for backend in (create_configured(n, **options) for n in source_names())]


def select_backends(
    requested: Sequence[str | Backend] | None, **options: object,
) -> tuple[list[Backend], list[ProbeResult], tuple[str, ...]]:
    """Choose and probe the sources; returns ``(usable backends, every probe, fallback notes)``.

    Named sources must all be usable (``BackendUnavailable`` otherwise, with the reason). With
    ``requested=None`` the automatic choice of the module docstring; each fallback is a note in words.
    Either way, domains inside a measured whole-module domain are kept out of the total (:func:`nest_in_modules`),
    with a note. ``options`` are meter options, as for :func:`create_configured`.
    """
    if requested is not None:
        chosen: list[Backend] = []
        probes: list[ProbeResult] = []
        for spec in requested:
            backend = spec if isinstance(spec, Backend) else create_configured(spec, **options)
            result = backend.probe()
            probes.append(result)
            if not result.available:
                raise BackendUnavailable(f"energy source {result.backend!r} is unusable here: {result.reason}")
            chosen.append(backend)
        probes, nested = nest_in_modules(probes)
        return chosen, probes, tuple(nested)
    infos = [source_info(name) for name in source_names()]
    counters = [info for info in infos if info.selection == "usable"]
    probed = [(b, b.probe()) for b in (create_configured(info.name, **options) for info in counters)]
    notes = unmeasured_notes(p for _, p in probed)
    for stand_in in (info for info in infos if info.selection == "stand-in"):
        hardware = stand_in.hardware
        if any(_reports(probe, hardware) for _, probe in probed):
            continue
        if not any(_modules(probe, hardware) for _, probe in probed):  # else measured, inside a module counter
            notes.append(_fallback_note(stand_in, [(info, p) for info, (_, p) in zip(counters, probed)]))
        backend = create_configured(stand_in.name, **options)
        probed.append((backend, backend.probe()))
    probes, nested = nest_in_modules([p for _, p in probed])
    return [b for b, p in probed if p.available], probes, (*notes, *nested)


def nest_in_modules(probes: Sequence[ProbeResult]) -> tuple[list[ProbeResult], list[str]]:
    """Keep out of the total the domains whose hardware a measured whole-module domain already includes.

    A usable probe's measured domain in the total with :attr:`~greenmeter.sources.base.Domain.includes` (NVML's
    counter of a Grace Hopper module includes ``("cpu", "ram")``) takes in every other domain of that hardware
    that would count towards the total: each is kept, with ``in_total=False`` and ``"; inside the module counter
    <key>, not added"`` at the end of its provenance's method, so the record still shows it.

    Args:
        probes: the probe results of the sources chosen (unusable ones pass through unchanged).

    Returns:
        The probe results with those domains changed, and one note per module domain naming what it took in
        (none when there is no module domain).
    """
    modules = [d for p in probes if p.available for d in p.domains if _is_module(d)]
    if not modules:
        return list(probes), []
    inside: dict[str, list[str]] = {d.key: [] for d in modules}
    result = []
    for probe in probes:
        domains: list[Domain] = []
        for d in probe.domains:
            owners = [m.key for m in modules if hardware_of(d.kind) in m.includes and m.key != d.key]
            if probe.available and owners and d.in_total and not d.includes:
                method = f"{d.provenance.method}; inside the module counter {', '.join(owners)}, not added"
                d = replace(d, in_total=False, provenance=replace(d.provenance, method=method))
                for key in owners:
                    inside[key].append(d.key)
            domains.append(d)
        result.append(replace(probe, domains=tuple(domains)))
    notes = [f"{m.key} measures a whole module ({m.provenance.method}), which includes "
             f"{' and '.join(h.upper() for h in m.includes)}: "
             + (f"{', '.join(inside[m.key])} lie inside it and are kept out of the total (shown, not added), so "
                "nothing is counted twice" if inside[m.key] else "no other source's domain lies inside it")
             for m in modules]
    return result, notes


def unmeasured_notes(probes: Iterable[ProbeResult]) -> list[str]:
    """The notes of unusable probes that say their hardware is here but not measured (:data:`NOT_INCLUDED_MARK`)."""
    return [note for p in probes if not p.available for note in p.notes if NOT_INCLUDED_MARK in note]


def describe_choice(results: Iterable[tuple[Backend, ProbeResult]]) -> list[str]:
    """What the automatic choice will do with these probe results, one line per main hardware of a counter.

    For each hardware that an automatic counter mainly measures (CPU for RAPL, GPU for NVML): measured by
    which counters, measured inside which whole-module counters (a Grace Hopper module's NVML counter includes
    its CPU), or ESTIMATED by which stand-ins; a hardware with none gets no line. For ``info``.
    """
    found = [(source_info(probe.backend), probe) for _, probe in results]
    counters = [(info, probe) for info, probe in found if info.selection == "usable"]
    lines = []
    for hardware in dict.fromkeys(info.hardware for info, _ in counters):
        measured = [info.label for info, probe in counters if _reports(probe, hardware)]
        modules = [info.label for info, probe in counters if _modules(probe, hardware)]
        stand_ins = [info.name for info, _ in found if info.selection == "stand-in" and info.hardware == hardware]
        if measured:
            lines.append(f"{hardware.upper()} energy will be measured by {', '.join(measured)}.")
        elif modules:
            lines.append(f"{hardware.upper()} energy will be measured inside the whole-module counter of "
                         f"{', '.join(modules)}; the estimates ({', '.join(stand_ins) or 'none'}) are shown, not added.")
        elif stand_ins:
            labels = " or ".join(info.label for info, _ in counters if info.covers(hardware))
            lines.append(f"{hardware.upper()} energy will be ESTIMATED ({', '.join(stand_ins)}): no usable {labels} "
                         "counter; see 'why' above for the fix.")
    return lines


def _modules(probe: ProbeResult, hardware: str) -> bool:
    """Whether a usable source reports a measured domain in the total that includes ``hardware`` beside its own."""
    return probe.available and any(_is_module(d) and hardware in d.includes for d in probe.domains)


def _is_module(domain: Domain) -> bool:
    """Whether a domain is a measured whole-module domain in the total (it ``includes`` other hardware)."""
    return bool(domain.includes) and domain.in_total and domain.provenance.kind == "measured"


def _reports(probe: ProbeResult, hardware: str) -> bool:
    """Whether a usable source reports a domain of ``hardware`` that counts towards the total."""
    return probe.available and any(d.in_total and hardware_of(d.kind) == hardware for d in probe.domains)


def _fallback_note(stand_in: SourceInfo, counters: Sequence[tuple[SourceInfo, ProbeResult]]) -> str:
    """The stand-in's note, filled in with the counters that could have measured its hardware and why not."""
    hardware = stand_in.hardware
    able = [(info, probe) for info, probe in counters if info.covers(hardware)]
    reasons = [f"{info.label} is unusable ({probe.reason})" if not probe.available
               else f"{info.label} reports no {hardware.upper()} domain in its total" for info, probe in able]
    return stand_in.fallback_note.format(
        hardware=hardware.upper(), name=stand_in.name,
        counters=" or ".join(info.label for info, _ in able) or "hardware",
        reasons="; ".join(reasons) or f"no source for {hardware.upper()} energy counters is installed",
    )
