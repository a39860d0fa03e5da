"""Which backends a meter uses: the ones asked for by name, or an automatic choice with said fallbacks."""

from __future__ import annotations

from collections.abc import Sequence

from greenmeter._errors import BackendUnavailable
from greenmeter.sources.base import Backend, ProbeResult
from greenmeter.sources.registry import create_backend

__all__ = ["create_configured", "probe_sources", "select_backends"]


def create_configured(
    name: str, *, mode: str = "process", sysfs_root: str | None = None, use_psys: bool = False,
    gpus: Sequence[int] | None = None,
) -> Backend:
    """Create a backend by name, passing it the meter options that concern it."""
    if name == "rapl":
        return create_backend(name, sysfs_root=sysfs_root, use_psys=use_psys)
    if name == "nvml":
        return create_backend(name, devices=gpus)
    return create_backend(name, mode=mode)


def probe_sources(
    *, mode: str = "process", sysfs_root: str | None = None, use_psys: bool = False,
    gpus: Sequence[int] | None = None,
) -> list[tuple[Backend, ProbeResult]]:
    """Probe every known source and return each backend with its probe result (for ``info``).

    Nothing is started; unusable backends are returned too, with the reason and the fix.
    """
    options = {"mode": mode, "sysfs_root": sysfs_root, "use_psys": use_psys, "gpus": gpus}
    names = ("rapl", "nvml", "cpu-estimate", "ram-estimate")
    return [(backend, backend.probe()) for backend in (create_configured(n, **options) for n in names)]


def select_backends(
    requested: Sequence[str | Backend] | None, **options: object,
) -> tuple[list[Backend], list[ProbeResult], tuple[str, ...]]:
    """Choose and probe the backends; returns ``(usable backends, every probe, fallback notes)``.

    Named backends must all be usable (``BackendUnavailable`` otherwise, with the reason). With
    ``requested=None``: RAPL and NVML where usable, the CPU estimate where RAPL is not, and the RAM
    estimate where there is no RAPL DRAM counter; each fallback is a note in words.
    """
    if requested is not None:
        chosen: list[Backend] = []
        probes: list[ProbeResult] = []
        for spec in requested:
            backend = spec if isinstance(spec, Backend) else create_configured(spec, **options)  # type: ignore[arg-type]
            result = backend.probe()
            probes.append(result)
            if not result.available:
                raise BackendUnavailable(f"energy source {result.backend!r} is unusable here: {result.reason}")
            chosen.append(backend)
        return chosen, probes, ()
    notes: list[str] = []
    probed = [(b, b.probe()) for b in (create_configured(n, **options) for n in ("rapl", "nvml"))]  # type: ignore[arg-type]
    rapl_probe = probed[0][1]
    if not rapl_probe.available:
        notes.append(f"CPU energy is estimated, not measured: RAPL is unusable ({rapl_probe.reason})")
        cpu = create_configured("cpu-estimate", **options)  # type: ignore[arg-type]
        probed.append((cpu, cpu.probe()))
    if not rapl_probe.available or not any(d.kind == "dram" and d.in_total for d in rapl_probe.domains):
        notes.append("RAM energy is estimated (ram-estimate), not measured: no usable RAPL DRAM counter")
        ram = create_configured("ram-estimate", **options)  # type: ignore[arg-type]
        probed.append((ram, ram.probe()))
    return [b for b, p in probed if p.available], [p for _, p in probed], tuple(notes)
