"""greenmeter.carbon.settings: lookups checked against CodeCarbon's and pycountry's files, read here independently."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import greenmeter
from greenmeter import ConfigError
from greenmeter.carbon.settings import (
    PUE_PRESETS,
    CarbonEstimate,
    CarbonSettings,
    GridIntensity,
    estimate_carbon,
    list_cloud_regions,
    list_countries,
)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def cc() -> dict[str, Any]:
    """CodeCarbon's tables and version, read with json/csv only."""
    root = _package_dir("codecarbon")
    data = root / "data"
    with open(data / "cloud" / "impact.csv", encoding="utf-8-sig", newline="") as handle:
        cloud_rows = list(csv.DictReader(handle))
    version = re.search(r"__version__\s*=\s*[\"']([^\"']+)", (root / "_version.py").read_text()).group(1)
    return {
        "countries": json.loads((data / "private_infra" / "global_energy_mix.json").read_text()),
        "per_source": json.loads((data / "private_infra" / "carbon_intensity_per_source.json").read_text()),
        "clouds": {f"{r['provider'].lower()}:{r['region'].lower()}": r for r in cloud_rows},
        "version": version,
    }


@pytest.fixture(scope="module")
def iso() -> dict[str, str]:
    table = json.loads((_package_dir("pycountry") / "databases" / "iso3166-1.json").read_text())
    return {e["alpha_2"]: e["alpha_3"] for e in table["3166-1"]}


# ---- countries ----------------------------------------------------------------------------------------

def test_france_by_alpha3_and_alpha2_in_any_case_is_the_table_row(cc: dict[str, Any]) -> None:
    row = cc["countries"]["FRA"]
    results = {CarbonSettings(country=code).resolve_intensity() for code in ("FRA", "FR", "fra", "fr", " Fr ")}
    assert len(results) == 1
    (grid,) = results
    assert grid.intensity_g_per_kwh == row["carbon_intensity"]
    assert (grid.region, grid.region_name, grid.data_year, grid.assumed) == ("FRA", "France", row["year"], False)
    assert f"CodeCarbon {cc['version']}" in grid.source and "global_energy_mix.json" in grid.source
    assert "Our World in Data" in grid.source
    assert CarbonSettings(country="fr").country == "FR"  # normalised, not mapped, until resolved


def test_every_alpha2_code_maps_to_its_alpha3_row(cc: dict[str, Any], iso: dict[str, str]) -> None:
    checked = 0
    for alpha2, alpha3 in iso.items():
        if alpha3 in cc["countries"]:
            grid = CarbonSettings(country=alpha2.lower()).resolve_intensity()
            assert grid.region == alpha3
            assert grid.intensity_g_per_kwh == cc["countries"][alpha3]["carbon_intensity"]
            checked += 1
    assert checked >= 200


def test_list_countries_is_the_whole_table_sorted(cc: dict[str, Any]) -> None:
    listed = list_countries()
    assert listed == sorted(listed) and len(listed) == len(cc["countries"])
    for code, name, value, year in listed:
        row = cc["countries"][code]
        assert (name, value, year) == (row["country_name"], row["carbon_intensity"], row["year"])


# ---- cloud regions ------------------------------------------------------------------------------------

def test_every_cloud_row_is_found_by_its_key(cc: dict[str, Any]) -> None:
    assert cc["clouds"], "impact.csv has rows"
    for key, row in cc["clouds"].items():
        grid = CarbonSettings(cloud=key.upper()).resolve_intensity()
        assert grid.intensity_g_per_kwh == float(row["impact"])
        assert grid.region == key and grid.data_year is None and not grid.assumed
        assert row["source"] in grid.source and "impact.csv" in grid.source
        assert row["city"] in grid.region_name and row["country_name"] in grid.region_name


def test_cloud_key_is_normalised_and_named() -> None:
    settings = CarbonSettings(cloud=" GCP:Europe-West9 ")
    assert settings.cloud == "gcp:europe-west9"
    assert settings.resolve_intensity().region_name == "GCP europe-west9 (Paris, France)"


def test_list_cloud_regions_is_the_whole_table_sorted(cc: dict[str, Any]) -> None:
    listed = list_cloud_regions()
    assert listed == sorted(listed) and len(listed) == len(cc["clouds"])
    for key, place, value in listed:
        row = cc["clouds"][key]
        assert value == float(row["impact"]) and place == f"{row['city']}, {row['country_name']}"


# ---- user-given and world average ---------------------------------------------------------------------

def test_user_intensity_is_used_as_given() -> None:
    grid = CarbonSettings(intensity_g_per_kwh=123.5).resolve_intensity()
    assert (grid.intensity_g_per_kwh, grid.region, grid.region_name, grid.assumed) == (123.5, "user", "user-given",
                                                                                        False)
    assert CarbonSettings(intensity_g_per_kwh=0).resolve_intensity().intensity_g_per_kwh == 0.0


