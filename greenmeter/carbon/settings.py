"""Carbon: energy x PUE x grid carbon intensity, with every factor's source, looked up offline.

``co2e_g = energy_j / 3.6e6 * pue * intensity_g_per_kwh``. The intensity is an annual average, found:

- by country, in CodeCarbon's ``data/private_infra/global_energy_mix.json`` (per ISO 3166 alpha-3 code:
  ``carbon_intensity`` in g/kWh and its ``year``; CodeCarbon builds it from Our World in Data's "Carbon
  intensity of electricity generation", itself from Ember and the Energy Institute). Alpha-2 codes are
  mapped to alpha-3 with ``pycountry``'s ``databases/iso3166-1.json`` (the Debian iso-codes table, which
  CodeCarbon installs), read as a file;
- by cloud region, in CodeCarbon's ``data/cloud/impact.csv`` (``provider:region`` -> ``impact`` g/kWh and
  the provider page it names);
- given by the user;
- or, when nothing is given, assumed: the world average of CodeCarbon's
  ``data/private_infra/carbon_intensity_per_source.json`` (475 g/kWh, IEA Global Energy & CO2 Status
  Report 2019, data for 2018). ``GridIntensity.assumed`` is then ``True`` and every description says so.

:mod:`greenmeter.carbon.tables` locates the files with ``importlib.util.find_spec`` and parses them on first
use, then caches them: **codecarbon and pycountry are never imported**, and no network call is ever made.
Without codecarbon the world average still works (greenmeter's copy of the same figure, said in its source);
country and cloud lookups then raise :class:`~greenmeter.ConfigError` saying what to install.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from greenmeter.carbon import tables
from greenmeter._errors import ConfigError

__all__ = [
    "PUE_PRESETS",
    "CarbonEstimate",
    "CarbonSettings",
    "GridIntensity",
    "estimate_carbon",
    "list_cloud_regions",
    "list_countries",
]

J_PER_KWH = 3.6e6
#: The highest national average in CodeCarbon 3.3.2's table is about 1,300 g/kWh (Turkmenistan, 2022).
MAX_INTENSITY_G_PER_KWH = 2000.0
PUE_RANGE = (1.0, 3.0)

#: Fleet averages, not the PUE of the hall your job ran in: use a number when you know it.
PUE_PRESETS: Mapping[str, tuple[float, str]] = MappingProxyType({
    "device": (1.0, "device energy only: no data-centre overhead counted (greenmeter's default)"),
    "unknown-datacenter": (1.58, ("Uptime Institute Global Data Center Survey 2023: industry average annual "
                                  "PUE 1.58 (2023)")),
    "gcp": (1.10, "Google 2024 Environmental Report: average annual PUE of Google's data centers 1.10 (2023)"),
    "aws": (1.15, "Amazon 2024 Sustainability Report (aws.amazon.com/sustainability): AWS global PUE 1.15 (2024)"),
    "azure": (1.18, ("Microsoft datacenter efficiency disclosures (datacenters.microsoft.com/sustainability/"
                     "efficiency): global operating PUE 1.18 (fiscal year 2023)")),
})

_WORLD_FALLBACK = 475.0  # the figure CodeCarbon ships, used when its files are absent
_WORLD_SOURCE = "IEA Global Energy & CO2 Status Report 2019 (data for 2018)"
_ALPHA3 = re.compile(r"^[A-Z]{3}$")
_ALPHA2 = re.compile(r"^[A-Z]{2}$")
_CLOUD_PART = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_NOT_ISO = {"UK": "GB", "EL": "GR"}  # codes people type that ISO 3166-1 reserves for something else


@dataclass(frozen=True)
class GridIntensity:
    """An annual-average grid carbon intensity and where it comes from.

    Attributes:
        intensity_g_per_kwh: grams of CO2-equivalent per kWh of electricity.
        region: ``"FRA"`` (ISO alpha-3), ``"gcp:europe-west9"``, ``"user"`` or ``"world"``.
        region_name: ``"France"``, ``"GCP europe-west9 (Paris, France)"``, ``"user-given"``, ``"World average"``.
        source: the table file, the CodeCarbon version and the upstream source the table names.
        data_year: the year the figure describes, ``None`` when the table does not say.
        assumed: ``True`` only when nothing was given and the world average was used.
    """

    intensity_g_per_kwh: float
    region: str
    region_name: str
    source: str
    data_year: int | None
    assumed: bool

    def label(self) -> str:
        """A short form for one-line summaries: ``"France 2023, CodeCarbon 3.3.2 global_energy_mix.json"``."""
        if self.region == "user":
            return "user-given"
        year = f" {self.data_year}" if self.data_year is not None else ""
        return f"{self.region_name}{year}, {self.source.split(': ', 1)[0]}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GridIntensity:
        year = data.get("data_year")
        return cls(float(data["intensity_g_per_kwh"]), str(data["region"]), str(data["region_name"]),
                   str(data["source"]), None if year is None else int(year), bool(data["assumed"]))


@dataclass(frozen=True)
class CarbonSettings:
    """Where the energy was used and how much data-centre overhead to add. Validates itself.

    Give at most one of ``country``, ``cloud`` and ``intensity_g_per_kwh``; with none, the world average
    is used and marked as assumed. Codes are normalised (country upper-case, cloud lower-case). Tables
    are read only by :meth:`resolve_intensity`, so building settings never touches a file.

    Args:
        country: ISO 3166-1 alpha-3 (``"FRA"``) or alpha-2 (``"FR"``) code, any case.
        cloud: ``"provider:region"``, e.g. ``"gcp:europe-west1"``.
        intensity_g_per_kwh: your own grid intensity, 0 to 2000 gCO2e/kWh.
        pue: power usage effectiveness, a number in [1.0, 3.0] or a name from :data:`PUE_PRESETS`.

    Raises:
        ConfigError: for two locations at once, a malformed code, or a value out of range.
    """

    country: str | None = None
    cloud: str | None = None
    intensity_g_per_kwh: float | None = None
    pue: float | str = 1.0

    def __post_init__(self) -> None:
        given = [f"{n}={v!r}" for n, v in (("country", self.country), ("cloud", self.cloud),
                                           ("intensity_g_per_kwh", self.intensity_g_per_kwh)) if v is not None]
        if len(given) > 1:
            raise ConfigError(f"give at most one of country, cloud and intensity (--country/--cloud/--intensity); "
                              f"got {' and '.join(given)}")
        if self.country is not None:
            object.__setattr__(self, "country", _check_country(self.country))
        if self.cloud is not None:
            object.__setattr__(self, "cloud", _check_cloud(self.cloud))
        if self.intensity_g_per_kwh is not None:
            object.__setattr__(self, "intensity_g_per_kwh", _check_intensity(self.intensity_g_per_kwh))
        object.__setattr__(self, "pue", _check_pue(self.pue))

    def resolve_intensity(self) -> GridIntensity:
        """Look the grid intensity up (tables are read on first use, then cached).

        Raises:
            ConfigError: for an unknown country or region (with close matches and how to list them), or
                when CodeCarbon's data files are missing and a lookup needs them.
        """
        if self.intensity_g_per_kwh is not None:
            return GridIntensity(self.intensity_g_per_kwh, "user", "user-given",
                                 "given by the user (intensity_g_per_kwh / --intensity)", None, False)
        if self.country is not None:
            return _country_intensity(self.country)
        if self.cloud is not None:
            return _cloud_intensity(self.cloud)
        return _world_intensity()

    def resolve_pue(self) -> tuple[float, str]:
        """The PUE value and a sentence saying where it comes from."""
        if isinstance(self.pue, str):
            value, source = PUE_PRESETS[self.pue]
            return value, f"preset {self.pue!r}: {source}"
        if self.pue == 1.0:
            return 1.0, "PUE 1.0: device energy only, no data-centre overhead counted"
        return float(self.pue), f"user-given PUE {self.pue:g}"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CarbonSettings:
        return cls(data.get("country"), data.get("cloud"), data.get("intensity_g_per_kwh"), data.get("pue", 1.0))


@dataclass(frozen=True)
class CarbonEstimate:
    """CO2e of an amount of energy: ``co2e_g = energy_j / 3.6e6 * pue * intensity_g_per_kwh``.

    Attributes:
        energy_j: the energy converted, in joules (before PUE).
        pue: power usage effectiveness applied; ``pue_source`` says why.
        intensity_g_per_kwh: grid intensity applied, in gCO2e/kWh; ``intensity`` holds its source.
        co2e_g: grams of CO2-equivalent.
    """

    energy_j: float
    pue: float
    pue_source: str
    intensity_g_per_kwh: float
    co2e_g: float
    intensity: GridIntensity

    def describe(self) -> str:
        """One line: ``"12.3 g CO2e = 0.0042 kWh x PUE 1.0 x 56 g/kWh (France 2023, CodeCarbon ...)"``."""
        line = (f"{self.co2e_g:.3g} g CO2e = {self.energy_j / J_PER_KWH:.3g} kWh x PUE {float(self.pue)!r} x "
                f"{self.intensity_g_per_kwh:.4g} g/kWh ({self.intensity.label()})")
        if self.intensity.assumed:
            line += " (ASSUMED world average: pass --country/--cloud/--intensity)"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "intensity": self.intensity.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CarbonEstimate:
        return cls(float(data["energy_j"]), float(data["pue"]), str(data["pue_source"]),
                   float(data["intensity_g_per_kwh"]), float(data["co2e_g"]),
                   GridIntensity.from_dict(data["intensity"]))


def estimate_carbon(energy_j: float, settings: CarbonSettings | None = None) -> CarbonEstimate:
    """Convert energy to CO2e. Pure apart from the cached table lookups.

    Args:
        energy_j: energy in joules, finite and >= 0.
        settings: where and with which PUE; default: world average (assumed), PUE 1.0.

    Raises:
        ConfigError: for a negative or non-finite energy, or whatever :meth:`CarbonSettings.resolve_intensity`
            raises.
    """
    if not _is_number(energy_j) or energy_j < 0:
        raise ConfigError(f"energy_j must be a finite number of joules >= 0, got {energy_j!r}")
    settings = CarbonSettings() if settings is None else settings
    if not isinstance(settings, CarbonSettings):
        raise ConfigError(f"settings must be a greenmeter CarbonSettings, not {type(settings).__name__}")
    grid = settings.resolve_intensity()
    pue, pue_source = settings.resolve_pue()
    co2e = energy_j / J_PER_KWH * pue * grid.intensity_g_per_kwh
    return CarbonEstimate(float(energy_j), pue, pue_source, grid.intensity_g_per_kwh, co2e, grid)


def list_countries() -> list[tuple[str, str, float, int | None]]:
    """Every country in CodeCarbon's table: ``(alpha3, name, g/kWh, year)``, sorted by code."""
    table = tables.countries()[0]
    return sorted((code, name, value, year) for code, (name, value, year) in table.items())


