"""Exports of stored runs: JSON, CSV, CodeCarbon's emissions.csv and the model-card block, with exact figures."""

from __future__ import annotations

import ast
import csv
import importlib.util
import io
import json
from pathlib import Path

import pytest

from greenmeter import ConfigError, Measurement, Meter
from greenmeter.sources.base import Domain, ProbeResult, Provenance
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.output.export import (
    CODECARBON_BAND_COLUMNS,
    CODECARBON_COLUMNS,
    CSV_COLUMNS,
    export_runs,
)
from greenmeter.output.formats import format_names
from greenmeter.output.model_card import yaml_float
from greenmeter.store.database import RunRecord, Store
from tests.fakes.scripted import ScriptedBackend

RAPL = "RAPL powercap /sys/class/powercap/intel-rapl:0 (package-0)"
GPU = "NVML GPU {} NVIDIA H200 (GPU-5d1c-{})"
RAM_MODEL = "RAM power model (ram-estimate)"


class KindBackend(ScriptedBackend):
    """A scripted counter for one domain of a given kind, key and provenance."""

    def __init__(self, key: str, kind: str, joules: float, *, in_total: bool = True,
                 provenance: Provenance | None = None) -> None:
        super().__init__([0.0, joules], key=key)
        self.name = f"scripted-{key}"
        self.kind, self.in_total = kind, in_total
        self.provenance = provenance or Provenance("measured", f"test counter {key}", "cumulative energy counter")

    def probe(self) -> ProbeResult:
        return ProbeResult(self.name, True, domains=(Domain(self.key, self.kind, self.in_total, self.provenance, 0.0),))


def _machine_measurement(settings: CarbonSettings, name: str = "train") -> Measurement:
    measured = "cumulative energy counter"
    backends = [
        KindBackend("rapl:package-0", "package", 36.0, provenance=Provenance("measured", RAPL, measured)),
        KindBackend("rapl:core-0", "core", 20.0, in_total=False, provenance=Provenance("measured", RAPL, measured)),
        KindBackend("nvml:gpu0", "gpu", 72.0, provenance=Provenance("measured", GPU.format(0, 0), measured)),
        KindBackend("nvml:gpu1", "gpu", 54.0, provenance=Provenance("measured", GPU.format(1, 1), measured)),
        KindBackend("ram-estimate:ram", "ram", 7.2,
                    provenance=Provenance("estimated", RAM_MODEL, "W per GB", {"mode": "process"})),
    ]
    meter = Meter(backends, sync=None, carbon=settings)
    with meter.window(name, samples=64) as w:
        meter.step()
    assert w.measurement is not None
    return w.measurement


def _stored(tmp_path: Path, *settings: CarbonSettings, unfinished: bool = False) -> list[RunRecord]:
    with Store(tmp_path / "runs.db") as store:
        ids = []
        for i, s in enumerate(settings):
            m = _machine_measurement(s, name=f"run{i}")
            run_id = store.start_run(name=f"run{i}", kind="run", command=["python", "t.py"], host=m.host,
                                     carbon_settings=s)
            store.add_window(run_id, m)
            store.finish_run(run_id, status="ok", exit_code=0, measurement=m)
            ids.append(run_id)
        if unfinished:
            ids.append(store.start_run(name="killed", kind="api"))
        return [store.get_run(i) for i in ids]


FRANCE = CarbonSettings(country="FRA", pue=1.5)
PARIS_CLOUD = CarbonSettings(cloud="gcp:europe-west9", pue="gcp")


def test_unknown_format_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        export_runs([], "xlsx")
    assert all(fmt in str(info.value) for fmt in format_names("runs"))


def test_json_is_the_list_of_run_records(tmp_path: Path) -> None:
    runs = _stored(tmp_path, FRANCE, unfinished=True)
    data = json.loads(export_runs(runs, "json"))
    assert data == [r.to_dict() for r in runs]
    assert [RunRecord.from_dict(d) for d in data] == runs
    assert data[0]["measurement"]["energy_j"] == 36.0 + 72.0 + 54.0 + 7.2 and data[1]["complete"] is False