def test_nothing_given_assumes_the_world_average_and_says_so(cc: dict[str, Any]) -> None:
    grid = CarbonSettings().resolve_intensity()
    assert grid.intensity_g_per_kwh == cc["per_source"]["world_average"]
    assert (grid.region, grid.region_name, grid.assumed) == ("world", "World average", True)
    assert cc["per_source"]["world_average_source"] in grid.source and "IEA" in grid.source
    assert grid.data_year == 2018  # the IEA status report published in 2019 gives the 2018 figure
    text = estimate_carbon(3.6e6).describe()
    assert text.endswith("(ASSUMED world average: pass --country/--cloud/--intensity)")
    assert "ASSUMED" not in estimate_carbon(3.6e6, CarbonSettings(country="FRA")).describe()


# ---- arithmetic and PUE -------------------------------------------------------------------------------

def test_co2e_is_kwh_times_pue_times_intensity() -> None:
    estimate = estimate_carbon(3.6e6, CarbonSettings(intensity_g_per_kwh=100.0, pue=1.5))
    assert estimate.co2e_g == 150.0
    assert (estimate.energy_j, estimate.pue, estimate.intensity_g_per_kwh) == (3.6e6, 1.5, 100.0)
    assert estimate.describe() == "150 g CO2e = 1 kWh x PUE 1.5 x 100 g/kWh (user-given)"
    assert estimate_carbon(0, CarbonSettings(intensity_g_per_kwh=100.0)).co2e_g == 0.0


def test_country_estimate_uses_the_row_and_describes_it(cc: dict[str, Any]) -> None:
    row = cc["countries"]["DEU"]
    estimate = estimate_carbon(7.2e6, CarbonSettings(country="DE", pue="aws"))
    assert estimate.co2e_g == pytest.approx(2.0 * 1.15 * row["carbon_intensity"], rel=1e-12)
    text = estimate.describe()
    assert f"x PUE 1.15 x {row['carbon_intensity']:.4g} g/kWh (Germany {row['year']}, CodeCarbon" in text


def test_pue_presets_are_sourced_and_resolve_to_their_value() -> None:
    assert set(PUE_PRESETS) == {"device", "unknown-datacenter", "gcp", "aws", "azure"}
    for name, (value, source) in PUE_PRESETS.items():
        assert 1.0 <= value <= 3.0
        resolved, text = CarbonSettings(pue=name.upper()).resolve_pue()
        assert resolved == value and source in text and name in text
        if name != "device":
            assert re.search(r"\(.*20\d\d\)$", source), f"{name} names its year"
    assert PUE_PRESETS["device"][0] == 1.0 and PUE_PRESETS["unknown-datacenter"][0] == 1.58
    assert CarbonSettings().resolve_pue() == (1.0, "PUE 1.0: device energy only, no data-centre overhead counted")
    assert CarbonSettings(pue="1.2").resolve_pue() == (1.2, "user-given PUE 1.2")
    with pytest.raises(TypeError):
        PUE_PRESETS["mine"] = (1.3, "x")  # type: ignore[index]


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"country": "FRQ"}, r"country 'FRQ' is not in CodeCarbon .*did you mean .*FRA.*greenmeter carbon --list-countries"),
    ({"country": "France"}, r"alpha-3 .* alpha-2 .* got 'France' \('France' looks like a name: did you mean FRA\?\)"),
    ({"country": "UK"}, r"'UK' is not an ISO 3166-1 alpha-2 code; did you mean GB \(GBR\)\?"),
    ({"country": "AQ"}, r"country 'AQ' \(ATA\) is not in CodeCarbon"),
    ({"country": 250}, r"country must be a string"),
    ({"country": "FRA", "cloud": "gcp:europe-west9"}, r"at most one of country, cloud and intensity"),
    ({"cloud": "gcp:europe-west9", "intensity_g_per_kwh": 10}, r"at most one of"),
    ({"cloud": "aws-eu-west-3"}, r"'provider:region' .*did you mean 'aws:eu-west-3'\?"),
    ({"cloud": "gcp:"}, r"'provider:region'"),
    ({"cloud": "gcp:europe west1"}, r"'provider:region'"),
    ({"cloud": "gcp:europe-west13"}, r"'gcp:europe-west13' is not in .*did you mean gcp:europe-west.*list-regions"),
    ({"cloud": "ovh:gra"}, r"no regions for provider 'ovh' \(it lists: gcp"),
    ({"intensity_g_per_kwh": -1.0}, r"negative"),
    ({"intensity_g_per_kwh": 2000.5}, r"above 2000 gCO2e/kWh.*another unit"),
    ({"intensity_g_per_kwh": math.nan}, r"finite number"),
    ({"intensity_g_per_kwh": math.inf}, r"finite number"),
    ({"intensity_g_per_kwh": "100"}, r"finite number"),
    ({"pue": 0.9}, r"below 1.0, which is physically impossible"),
    ({"pue": -1}, r"below 1.0"),
    ({"pue": 3.01}, r"above 3.0, absurd for a data centre"),
    ({"pue": math.nan}, r"finite number"),
    ({"pue": True}, r"finite number"),
    ({"pue": "google"}, r"unknown PUE preset 'google'.*device, unknown-datacenter, gcp, aws, azure"),
])
def test_bad_settings_are_config_errors_that_say_why(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        CarbonSettings(**kwargs).resolve_intensity()
    assert isinstance(info.value, ValueError) and isinstance(info.value, greenmeter.GreenmeterError)


def test_aws_regions_absent_from_the_table_get_a_way_out(cc: dict[str, Any]) -> None:
    if any(key.startswith("aws:") for key in cc["clouds"]):
        pytest.skip("this CodeCarbon version lists AWS regions")
    with pytest.raises(ConfigError, match=r"no regions for provider 'aws'.*--country.*--intensity"):
        CarbonSettings(cloud="aws:eu-west-3").resolve_intensity()


@pytest.mark.parametrize("energy", [-1.0, math.nan, math.inf, "1", None])
def test_bad_energy_is_a_config_error(energy: Any) -> None:
    with pytest.raises(ConfigError, match="energy_j"):
        estimate_carbon(energy)


# ---- records ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    CarbonSettings(), CarbonSettings(country="fr", pue="gcp"), CarbonSettings(cloud="gcp:us-west1", pue=1.25),
    CarbonSettings(intensity_g_per_kwh=42.0, pue="unknown-datacenter"),
])
def test_records_round_trip_through_json(settings: CarbonSettings) -> None:
    assert CarbonSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    estimate = estimate_carbon(1234.5, settings)
    again = CarbonEstimate.from_dict(json.loads(json.dumps(estimate.to_dict())))
    assert again == estimate and again.describe() == estimate.describe()
    assert GridIntensity.from_dict(estimate.intensity.to_dict()) == estimate.intensity


