"""Per-layer sensitivity: each layer's metric when that layer alone is quantized or pruned.

:func:`greenmeter.comparison.sensitivity.layer_sensitivity` makes a :class:`Sensitivity`; an optimizer reads it
to choose which layers a method touches (``sensitive_layers``, ``worst``) and a person reads ``table()``.
A drop is ``baseline - probed``: positive is worse. A probe that does not apply to a layer (int4 on a
convolution) has ``None`` for its metric, drop and count, never a number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from greenmeter._errors import ConfigError
from greenmeter._text import text_table
from greenmeter.records.encoding import check_record_version, finite_json, parse_record_json

__all__ = ["SENSITIVITY_SCHEMA_VERSION", "LayerSensitivity", "Sensitivity"]

#: 1: the first version.
SENSITIVITY_SCHEMA_VERSION = 1


def _encoded(data: Mapping[str, float | None]) -> dict[str, Any]:
    """Metrics or drops for strict JSON: a NaN or infinite value as the text ``"nan"``, ``"inf"`` or ``"-inf"``
    (which ``float`` reads back), so it is not confused with ``None`` (a probe that does not apply)."""
    return {k: v if v is None or math.isfinite(v) else str(v) for k, v in data.items()}


def _optional(data: Mapping[str, Any], cast: type) -> dict[str, Any]:
    return {str(k): None if v is None else cast(v) for k, v in data.items()}


def _severity(drop: float | None) -> float:
    """A drop for ranking: a NaN drop (the probed metric was NaN) ranks as the worst."""
    return math.inf if drop is None or math.isnan(drop) else drop


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's metric under each probe, with that layer alone changed.

    Attributes:
        name: the module's qualified name in the model (``"classifier.2"``).
        kind: the module's class name (``"Linear"``, ``"Conv2d"``).
        params: the layer's parameters (weight and bias).
        metrics: probe -> the model's metric with this layer probed; ``None`` where the probe does not apply.
        drops: probe -> ``baseline_metric - metric`` (positive is worse); ``None`` where it does not apply.
        changed: probe -> samples whose correctness changed (either way) under the built-in accuracy;
            ``None`` for another metric or where the probe does not apply.

    A probe that makes the metric NaN or infinite (NaN logits) keeps that value; ``to_dict`` writes it as the
    text ``"nan"`` or ``"inf"``, and the ranking helpers of :class:`Sensitivity` count a NaN drop as the largest.
    """

    name: str
    kind: str
    params: int
    metrics: Mapping[str, float | None]
    drops: Mapping[str, float | None]
    changed: Mapping[str, int | None]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": self.params, "metrics": _encoded(self.metrics),
                "drops": _encoded(self.drops), "changed": dict(self.changed)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerSensitivity:
        return cls(str(data["name"]), str(data["kind"]), int(data["params"]), _optional(data["metrics"], float),
                   _optional(data["drops"], float), _optional(data.get("changed", {}), int))