def test_csv_has_one_row_per_run_in_si_units(tmp_path: Path) -> None:
    runs = _stored(tmp_path, FRANCE, unfinished=True)
    reader = csv.reader(io.StringIO(export_runs(runs, "csv")))
    header, done, killed = list(reader)
    assert tuple(header) == CSV_COLUMNS
    row, other = dict(zip(header, done)), dict(zip(header, killed))
    m, carbon = runs[0].measurement, runs[0].carbon
    assert m is not None and carbon is not None
    assert float(row["energy_j"]) == m.energy_j == 169.2
    assert float(row["duration_s"]) == m.duration_s and float(row["power_w"]) == m.power_w
    assert float(row["co2e_g"]) == carbon.co2e_g == m.energy_j / 3.6e6 * 1.5 * carbon.intensity_g_per_kwh
    assert (row["region"], row["region_name"]) == ("FRA", "France")
    assert (row["pue"], row["intensity_assumed"]) == ("1.5", "False")
    assert float(row["intensity_g_per_kwh"]) == carbon.intensity_g_per_kwh
    assert row["provenance"] == "mixed" and row["status"] == "ok" and row["samples"] == "64"
    assert "rapl:core-0=20.0 J measured (not in total)" in row["domains"]
    assert "nvml:gpu1=54.0 J measured" in row["domains"] and row["command"] == "python t.py"
    assert other["status"] == "incomplete" and other["energy_j"] == "" and other["co2e_g"] == ""


def _codecarbon_fields() -> list[str]:
    spec = importlib.util.find_spec("codecarbon")  # located, never imported
    if spec is None or spec.origin is None:
        pytest.skip("codecarbon is not installed")
    source = Path(spec.origin).parent / "output_methods" / "emissions_data.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EmissionsData")
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


def test_codecarbon_header_is_codecarbons_field_order() -> None:
    assert list(CODECARBON_COLUMNS) == _codecarbon_fields()
    # CodeCarbon's columns first, in its order, then greenmeter's band of energy_consumed
    assert export_runs([], "codecarbon").splitlines() == [",".join(CODECARBON_COLUMNS + CODECARBON_BAND_COLUMNS)]


def test_codecarbon_rows_convert_units_exactly(tmp_path: Path) -> None:
    runs = _stored(tmp_path, FRANCE, PARIS_CLOUD)
    rows = list(csv.DictReader(io.StringIO(export_runs(runs, "codecarbon"))))
    assert len(rows) == 2
    row, run = rows[0], runs[0]
    m, carbon, host = run.measurement, run.carbon, run.host
    assert m is not None and carbon is not None and host is not None
    d, pue = m.duration_s, 1.5
    assert float(row["duration"]) == d
    assert float(row["emissions"]) == carbon.co2e_g / 1000  # kg
    assert float(row["emissions_rate"]) == carbon.co2e_g / 1000 / d  # kg/s
    # kWh, with the PUE applied as CodeCarbon applies it; RAPL core (not in total) is left out.
    assert float(row["cpu_energy"]) == 36.0 * pue / 3.6e6
    assert float(row["gpu_energy"]) == (72.0 + 54.0) * pue / 3.6e6
    assert float(row["ram_energy"]) == 7.2 * pue / 3.6e6
    assert float(row["energy_consumed"]) == m.energy_j * pue / 3.6e6
    assert float(row["cpu_power"]) == 36.0 * pue / d and float(row["gpu_power"]) == 126.0 * pue / d  # W
    assert float(row["ram_power"]) == 7.2 * pue / d
    assert float(row["emissions"]) == pytest.approx(float(row["energy_consumed"]) * carbon.intensity_g_per_kwh / 1000)
    assert (row["country_name"], row["country_iso_code"], row["on_cloud"], row["cloud_provider"]) == (
        "France", "FRA", "N", "")
    assert (row["gpu_count"], row["gpu_model"], row["pue"]) == ("2", "2 x NVIDIA H200", "1.5")
    assert row["codecarbon_version"] == f"greenmeter {host.greenmeter}" and row["run_id"] == run.id
    assert (row["os"], row["python_version"], row["cpu_model"]) == (host.os, host.python, host.cpu_model)
    assert int(row["cpu_count"]) == host.logical_cpus
    assert host.memory_total_b is not None and float(row["ram_total_size"]) == host.memory_total_b / 2**30
    assert row["timestamp"] == run.ended_at and row["project_name"] == "run0"
    assert row["tracking_mode"] == ""  # machine-wide counters mixed with a per-process estimate
    for empty in ("experiment_id", "water_consumed", "region", "longitude", "latitude", "wue",
                  "cpu_utilization_percent", "ram_used_gb"):
        assert row[empty] == "", empty
    cloud = rows[1]
    assert (cloud["cloud_provider"], cloud["cloud_region"], cloud["on_cloud"], cloud["country_iso_code"]) == (
        "gcp", "europe-west9", "Y", "")
    assert float(cloud["pue"]) == runs[1].carbon.pue == 1.10  # type: ignore[union-attr]