# ---- no import, no network; without CodeCarbon ---------------------------------------------------------

def test_lookups_import_neither_codecarbon_nor_pycountry_and_open_no_socket() -> None:
    code = (
        "import sys, time\n"
        "net = []\n"
        "sys.addaudithook(lambda event, args: net.append(event) if event.startswith('socket.') else None)\n"
        "from greenmeter.carbon.settings import CarbonSettings, list_countries, list_cloud_regions\n"
        "t = time.perf_counter()\n"
        "CarbonSettings(country='FR').resolve_intensity(); CarbonSettings(cloud='gcp:europe-west9').resolve_intensity()\n"
        "CarbonSettings().resolve_intensity(); list_countries(); list_cloud_regions()\n"
        "ms = (time.perf_counter() - t) * 1e3\n"
        "print([m for m in ('codecarbon', 'pycountry') if m in sys.modules] + net, ms)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    loaded, ms = out.stdout.rsplit("]", 1)
    assert loaded + "]" == "[]"
    assert float(ms) < 500  # about 5 ms here; importing codecarbon would take seconds


def test_without_codecarbon_the_world_average_still_works_and_lookups_say_what_to_install(tmp_path: Path) -> None:
    code = (
        "from greenmeter import ConfigError\n"
        "from greenmeter.carbon.settings import CarbonSettings, list_countries\n"
        "grid = CarbonSettings().resolve_intensity()\n"
        "print(grid.intensity_g_per_kwh, grid.assumed, grid.data_year, 'not found' in grid.source)\n"
        "for call in (lambda: CarbonSettings(country='FRA').resolve_intensity(), list_countries,\n"
        "             lambda: CarbonSettings(cloud='gcp:europe-west9').resolve_intensity()):\n"
        "    try:\n"
        "        call()\n"
        "    except ConfigError as err:\n"
        "        print('pip install codecarbon' in str(err) and '--intensity' in str(err))\n"
        "print(CarbonSettings(intensity_g_per_kwh=50).resolve_intensity().intensity_g_per_kwh)\n"
    )
    root = Path(greenmeter.__file__).resolve().parent.parent
    if (root / "codecarbon").exists():
        pytest.skip("greenmeter is installed next to codecarbon, so -S cannot hide codecarbon")
    # -S: no site-packages, so neither codecarbon nor pycountry can be found (the boundary, not the code, is faked)
    out = subprocess.run([sys.executable, "-S", "-c", code], check=False, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["475.0", "True", "2018", "True", "True", "True", "True", "50.0"]
