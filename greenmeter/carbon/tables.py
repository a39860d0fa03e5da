"""CodeCarbon's and pycountry's data tables, located with ``find_spec`` and parsed once; never imported.

- ``codecarbon/data/private_infra/global_energy_mix.json``: per ISO alpha-3 code, ``carbon_intensity``
  (g/kWh), ``country_name`` and ``year``;
- ``codecarbon/data/cloud/impact.csv`` (it starts with a UTF-8 BOM): ``provider``, ``region``, ``city``,
  ``country_name``, ``impact`` (g/kWh), ``source``;
- ``codecarbon/data/private_infra/carbon_intensity_per_source.json``: ``world_average`` and its source;
- ``pycountry/databases/iso3166-1.json`` (pycountry's copy of Debian's iso-codes): alpha-2 to alpha-3.

CodeCarbon's folder is found through :func:`greenmeter.sources.cpu_model.codecarbon_tdp_table_path` and its
version read by the same module, so that logic lives in one place. Parsed tables are cached per path for
the life of the process; importing codecarbon (slow, and it initialises hardware) never happens.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter.sources.cpu_model import codecarbon_version, codecarbon_tdp_table_path

__all__ = ["Table", "clouds", "codecarbon_data_dir", "countries", "iso3166_alpha2_to_alpha3", "world_average"]

#: A parsed table, the file it came from and the CodeCarbon version that ships it.
Table = tuple[Any, str, str]


def codecarbon_data_dir() -> Path | None:
    """CodeCarbon's ``data`` folder, found through its TDP table (``data/hardware/cpu_power.csv``)."""
    tdp = codecarbon_tdp_table_path()
    return tdp.parent.parent if tdp is not None else None


def countries() -> Table:
    """``{alpha3: (name, g/kWh, year)}`` from ``global_energy_mix.json``; ConfigError when absent."""
    return _codecarbon_table("countries", "private_infra", "global_energy_mix.json")


def clouds() -> Table:
    """``{"provider:region": (region name, place, g/kWh, upstream source)}`` from ``impact.csv``."""
    return _codecarbon_table("clouds", "cloud", "impact.csv")


def world_average() -> Table | None:
    """``(g/kWh, the source it names)`` from ``carbon_intensity_per_source.json``; ``None`` when absent."""
    data_dir = codecarbon_data_dir()
    path = data_dir / "private_infra" / "carbon_intensity_per_source.json" if data_dir is not None else None
    if path is None or not path.is_file():
        return None
    return _parsed(str(path), "world"), str(path), codecarbon_version(str(data_dir.parent))


def iso3166_alpha2_to_alpha3() -> dict[str, str] | None:
    """``{"FR": "FRA", ...}`` from pycountry's ISO 3166-1 table; ``None`` when pycountry is absent."""
    try:
        spec = importlib.util.find_spec("pycountry")  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or ()) if spec is not None else ():
        if (path := Path(location) / "databases" / "iso3166-1.json").is_file():
            return _parsed(str(path), "iso3166")
    return None


def _codecarbon_table(kind: str, *parts: str) -> Table:
    data_dir = codecarbon_data_dir()
    path = data_dir.joinpath(*parts) if data_dir is not None else None
    if data_dir is None or path is None or not path.is_file():
        raise ConfigError(f"CodeCarbon's data file {'/'.join(parts)} was not found: `pip install codecarbon` "
                          "(greenmeter reads its tables offline and never imports it), or pass the grid "
                          "intensity yourself (intensity_g_per_kwh= / --intensity)")
    return _parsed(str(path), kind), str(path), codecarbon_version(str(data_dir.parent))


@functools.lru_cache(maxsize=16)
def _parsed(path: str, kind: str) -> Any:
    """Parse a table file once per path (``utf-8-sig`` drops a BOM where there is one)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            if kind == "clouds":
                return _cloud_rows(csv.DictReader(handle))
            raw = json.load(handle)
        if kind == "countries":
            return {code.upper(): (str(e["country_name"]), float(e["carbon_intensity"]),
                                   None if e.get("year") is None else int(e["year"])) for code, e in raw.items()}
        if kind == "world":
            return float(raw["world_average"]), str(raw.get("world_average_source", ""))
        return {e["alpha_2"].upper(): e["alpha_3"].upper() for e in raw["3166-1"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, csv.Error) as err:
        raise ConfigError(f"cannot read the {kind} table {path}: {type(err).__name__}: {err}") from err


def _cloud_rows(rows: csv.DictReader[str]) -> dict[str, tuple[str, str, float, str]]:
    table = {}
    for row in rows:
        provider, region = row["provider"].strip(), row["region"].strip()
        where = (row.get("city") or row.get("regionName") or "").strip()
        place = ", ".join(p for p in (where, (row.get("country_name") or "").strip()) if p)
        name = f"{provider.upper()} {region}" + (f" ({place})" if place else "")
        table[f"{provider.lower()}:{region.lower()}"] = (name, place, float(row["impact"]),
                                                         (row.get("source") or "").strip())
    return table