def test_codecarbon_and_model_card_refuse_unfinished_runs(tmp_path: Path) -> None:
    runs = _stored(tmp_path, FRANCE, unfinished=True)
    for fmt in ("codecarbon", "model-card"):
        with pytest.raises(ConfigError, match="never finished") as info:
            export_runs(runs, fmt)
        assert runs[1].id[:12] in str(info.value) and "incomplete" in str(info.value)
    with pytest.raises(ConfigError, match="no runs"):
        export_runs([], "model-card")


def _card(text: str) -> dict:  # type: ignore[type-arg]
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(text)["co2_eq_emissions"]


def test_model_card_sums_grams_and_names_sources_location_and_hardware(tmp_path: Path) -> None:
    runs = _stored(tmp_path, FRANCE, PARIS_CLOUD)
    text = export_runs(runs, "model-card", training_type="fine-tuning")
    assert text.splitlines()[1] == "co2_eq_emissions:"
    card = _card(text)
    grams = runs[0].carbon.co2e_g + runs[1].carbon.co2e_g  # type: ignore[union-attr]
    assert isinstance(card["emissions"], float) and card["emissions"] == grams
    assert card["training_type"] == "fine-tuning"
    paris = runs[1].carbon.intensity.region_name  # type: ignore[union-attr]
    assert card["geographical_location"] == f"France; {paris}" == "France; GCP europe-west9 (Paris, France)"
    assert card["source"].startswith("greenmeter 0.1.0, measured by RAPL, NVML; estimated by RAM power model")
    assert "France" in card["source"] and "grid intensity" in card["source"]
    assert card["hardware_used"].startswith("2 x NVIDIA H200, ")
    assert runs[0].host is not None and runs[0].host.cpu_model in card["hardware_used"]


def test_model_card_location_is_given_or_left_out_when_unknown(tmp_path: Path) -> None:
    runs = _stored(tmp_path, CarbonSettings(), CarbonSettings(intensity_g_per_kwh=10.0))
    text = export_runs(runs, "model-card")
    card = _card(text)
    assert "geographical_location" not in card and "pass --location" in text
    assert card["training_type"] == "pre-training" and "(assumed)" in card["source"]
    given = _card(export_runs(runs[1:], "model-card", geographical_location='Lyon, "FR"'))
    assert given["geographical_location"] == 'Lyon, "FR"'
    assert given["emissions"] == 169.2 / 3.6e6 * 1.0 * 10.0


@pytest.mark.parametrize("value", [1e-05, 2.5e-11, 1e20, 0.0, 12.75])
def test_yaml_floats_read_back_as_the_same_float(value: float) -> None:
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(f"x: {yaml_float(value)}")["x"] == value