def list_cloud_regions() -> list[tuple[str, str, float]]:
    """Every cloud region in CodeCarbon's table: ``("gcp:europe-west9", "Paris, France", g/kWh)``, sorted."""
    table = tables.clouds()[0]
    return sorted((key, row[1], row[2]) for key, row in table.items())


# ---- validation -------------------------------------------------------------------------------------

def _check_country(value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"country must be a string such as 'FRA' or 'FR', not {type(value).__name__}")
    code = value.strip().upper()
    if _ALPHA3.match(code) or _ALPHA2.match(code):
        return code
    hint = _name_hint(value.strip())
    raise ConfigError(f"country must be an ISO 3166-1 alpha-3 (e.g. 'FRA') or alpha-2 (e.g. 'FR') code, got "
                      f"{value!r}{hint}; run `greenmeter carbon --list-countries` to see the codes")


def _check_cloud(value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"cloud must be a string 'provider:region', not {type(value).__name__}")
    key = value.strip().lower()
    provider, sep, region = key.partition(":")
    if sep and _CLOUD_PART.match(provider) and _CLOUD_PART.match(region):
        return f"{provider}:{region}"
    hint = ""
    for name in ("aws", "gcp", "azure"):
        if not sep and key.startswith(name) and key[len(name):len(name) + 1] in ("-", "_", "/", " "):
            hint = f"; did you mean '{name}:{key[len(name) + 1:].strip()}'?"
    raise ConfigError(f"cloud must be 'provider:region' with a colon, e.g. 'gcp:europe-west1' or 'aws:eu-west-3', "
                      f"got {value!r}{hint}; run `greenmeter carbon --list-regions` to see the regions")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_intensity(value: object) -> float:
    if not _is_number(value):
        raise ConfigError(f"intensity_g_per_kwh must be a finite number of gCO2e/kWh, got {value!r}")
    if value < 0:
        raise ConfigError(f"intensity_g_per_kwh={value!r} is negative: a grid intensity is at least 0 gCO2e/kWh")
    if value > MAX_INTENSITY_G_PER_KWH:
        raise ConfigError(
            f"intensity_g_per_kwh={value!r} is above {MAX_INTENSITY_G_PER_KWH:g} gCO2e/kWh: the dirtiest national "
            "grid in CodeCarbon's table averages about 1,300 g/kWh, so this is most likely another unit "
            "(g/MWh? lb/MWh?); convert it to grams of CO2e per kWh")
    return float(value)