@dataclass(frozen=True)
class Sensitivity:
    """Per-layer sensitivity of a model: the metric drop when one layer alone is quantized or pruned.

    Attributes:
        metric_name: the metric's name (``"accuracy"`` for the built-in top-1 accuracy).
        baseline_metric: the unchanged model's metric on the same data.
        samples: evaluation samples each metric was computed on.
        probes: the probes run, in order (``"int8"``, ``"int4"``, ``"int4:64"``, ``"prune:0.5"``).
        layers: one entry per probed layer, in the model's module order.
        calibration: where the int8 probe's activation ranges came from, in words.
        schema_version: the record's schema version.
    """

    metric_name: str
    baseline_metric: float
    samples: int
    probes: tuple[str, ...]
    layers: tuple[LayerSensitivity, ...]
    calibration: str
    schema_version: int = SENSITIVITY_SCHEMA_VERSION

    def layer(self, name: str) -> LayerSensitivity:
        """The entry of the layer called ``name``.

        Raises:
            ConfigError: no layer of that name was probed.
        """
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise ConfigError(f"no layer named {name!r} was probed; layers: {[e.name for e in self.layers]}")

    def _probe(self, probe: str) -> str:
        if probe not in self.probes:
            raise ConfigError(f"no probe {probe!r} was run; probes: {list(self.probes)}")
        return probe

    def drop(self, layer: str, probe: str) -> float | None:
        """The metric drop (``baseline - probed``, positive is worse) of ``layer`` under ``probe``.

        Returns:
            The drop, or ``None`` where the probe does not apply to the layer (int4 on a convolution).

        Raises:
            ConfigError: an unknown layer or probe.
        """
        return self.layer(layer).drops[self._probe(probe)]

    def sensitive_layers(self, probe: str, threshold: float) -> tuple[str, ...]:
        """The layers whose drop under ``probe`` exceeds ``threshold``, most sensitive first.

        Args:
            probe: one of :attr:`probes`.
            threshold: a drop in the metric's units (``0.01`` is one accuracy point); layers the probe does not
                apply to are never listed, and a NaN drop (the probed metric was NaN) counts as the largest.

        Raises:
            ConfigError: an unknown probe.
        """
        self._probe(probe)
        hits = [(_severity(e.drops[probe]), i, e.name) for i, e in enumerate(self.layers)
                if e.drops[probe] is not None and _severity(e.drops[probe]) > threshold]
        return tuple(name for _, _, name in sorted(hits, key=lambda h: (-h[0], h[1])))

    def worst(self, probe: str) -> tuple[str, float] | None:
        """The layer with the largest drop under ``probe`` and that drop; ``None`` if the probe applied to none.

        Raises:
            ConfigError: an unknown probe.
        """
        self._probe(probe)
        found = [(_severity(e.drops[probe]), -i, e.name) for i, e in enumerate(self.layers)
                 if e.drops[probe] is not None]
        if not found:
            return None
        _, index, name = max(found)  # the first layer in model order among equal drops
        return name, self.layers[-index].drops[probe]  # type: ignore[return-value]

    def table(self) -> str:
        """A plain-text table: one row per layer, its parameters and its drop under each probe.

        A drop is followed by the samples whose correctness changed, under the built-in accuracy; ``n/a``
        marks a probe that does not apply to the layer.
        """
        total = sum(e.params for e in self.layers) or 1
        rows: list[list[object]] = [["layer", "kind", "params", "share", *(f"drop {p}" for p in self.probes)]]
        for e in self.layers:
            cells: list[object] = [e.name, e.kind, e.params, f"{e.params / total:.1%}"]
            for p in self.probes:
                drop, changed = e.drops.get(p), e.changed.get(p)
                if drop is None:
                    cells.append("n/a")
                else:
                    cells.append(f"{drop:.4f}" + ("" if changed is None else f" ({changed} changed)"))
            rows.append(cells)
        head = (f"{self.metric_name} {self.baseline_metric:.4f} on {self.samples} samples; "
                f"drop = baseline - probed (positive is worse); share = of the probed layers' parameters; "
                f"int8 calibration: {self.calibration}")
        return f"{head}\n{text_table(rows, left=(0, 1))}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric_name": self.metric_name, "baseline_metric": self.baseline_metric, "samples": self.samples,
                "probes": list(self.probes), "layers": [e.to_dict() for e in self.layers],
                "calibration": self.calibration, "schema_version": self.schema_version}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivity:
        """The record from :meth:`to_dict`'s form.

        Raises:
            ConfigError: a schema version newer than this greenmeter reads.
        """
        check_record_version(data, SENSITIVITY_SCHEMA_VERSION, "sensitivity")
        return cls(str(data["metric_name"]), float(data["baseline_metric"]), int(data["samples"]),
                   tuple(str(p) for p in data["probes"]), tuple(LayerSensitivity.from_dict(e) for e in data["layers"]),
                   str(data.get("calibration", "")), SENSITIVITY_SCHEMA_VERSION)

    def to_json(self, indent: int | None = 2) -> str:
        """The record as JSON (non-finite numbers written as ``null``)."""
        return json.dumps(finite_json(self.to_dict()), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Sensitivity:
        """The record from :meth:`to_json`'s text.

        Raises:
            ConfigError: text that is not a sensitivity record, or a newer schema version.
        """
        return cls.from_dict(parse_record_json(text, "sensitivity", "layers"))
