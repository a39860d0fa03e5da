"""Stored runs as text for other tools: JSON, CSV, CodeCarbon's ``emissions.csv`` and a model-card block.

``export_runs(runs, fmt)`` takes :class:`~greenmeter.store.database.RunRecord` objects (from the store) and returns
the text; it writes no file. Units:

- ``json``: a list of ``RunRecord.to_dict()``: SI units in the field names (``energy_j``, ``co2e_g``...).
- ``csv``: one row per run, SI units in the column names (:data:`CSV_COLUMNS`).
- ``codecarbon``: the columns of CodeCarbon's ``emissions.csv``, in the order of its ``EmissionsData``
  (:data:`CODECARBON_COLUMNS`) and in its units: energies in kWh, emissions in kg CO2e, powers in W,
  RAM in GB (2**30 bytes). As in CodeCarbon, energies and powers include the PUE (``energy x PUE``), so
  ``emissions = energy_consumed x intensity``. Domains map by kind: package/psys/cpu -> cpu, gpu -> gpu,
  dram/ram -> ram; domains not in the total (RAPL core, uncore) are left out. ``codecarbon_version`` is
  ``"greenmeter <version>"`` (the version that measured the run) so no one mistakes the row for
  CodeCarbon's own measurement. Columns greenmeter has no figure for with the same meaning are empty.
- ``model-card``: the Hugging Face model-card ``co2_eq_emissions`` YAML block, emissions in grams CO2e,
  summed over the runs.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter._text import csv_cell, terminal_text
from greenmeter._version import __version__
from greenmeter.carbon.settings import J_PER_KWH, CarbonEstimate
from greenmeter.output.formats import ExportOptions, get_format
from greenmeter.output.model_card import yaml_float, yaml_text
from greenmeter.records.measurement import DomainEnergy, Measurement
from greenmeter.sources.band import sum_bands
from greenmeter.sources.registry import find_source
from greenmeter.store.database import RunRecord

__all__ = [
    "CODECARBON_BAND_COLUMNS", "CODECARBON_COLUMNS", "CSV_COLUMNS", "export_runs", "render_codecarbon", "render_model_card", "render_runs_csv",
    "render_runs_json",
]

CSV_COLUMNS = (
    "id", "name", "kind", "status", "started_at", "ended_at", "exit_code", "command", "windows",
    "duration_s", "energy_j", "energy_band_low_j", "energy_band_high_j", "energy_band_basis", "power_w",
    "idle_power_w", "attributable_energy_j", "samples", "steps",
    "energy_per_sample_j", "co2e_g", "intensity_g_per_kwh", "pue", "region", "region_name",
    "intensity_assumed", "intensity_source", "pue_source", "provenance", "domains", "flags", "hostname",
    "cpu_model", "greenmeter_version", "note",
)

#: The fields of CodeCarbon 3.3's ``EmissionsData`` (codecarbon/output_methods/emissions_data.py), in order.
CODECARBON_COLUMNS = (
    "timestamp", "project_name", "run_id", "experiment_id", "duration", "emissions", "emissions_rate",
    "cpu_power", "gpu_power", "ram_power", "cpu_energy", "gpu_energy", "ram_energy", "energy_consumed",
    "water_consumed", "country_name", "country_iso_code", "region", "cloud_provider", "cloud_region", "os",
    "python_version", "codecarbon_version", "cpu_count", "cpu_model", "gpu_count", "gpu_model", "longitude",
    "latitude", "ram_total_size", "tracking_mode", "cpu_utilization_percent", "gpu_utilization_percent",
    "ram_utilization_percent", "ram_used_gb", "on_cloud", "pue", "wue",
)
#: Columns greenmeter adds after CodeCarbon's (tools that read ``emissions.csv`` by column name ignore them):
#: the systematic band of ``energy_consumed``, in kWh with the PUE, as ``energy_consumed`` is.
CODECARBON_BAND_COLUMNS = ("greenmeter_energy_consumed_low", "greenmeter_energy_consumed_high")

#: greenmeter domain kind -> CodeCarbon hardware column.
_CODECARBON_KIND = {"package": "cpu", "psys": "cpu", "cpu": "cpu", "gpu": "gpu", "dram": "ram", "ram": "ram"}
_COUNTRY = re.compile(r"^[A-Z]{3}$")
_B_PER_GB = 1024**3  # CodeCarbon's B_TO_GB


def export_runs(
    runs: Sequence[RunRecord], fmt: str, *, training_type: str = "pre-training",
    geographical_location: str | None = None,
) -> str:
    """Render stored runs as text in one format.

    Args:
        runs: the runs, in the order wanted.
        fmt: ``"csv"``, ``"json"``, ``"codecarbon"``, ``"model-card"`` or a plug-in's format for sets of
            runs (see :func:`~greenmeter.output.formats.format_names` ``("runs")``).
        training_type: model-card only: ``"pre-training"``, ``"fine-tuning"``...
        geographical_location: model-card only: where it ran (default: the runs' grid region names).

    Raises:
        ConfigError: an unknown format; for ``codecarbon`` and ``model-card``, a run without a whole-run
            measurement (still running, or killed before it finished) or without a carbon figure.
    """
    renderer = get_format(fmt, "runs").renderer("runs")
    return renderer(list(runs), ExportOptions(training_type, geographical_location))


# ---- helpers ---------------------------------------------------------------------------------------

def _carbon(run: RunRecord) -> CarbonEstimate | None:
    if run.carbon is not None:
        return run.carbon
    return run.measurement.carbon if run.measurement is not None else None


def _finished(runs: Sequence[RunRecord], fmt: str) -> list[tuple[RunRecord, Measurement, CarbonEstimate]]:
    """Runs with a whole-run measurement and carbon figure, or a ConfigError naming those without."""
    done, missing = [], []
    for run in runs:
        carbon = _carbon(run)
        if run.measurement is None or carbon is None:
            missing.append(f"{run.id[:12]} ({run.display_status})")
        else:
            done.append((run, run.measurement, carbon))
    if missing:
        raise ConfigError(f"cannot export as {fmt}: run(s) {', '.join(missing)} have no whole-run measurement "
                          "(they never finished); leave them out, or export them as json or csv")
    return done


def _in_total(m: Measurement) -> list[DomainEnergy]:
    return [d for d in m.domains if d.in_total]


def _provenance(m: Measurement) -> str:
    kinds = {d.provenance.kind for d in _in_total(m)}
    return "mixed" if len(kinds) > 1 else (kinds.pop() if kinds else "")


def _rows_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else csv_cell(v) for v in row] for row in rows])
    return out.getvalue()


def _gpus(m: Measurement) -> list[str]:
    """The model of each GPU domain in the total (as its source names it), ``"GPU"`` when unnamed."""
    names = []
    for d in _in_total(m):
        if d.kind == "gpu":
            source = find_source(d.key.partition(":")[0])
            names.append((source.device_name(d.provenance) if source is not None else None) or "GPU")
    return names


def _source_label(key: str) -> str:
    """How people name the source of a domain key (``"rapl:package-0"`` -> ``"RAPL"``), from its metadata."""
    name = key.partition(":")[0]
    source = find_source(name)
    return source.info.label if source is not None else name


# ---- json and csv ----------------------------------------------------------------------------------

def render_runs_json(runs: Sequence[RunRecord], options: ExportOptions) -> str:
    """The runs as a JSON list of ``RunRecord.to_dict()`` (SI units in the field names)."""
    return json.dumps([run.to_dict() for run in runs], indent=2) + "\n"


def render_runs_csv(runs: Sequence[RunRecord], options: ExportOptions) -> str:
    """One row per run with the columns of :data:`CSV_COLUMNS`, SI units in their names."""
    return _rows_text(CSV_COLUMNS, (_csv_row(run) for run in runs))


def _csv_row(run: RunRecord) -> list[Any]:
    m, carbon, host = run.measurement, _carbon(run), run.host
    row: dict[str, Any] = {
        "id": run.id, "name": run.name, "kind": run.kind, "status": run.display_status,
        "started_at": run.started_at, "ended_at": run.ended_at, "exit_code": run.exit_code,
        "command": shlex.join(run.command) if run.command is not None else None, "windows": run.windows_count,
        "hostname": host.hostname if host else None, "cpu_model": host.cpu_model if host else None,
        "greenmeter_version": host.greenmeter if host else None, "note": run.note,
    }
    if m is not None:
        row.update({
            "duration_s": m.duration_s, "energy_j": m.energy_j, "power_w": m.power_w,
            **_band_columns(m),
            "idle_power_w": m.idle_power_w, "attributable_energy_j": m.attributable_energy_j,
            "samples": m.samples, "steps": m.steps, "energy_per_sample_j": m.energy_per_sample_j,
            "provenance": _provenance(m), "flags": " | ".join(m.flags),
            "domains": "; ".join(f"{d.key}={d.energy_j!r} J {d.provenance.kind}"
                                 f"{'' if d.in_total else ' (not in total)'}" for d in m.domains),
        })
    if carbon is not None:
        grid = carbon.intensity
        row.update({
            "co2e_g": carbon.co2e_g, "intensity_g_per_kwh": carbon.intensity_g_per_kwh, "pue": carbon.pue,
            "region": grid.region, "region_name": grid.region_name, "intensity_assumed": grid.assumed,
            "intensity_source": grid.source, "pue_source": carbon.pue_source,
        })
    return [row.get(column) for column in CSV_COLUMNS]


def _band_columns(m: Measurement) -> dict[str, Any]:
    band = m.energy_band
    if band is None:
        return {"energy_band_basis": m.band_note()}
    return {"energy_band_low_j": band.low_j, "energy_band_high_j": band.high_j,
            "energy_band_basis": " | ".join(band.basis)}


# ---- codecarbon ------------------------------------------------------------------------------------

def render_codecarbon(runs: Sequence[RunRecord], options: ExportOptions) -> str:
    """CodeCarbon's ``emissions.csv`` (:data:`CODECARBON_COLUMNS`) in its units; finished runs only."""
    return _rows_text(CODECARBON_COLUMNS + CODECARBON_BAND_COLUMNS,
                      (_codecarbon_row(*item) for item in _finished(runs, "codecarbon")))


def _codecarbon_row(run: RunRecord, m: Measurement, carbon: CarbonEstimate) -> list[Any]:
    joules = {"cpu": 0.0, "gpu": 0.0, "ram": 0.0}
    for d in _in_total(m):
        if d.kind in _CODECARBON_KIND:
            joules[_CODECARBON_KIND[d.kind]] += d.energy_j
    pue, duration, grid, host = carbon.pue, m.duration_s, carbon.intensity, run.host
    emissions_kg = carbon.co2e_g / 1000
    row: dict[str, Any] = {
        "timestamp": run.ended_at, "project_name": run.name, "run_id": run.id, "duration": duration,
        "emissions": emissions_kg, "emissions_rate": emissions_kg / duration if duration > 0 else 0.0,
        "energy_consumed": m.energy_j * pue / J_PER_KWH, "pue": pue,
        "codecarbon_version": f"greenmeter {host.greenmeter if host else __version__}",
    }
    for hw, j in joules.items():
        row[f"{hw}_energy"] = j * pue / J_PER_KWH
        row[f"{hw}_power"] = j * pue / duration if duration > 0 else 0.0
    if _COUNTRY.match(grid.region):
        row.update({"country_name": grid.region_name, "country_iso_code": grid.region, "on_cloud": "N"})
    elif ":" in grid.region:
        provider, _, region = grid.region.partition(":")
        row.update({"cloud_provider": provider, "cloud_region": region, "on_cloud": "Y"})
    if host is not None:
        row.update({"os": host.os, "python_version": host.python, "cpu_count": host.logical_cpus,
                    "cpu_model": host.cpu_model})
        if host.memory_total_b is not None:
            row["ram_total_size"] = host.memory_total_b / _B_PER_GB
    gpus = Counter(_gpus(m))
    row["gpu_count"] = sum(gpus.values())
    row["gpu_model"] = "".join(f"{n} x {name}" for name, n in gpus.items())  # CodeCarbon's own format
    # Hardware counters cover the whole machine; estimates say their own scope.
    modes = {"machine" if d.provenance.kind == "measured" else d.provenance.constants.get("mode")
             for d in _in_total(m)}
    if len(modes) == 1 and modes <= {"process", "machine"}:
        row["tracking_mode"] = modes.pop()
    band = m.energy_band
    if band is not None:
        row[CODECARBON_BAND_COLUMNS[0]] = band.low_j * pue / J_PER_KWH
        row[CODECARBON_BAND_COLUMNS[1]] = band.high_j * pue / J_PER_KWH
    return [row.get(column) for column in CODECARBON_COLUMNS + CODECARBON_BAND_COLUMNS]


# ---- model card ------------------------------------------------------------------------------------

def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def render_model_card(runs: Sequence[RunRecord], options: ExportOptions) -> str:
    """The Hugging Face model-card ``co2_eq_emissions`` block of the runs (emissions in grams, summed)."""
    training_type, location = options.training_type, options.geographical_location
    done = _finished(runs, "model-card")
    if not done:
        raise ConfigError("no runs to export as a model card: name at least one finished run")
    if not isinstance(training_type, str) or not training_type.strip():
        raise ConfigError(f"training_type must be a non-empty string such as 'fine-tuning', not {training_type!r}")
    grams = sum(carbon.co2e_g for _, _, carbon in done)
    kwh = sum(m.energy_j for _, m, _ in done) / J_PER_KWH
    measured, estimated = [], []
    for _, m, _ in done:
        for d in _in_total(m):
            if d.provenance.kind == "measured":
                measured.append(_source_label(d.key))
            else:
                estimated.append(d.provenance.source)
    versions = _unique(run.host.greenmeter if run.host else __version__ for run, _, _ in done)
    how = [f"measured by {', '.join(_unique(measured))}"] if measured else []
    how += [f"estimated by {', '.join(_unique(estimated))}"] if estimated else []
    grids = _unique(c.intensity.label() + (" (assumed)" if c.intensity.assumed else "") for _, _, c in done)
    source = (f"greenmeter {', '.join(versions)}, {'; '.join(how) or 'no energy domains'}; "
              f"grid intensity: {'; '.join(grids)}")
    if location is None:
        known = [c.intensity for _, _, c in done if not c.intensity.assumed and c.intensity.region != "user"]
        location = "; ".join(_unique(g.region_name for g in known)) if len(known) == len(done) else None
    hardware = []
    for run, m, _ in done:
        gpus = Counter(_gpus(m))
        parts = [f"{n} x {name}" for name, n in gpus.items()]
        if run.host is not None:
            parts.append(f"{run.host.cpu_model} ({run.host.logical_cpus} logical CPUs)")
        hardware.append(", ".join(parts))
    band = sum_bands(m.energy_band for _, m, _ in done)
    band_line = ("# band: not stated (a run has none)" if band is None else
                 f"# band of that device energy: {band.low_j / J_PER_KWH:.6g}-{band.high_j / J_PER_KWH:.6g} kWh "
                 "(how far off its sources could be: " + "; ".join(band.basis) + ")")
    lines = [
        (f"# greenmeter: {len(done)} run(s) ({', '.join(run.id[:12] for run, _, _ in done)}), "
         f"{kwh:.6g} kWh of device energy, PUE and grid intensity applied per run"),
        "co2_eq_emissions:",
        f"  emissions: {yaml_float(grams)}",
        f"  source: {yaml_text(source)}",
        f"  training_type: {yaml_text(training_type.strip())}",
    ]
    if location:
        lines.append(f"  geographical_location: {yaml_text(location)}")
    else:
        lines.append("  # geographical_location left out: the grid region is unknown (pass --location)")
    if _unique(hardware):
        lines.append(f"  hardware_used: {yaml_text('; '.join(_unique(hardware)))}")
    lines.append(terminal_text(band_line))
    return "\n".join(lines) + "\n"