def _check_pue(value: object) -> float | str:
    if isinstance(value, str):
        name = value.strip().lower()
        if name in PUE_PRESETS:
            return name
        try:
            value = float(name)
        except ValueError:
            raise ConfigError(f"unknown PUE preset {value!r}: use a number in [1.0, 3.0] or one of "
                              f"{', '.join(PUE_PRESETS)}") from None
    if not _is_number(value):
        raise ConfigError(f"PUE must be a finite number in [1.0, 3.0] or a preset name, got {value!r}")
    low, high = PUE_RANGE
    if value < low:
        raise ConfigError(f"PUE {value!r} is below 1.0, which is physically impossible: PUE is total facility "
                          "energy divided by IT energy, so it is at least 1.0 (1.0 counts the device only)")
    if value > high:
        raise ConfigError(f"PUE {value!r} is above 3.0, absurd for a data centre (the industry average is about "
                          "1.58, Uptime Institute 2023): check the value, or use a preset "
                          f"({', '.join(PUE_PRESETS)})")
    return float(value)


def _suggest(word: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


# ---- lookups ----------------------------------------------------------------------------------------

def _country_intensity(code: str) -> GridIntensity:
    table, path, version = tables.countries()
    alpha3 = code
    if len(code) == 2:
        alpha3 = _alpha2_to_alpha3(code)
    if alpha3 not in table:
        shown, hint = (f"{code!r}", _suggest(code, list(table))) if alpha3 == code else (f"{code!r} ({alpha3})", "")
        raise ConfigError(f"country {shown} is not in CodeCarbon {version}'s table ({Path(path).name}){hint}; run "
                          "`greenmeter carbon --list-countries` to see the codes, or pass the grid intensity "
                          "yourself (--intensity)")
    name, value, year = table[alpha3]
    source = (f"CodeCarbon {version} global_energy_mix.json: carbon_intensity of {alpha3}"
              f"{f' for {year}' if year else ''}, from Our World in Data 'Carbon intensity of electricity "
              "generation' (Ember, Energy Institute)")
    return GridIntensity(value, alpha3, name, source, year, False)


def _alpha2_to_alpha3(code: str) -> str:
    mapping = tables.iso3166_alpha2_to_alpha3()
    if mapping is None:
        raise ConfigError(f"cannot map the alpha-2 code {code!r}: the ISO 3166-1 table comes from pycountry "
                          "(installed with codecarbon), which is missing; pass the alpha-3 code (e.g. 'FRA')")
    if code in mapping:
        return mapping[code]
    hint = f"; did you mean {_NOT_ISO[code]} ({mapping.get(_NOT_ISO[code])})?" if code in _NOT_ISO else ""
    raise ConfigError(f"{code!r} is not an ISO 3166-1 alpha-2 code{hint or _suggest(code, list(mapping))}; run "
                      "`greenmeter carbon --list-countries` to see the alpha-3 codes")


def _cloud_intensity(key: str) -> GridIntensity:
    table, path, version = tables.clouds()
    if key not in table:
        provider = key.partition(":")[0]
        providers = sorted({k.partition(":")[0] for k in table})
        if provider not in providers:
            raise ConfigError(f"CodeCarbon {version}'s cloud table ({Path(path).name}) has no regions for "
                              f"provider {provider!r} (it lists: {', '.join(providers)}); pass the region's "
                              "country instead (--country, e.g. FRA for Paris) or the provider's published "
                              "intensity (--intensity)")
        raise ConfigError(f"cloud region {key!r} is not in CodeCarbon {version}'s table ({Path(path).name})"
                          f"{_suggest(key, list(table))}; run `greenmeter carbon --list-regions` to see the regions")
    region_name, _, value, upstream = table[key]
    source = (f"CodeCarbon {version} cloud/impact.csv: impact of {key}, from {upstream or 'an unnamed source'}"
              " (the table gives no year)")
    return GridIntensity(value, key, region_name, source, None, False)


def _world_intensity() -> GridIntensity:
    found = tables.world_average()
    if found is None:
        return GridIntensity(_WORLD_FALLBACK, "world", "World average", f"greenmeter's copy of CodeCarbon's world "
                             f"average: {_WORLD_SOURCE} (codecarbon's data files were not found)", 2018, True)
    (value, upstream), _, version = found
    year = 2018 if value == _WORLD_FALLBACK and "status-report-2019" in upstream else None
    named = _WORLD_SOURCE if year else upstream
    source = f"CodeCarbon {version} carbon_intensity_per_source.json: world_average, from {named} ({upstream})"
    return GridIntensity(value, "world", "World average", source, year, True)


def _name_hint(text: str) -> str:
    """`` ('France' looks like a name: did you mean FRA?)`` when the country table is readable and close."""
    if len(text) < 3 or tables.codecarbon_data_dir() is None:
        return ""
    import difflib

    by_name = {name.lower(): code for code, (name, _, _) in tables.countries()[0].items()}
    close = difflib.get_close_matches(text.lower(), list(by_name), n=1, cutoff=0.75)
    return f" ('{text}' looks like a name: did you mean {by_name[close[0]]}?)" if close else ""
