"""How far off an energy figure may be: the systematic band of a source, apart from run-to-run spread.

Two questions get two answers in greenmeter. "How much did the runs vary?" is the confidence interval of
repeated measurements (:mod:`greenmeter.stats`). "How wrong could this source be?" is the **band** here: the
range the figure would take if the source's own constants and resolution were anywhere in their stated ranges.

- A source states it once, as a :class:`BandModel` on each :class:`~greenmeter.sources.base.Domain`: a factor
  range for the constants its figure is proportional to (an estimate's watts per vCPU, a memory source's watts
  per GB; 1 for a counter), and an independent half-width per window (the CPU-time tick, a counter's unit, and
  its update period times the highest mean power the window allows: a counter read at an edge may be one update old).
- Each window's figure gets a :class:`Band` from it (:meth:`BandModel.band`). Bands add (:meth:`Band.plus`),
  scale (:meth:`Band.scaled`: per sample) and divide (:func:`ratio_band`).

Addition is worst-case: the independent half-widths add, and terms of one model (the same constants) add their
energies, since the one unknown constant scales all of them alike. That last point is what makes a ratio of two
estimates on one machine much tighter than either figure: the shared factor cancels, and :func:`ratio_band`
says which models cancelled. A band is a bound under the stated ranges, not a probability interval.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SHORT_WINDOW_PERIODS", "Band", "BandModel", "BandTerm", "RatioBand", "ratio_band", "sum_bands"]

#: A window shorter than this many of its source's update periods says so in its band (and NVML flags it).
SHORT_WINDOW_PERIODS = 10

#: Beyond this many distinct models a ratio is bounded without cancellation (2**k corners otherwise).
_MAX_SHARED_MODELS = 10


def _positive_factor(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class BandTerm:
    """The part of a figure that one model's constants scale.

    Attributes:
        model: what the constants are, precisely enough that two terms with the same text share them, e.g.
            ``"cpu-estimate W per busy vCPU: 2.087 W (CCF AMD EPYC 1st-3rd Gen range 1.69-2.55 W)"``.
        energy_j: the figure's energy this term covers, in joules (per sample after :meth:`Band.scaled`).
        low_factor, high_factor: the true energy of this term lies within ``energy_j`` times these.
    """

    model: str
    energy_j: float
    low_factor: float
    high_factor: float

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "energy_j": self.energy_j, "low_factor": self.low_factor,
                "high_factor": self.high_factor}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BandTerm:
        return cls(str(data["model"]), float(data["energy_j"]), float(data["low_factor"]), float(data["high_factor"]))


@dataclass(frozen=True)
class Band:
    """The systematic band of one energy figure: ``low_j <= true <= high_j`` under the source's stated ranges.

    Attributes:
        value_j: the figure itself, in joules (or joules per sample).
        terms: the parts scaled by a model's constants (empty for a counter).
        spread_j: the independent half-width, in joules: ticks, counter units, update periods.
        basis: what the band comes from, one line per source.
    """

    value_j: float
    terms: tuple[BandTerm, ...] = ()
    spread_j: float = 0.0
    basis: tuple[str, ...] = ()

    @property
    def low_j(self) -> float:
        """The lowest the true figure may be, in joules (never below 0)."""
        modelled = sum(t.energy_j for t in self.terms)
        low = self.value_j - modelled + sum(t.energy_j * t.low_factor for t in self.terms) - self.spread_j
        return max(0.0, low)

    @property
    def high_j(self) -> float:
        """The highest the true figure may be, in joules."""
        modelled = sum(t.energy_j for t in self.terms)
        return self.value_j - modelled + sum(t.energy_j * t.high_factor for t in self.terms) + self.spread_j

    @property
    def relative(self) -> tuple[float, float]:
        """``(low, high)`` as fractions of the value (``(1.0, 1.0)`` for a zero figure with no spread)."""
        if self.value_j <= 0:
            return (1.0, 1.0) if self.high_j <= 0 else (0.0, math.inf)
        return self.low_j / self.value_j, self.high_j / self.value_j

    def plus(self, other: Band) -> Band:
        """The band of the sum of two figures (worst case: spreads add; one model's terms add their energies)."""
        terms: dict[tuple[str, float, float], float] = {}
        for t in (*self.terms, *other.terms):
            key = (t.model, t.low_factor, t.high_factor)
            terms[key] = terms.get(key, 0.0) + t.energy_j
        return Band(
            self.value_j + other.value_j,
            tuple(BandTerm(m, e, lo, hi) for (m, lo, hi), e in terms.items()),
            self.spread_j + other.spread_j,
            tuple(dict.fromkeys((*self.basis, *other.basis))),
        )

    def scaled(self, factor: float) -> Band:
        """The band of the figure times ``factor`` >= 0 (e.g. ``1 / samples`` for joules per sample)."""
        factor = _positive_factor("factor", factor)
        return Band(self.value_j * factor, tuple(BandTerm(t.model, t.energy_j * factor, t.low_factor, t.high_factor)
                                                 for t in self.terms), self.spread_j * factor, self.basis)

    def describe(self, unit: str = "J", digits: int = 4) -> str:
        """``"band 1.21-1.83 J (-18%/+22%)"`` for people."""
        lo, hi = self.relative
        rel = f" ({(lo - 1) * 100:+.0f}%/{(hi - 1) * 100:+.0f}%)" if self.value_j > 0 and math.isfinite(hi) else ""
        return f"band {self.low_j:.{digits}g}-{self.high_j:.{digits}g} {unit}{rel}"

    def to_dict(self) -> dict[str, Any]:
        return {"value_j": self.value_j, "low_j": self.low_j, "high_j": self.high_j,
                "terms": [t.to_dict() for t in self.terms], "spread_j": self.spread_j, "basis": list(self.basis)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Band:
        return cls(float(data["value_j"]), tuple(BandTerm.from_dict(t) for t in data.get("terms", ())),
                   float(data.get("spread_j", 0.0)), tuple(data.get("basis", ())))


def sum_bands(bands: Iterable[Band | None]) -> Band | None:
    """The band of a sum of figures; ``None`` when any of them has none (a band cannot be partly stated)."""
    total: Band | None = None
    for band in bands:
        if band is None:
            return None
        total = band if total is None else total.plus(band)
    return total


@dataclass(frozen=True)
class BandModel:
    """How a source's figures may be off, stated once per domain; :meth:`band` applies it to a window.

    For a window of energy ``E`` over ``T`` seconds the band is
    ``[E * low_factor - h, E * high_factor + h]`` with ``h = fixed_j + power_period_s * E / (T - power_period_s)``:
    an edge reading may be one period old, so ``E / (T - period)`` is the highest mean power the figure allows
    (``E / T`` for a window not longer than one period, which is flagged unresolved anyway).

    Attributes:
        model: what the scaled constants are (two domains with the same text share them: see :class:`BandTerm`);
            empty when nothing scales the figure (a counter).
        low_factor, high_factor: the range of the constants the figure is proportional to, as factors of the
            value used (e.g. 1.69/2.087 and 2.55/2.087 for CCF's AMD EPYC per-vCPU maximum powers).
        fixed_j: independent half-width per window, in joules (the CPU-time tick at the power it is charged,
            a counter's unit at both edges).
        power_period_s: independent half-width per watt of the window's mean power, in seconds (a counter's
            update period or a power sample interval: an edge read may be one period old).
        basis: what the band comes from, one line (stated with the constants and their sources).
    """

    model: str = ""
    low_factor: float = 1.0
    high_factor: float = 1.0
    fixed_j: float = 0.0
    power_period_s: float = 0.0
    basis: str = ""

    def __post_init__(self) -> None:
        for name in ("low_factor", "high_factor", "fixed_j", "power_period_s"):
            _positive_factor(name, getattr(self, name))
        if not self.low_factor <= 1.0 <= self.high_factor:
            raise ValueError(f"a band must hold its value: low_factor {self.low_factor} <= 1 <= high_factor "
                             f"{self.high_factor}")

    def band(self, energy_j: float, duration_s: float, *, resolved: bool = True) -> Band:
        """The band of one window's figure.

        Args:
            energy_j: the window's energy of this domain, in joules.
            duration_s: the window's length, in seconds.
            resolved: ``False`` for a window shorter than the source's update period: its band then says that
                its width rests on the window's own mean power, which the source could not resolve.
        """
        period = self.power_period_s
        # a reading may miss up to one period of power at an edge, so the true mean power is at most E / (T - period)
        if resolved and duration_s > period:
            power = energy_j / (duration_s - period)
        else:
            power = energy_j / duration_s if duration_s > 0 else 0.0
        spread = self.fixed_j + period * abs(power)
        terms = ()
        if self.model and (self.low_factor != 1.0 or self.high_factor != 1.0):
            terms = (BandTerm(self.model, energy_j, self.low_factor, self.high_factor),)
        basis = (self.basis,) if self.basis else ()
        if not resolved:
            basis += ("the window was shorter than the source's update period, so its own mean power (on which "
                      "this band rests) is not resolved either",)
        elif period > 0 and duration_s < SHORT_WINDOW_PERIODS * period:
            basis += (f"the window ({duration_s * 1e3:.4g} ms) is shorter than {SHORT_WINDOW_PERIODS} update periods "
                      f"({period * 1e3:g} ms): each edge may lag by one period x the power, up to "
                      f"{period / duration_s:.0%} of the energy",)
        return Band(energy_j, terms, spread, basis)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RatioBand:
    """The systematic band of a ratio ``a / b`` of two figures (e.g. a variant's energy over the baseline's).

    Attributes:
        value: ``a / b``.
        low, high: its bounds under both figures' stated ranges, each shared model taking one value for both.
        shared: the models both figures share, whose constants cancel in the ratio (empty: nothing cancels).
    """

    value: float
    low: float
    high: float
    shared: tuple[str, ...] = ()

    def describe(self) -> str:
        cancel = (f"; the shared model constants cancel ({len(self.shared)} shared)" if self.shared else "")
        return f"band {self.low:.4g}-{self.high:.4g}x{cancel}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; an unbounded end (a denominator that may be 0) is written as ``None``."""
        return {"value": _finite(self.value), "low": _finite(self.low), "high": _finite(self.high),
                "shared": list(self.shared)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RatioBand:
        def read(key: str) -> float:
            value = data.get(key)
            return math.inf if value is None else float(value)

        return cls(read("value"), read("low"), read("high"), tuple(data.get("shared", ())))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _corner_value(band: Band, choice: Mapping[str, float]) -> float:
    """The figure with each model's terms at the chosen factor (models not in ``choice``: their own bound)."""
    value = band.value_j
    for t in band.terms:
        value += t.energy_j * (choice[t.model] - 1.0) if t.model in choice else 0.0
    return value


def ratio_band(a: Band, b: Band) -> RatioBand:
    """The band of ``a / b``, with the constants of models both share taking one value for both.

    Each model's factor is tried at its low and high end (the ratio is monotone in each), the independent
    spreads pushing apart; so a ratio of two estimates from the same model is bounded by their spreads alone.

    Args:
        a: the numerator's band (e.g. a variant's joules per sample).
        b: the denominator's band (e.g. the baseline's).

    Returns:
        The ratio's band; infinite ``high`` when ``b`` may be 0.
    """
    value = a.value_j / b.value_j if b.value_j > 0 else math.inf
    models_a = {t.model: (t.low_factor, t.high_factor) for t in a.terms}
    models_b = {t.model: (t.low_factor, t.high_factor) for t in b.terms}
    shared = tuple(m for m in models_a if m in models_b and models_a[m] == models_b[m])
    if len(shared) > _MAX_SHARED_MODELS:
        shared = ()
    low, high = math.inf, -math.inf
    unshared_a = Band(a.value_j, tuple(t for t in a.terms if t.model not in shared), a.spread_j)
    unshared_b = Band(b.value_j, tuple(t for t in b.terms if t.model not in shared), b.spread_j)
    for corner in itertools.product(*((models_a[m][0], models_a[m][1]) for m in shared)):
        choice = dict(zip(shared, corner))
        num = Band(_corner_value(a, choice), unshared_a.terms, a.spread_j)
        den = Band(_corner_value(b, choice), unshared_b.terms, b.spread_j)
        low = min(low, num.low_j / den.high_j if den.high_j > 0 else math.inf)
        high = max(high, num.high_j / den.low_j if den.low_j > 0 else math.inf)
    return RatioBand(value, low, high, shared)
