"""Which sources a meter uses: the ones asked for by name, or an automatic choice with said fallbacks.

Everything here is read from each source's :class:`~greenmeter.sources.base.SourceInfo`: a source gets only
the meter options it declares, and the automatic choice takes every ``"usable"`` source that is usable
here, then each ``"stand-in"`` source for its hardware where nothing chosen before reports that hardware
in its total (with the stand-in's note). With the built-ins: RAPL and NVML where usable, the CPU estimate
where RAPL is not, and the RAM estimate where there is no RAPL DRAM counter.

An automatic counter that is unusable although its hardware is here says so in its probe's notes, in words
that contain :data:`NOT_INCLUDED_MARK` (NVML: ``"GPU energy NOT included: <reason>"``); those notes join the
fallback notes, so every measurement says that this hardware's energy is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from greenmeter._errors import BackendUnavailable, ConfigError
from greenmeter.sources.base import METER_OPTIONS, Backend, ProbeResult, SourceInfo, hardware_of
from greenmeter.sources.registry import create_backend, source_info, source_names

__all__ = [
    "NOT_INCLUDED_MARK", "create_configured", "describe_choice", "probe_sources", "select_backends", "unmeasured_notes",
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
    ``options`` are meter options, as for :func:`create_configured`.
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
        return chosen, probes, ()
    infos = [source_info(name) for name in source_names()]
    counters = [info for info in infos if info.selection == "usable"]
    probed = [(b, b.probe()) for b in (create_configured(info.name, **options) for info in counters)]
    notes = unmeasured_notes(p for _, p in probed)
    for stand_in in (info for info in infos if info.selection == "stand-in"):
        hardware = stand_in.hardware
        if any(_reports(probe, hardware) for _, probe in probed):
            continue
        notes.append(_fallback_note(stand_in, [(info, p) for info, (_, p) in zip(counters, probed)]))
        backend = create_configured(stand_in.name, **options)
        probed.append((backend, backend.probe()))
    return [b for b, p in probed if p.available], [p for _, p in probed], tuple(notes)


def unmeasured_notes(probes: Iterable[ProbeResult]) -> list[str]:
    """The notes of unusable probes that say their hardware is here but not measured (:data:`NOT_INCLUDED_MARK`)."""
    return [note for p in probes if not p.available for note in p.notes if NOT_INCLUDED_MARK in note]


def describe_choice(results: Iterable[tuple[Backend, ProbeResult]]) -> list[str]:
    """What the automatic choice will do with these probe results, one line per main hardware of a counter.

    For each hardware that an automatic counter mainly measures (CPU for RAPL, GPU for NVML): measured by
    which counters, or ESTIMATED by which stand-ins; a hardware with neither gets no line. For ``info``.
    """
    found = [(source_info(probe.backend), probe) for _, probe in results]
    counters = [(info, probe) for info, probe in found if info.selection == "usable"]
    lines = []
    for hardware in dict.fromkeys(info.hardware for info, _ in counters):
        measured = [info.label for info, probe in counters if _reports(probe, hardware)]
        stand_ins = [info.name for info, _ in found if info.selection == "stand-in" and info.hardware == hardware]
        if measured:
            lines.append(f"{hardware.upper()} energy will be measured by {', '.join(measured)}.")
        elif stand_ins:
            labels = " or ".join(info.label for info, _ in counters if info.covers(hardware))
            lines.append(f"{hardware.upper()} energy will be ESTIMATED ({', '.join(stand_ins)}): no usable {labels} "
                         "counter; see 'why' above for the fix.")
    return lines


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
