"""The records a comparison produces: one :class:`VariantResult` per variant inside a :class:`Comparison`.

Both are frozen, carry a schema version, and round-trip through JSON (``to_json``/``from_json``). pandas
is a view (``Comparison.to_frame()``), not the storage. Units live in the field names: joules
(``_j``), seconds (``_s``), bytes (``_b``), grams of CO2e (``_g``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from greenmeter._errors import ConfigError
from greenmeter._text import text_table
from greenmeter.carbon.settings import CarbonEstimate
from greenmeter.records.encoding import check_record_version, finite_json, parse_record_json
from greenmeter.records.measurement import HostInfo, LatencyStats
from greenmeter.sources.band import Band, RatioBand
from greenmeter.stats import Interval, Significance, describe_test, pareto_front

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COMPARISON_SCHEMA_VERSION", "BaselineDelta", "Comparison", "MakingCost", "MakingStep", "VariantResult",
           "band_note", "change_text", "measurable_saving", "metric_text", "with_measurable_front"]

#: Version of the comparison record layout; ``from_dict`` refuses newer versions. Version 2 added
#: ``BaselineDelta.metric_test`` and put only measurable savings on the Pareto front; version 1 records load.
#: Version 3 added ``VariantResult.energy_band`` and ``BaselineDelta.energy_ratio_band``; older records read
#: without them.
COMPARISON_SCHEMA_VERSION = 3

VariantStatus = Literal["ok", "failed"]
ComparisonStatus = Literal["complete", "interrupted"]


def _opt(cls: Any, data: Any) -> Any:
    return None if data is None else cls.from_dict(data)


@dataclass(frozen=True)
class MakingStep:
    """One step of a stacked recipe's making (``"channels:0.5"`` of ``"channels:0.5+int8-static"``).

    Attributes:
        recipe: the step's spec.
        energy_j: energy of the step's own making window, in joules.
        duration_s: its wall-clock duration, in seconds.
        co2e_g: the energy as grams of CO2e with the comparison's carbon settings.
        trains: whether the step trained.
    """

    recipe: str
    energy_j: float
    duration_s: float
    co2e_g: float | None = None
    trains: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MakingStep:
        return cls(str(data["recipe"]), float(data["energy_j"]), float(data["duration_s"]), data.get("co2e_g"),
                   bool(data.get("trains", False)))


@dataclass(frozen=True)
class MakingCost:
    """The energy spent producing a variant (training, fine-tuning, calibration, conversion).

    Attributes:
        energy_j: energy of the making window, in joules (of a stacked recipe: the sum of its steps' windows).
        duration_s: its wall-clock duration, in seconds (of a stacked recipe: the sum of its steps').
        provenance: how the energy was obtained, one line per source (``measured: ...`` or ``estimated: ...``).
        co2e_g: the energy as grams of CO2e with the comparison's carbon settings.
        trains: whether the recipe trained (fine-tuning, distillation, QAT...), rather than only converting.
        steps: a stacked recipe's steps, each measured in its own window, in the order applied; ``()`` otherwise.
    """

    energy_j: float
    duration_s: float
    provenance: tuple[str, ...]
    co2e_g: float | None = None
    trains: bool = False
    steps: tuple[MakingStep, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "provenance": list(self.provenance), "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MakingCost:
        return cls(float(data["energy_j"]), float(data["duration_s"]), tuple(data["provenance"]),
                   data.get("co2e_g"), bool(data.get("trains", False)),
                   tuple(MakingStep.from_dict(s) for s in data.get("steps", ())))


def measurable_saving(significance: Significance | None) -> bool:
    """Whether an energy test shows a measurable saving: energy per sample significantly lower than the baseline's.

    Args:
        significance: the test of the variant's energy per sample against the baseline's (``None``: untested).

    Returns:
        ``True`` when the test is significant (``p < alpha``) and the variant's mean is the lower one.
    """
    return bool(significance is not None and significance.significant and significance.diff_mean < 0)


@dataclass(frozen=True)
class BaselineDelta:
    """A variant against the baseline. Ratios are variant / baseline; changes are variant minus baseline.

    Attributes:
        metric_change: change in the metric (for accuracy, a fraction: -0.004 is -0.4 percentage points).
        energy_ratio: energy per sample, variant / baseline (0.5 = half the energy).
        latency_ratio: p50 latency per batch, variant / baseline.
        size_ratio: serialized size, variant / baseline.
        energy_significance: the test of the difference in energy per sample over the repeats.
        break_even_inferences: inferences after which the energy saved per inference pays back the
            variant's making energy; ``None`` when the variant has no measurable saving (see
            :attr:`measurable_saving`) or its making cost is unknown, ``0`` when making it cost nothing measurable.
        metric_test: the paired test of the metric change on the same samples (McNemar's exact test for the
            built-in accuracy, a paired bootstrap for other metrics) with its interval (``diff_low``,
            ``diff_high``); ``None`` in records written before it was kept, or when it could not be computed.
        energy_ratio_band: the systematic band of ``energy_ratio`` (how far off the sources could make it, apart
            from the run-to-run test), with the model constants both figures share cancelled; ``None`` when a
            figure has no band (a source states none, or the record is older than bands).
    """

    metric_change: float | None
    energy_ratio: float | None
    latency_ratio: float | None
    size_ratio: float | None
    energy_significance: Significance | None
    break_even_inferences: float | None
    metric_test: Significance | None = None
    energy_ratio_band: RatioBand | None = None

    @property
    def measurable_saving(self) -> bool:
        """Whether the variant's energy per sample is significantly lower than the baseline's."""
        return measurable_saving(self.energy_significance)

    def to_dict(self) -> dict[str, Any]:
        sig, test, band = self.energy_significance, self.metric_test, self.energy_ratio_band
        return {**self.__dict__, "energy_significance": None if sig is None else sig.to_dict(),
                "metric_test": None if test is None else test.to_dict(),
                "energy_ratio_band": None if band is None else band.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineDelta:
        return cls(data.get("metric_change"), data.get("energy_ratio"), data.get("latency_ratio"),
                   data.get("size_ratio"), _opt(Significance, data.get("energy_significance")),
                   data.get("break_even_inferences"), _opt(Significance, data.get("metric_test")),
                   _opt(RatioBand, data.get("energy_ratio_band")))


@dataclass(frozen=True)
class VariantResult:
    """Everything measured for one variant.

    Attributes:
        name: the variant's name.
        status: ``"ok"``, or ``"failed"`` with ``error`` saying what went wrong (the other variants still ran).
        recipe: the recipe that built it (``"prune:0.5"``), or ``None`` for a model given as is.
        metric: the metric on the evaluation data (the mean over repeats).
        metric_values: the metric of each repeat.
        energy_per_sample_j: mean and confidence interval of joules per sample over the repeats.
        energy_values_j: joules per sample of each repeat (for the significance test).
        energy_band: the systematic band of the mean energy per sample (how far off the sources could be, apart
            from the run-to-run interval ``energy_per_sample_j``); ``None`` when a source states none or the
            record is older than bands.
        latency_batch: per-batch latency over every measured batch, in seconds.
        latency_sample: per-sample latency (each batch's duration over its size), in seconds.
        throughput_sps: samples per second over the measured repeats.
        size_b: serialized size of the state dict, in bytes.
        params_total, params_nonzero: parameter counts (``params_kind`` says whether they are
            parameters or, for quantized and packed models, stored weight elements).
        macs_per_sample: multiply-accumulates per sample; ``macs_method`` says how they were counted and
            ``macs_note`` why not or with what caveat.
        carbon_per_million: the CO2e of a million inferences at the mean energy per sample.
        provenance: the energy figures' sources, one line each.
        making: the energy spent producing the variant, when known.
        vs_baseline: the comparison with the baseline (``None`` for the baseline itself).
        on_pareto_front: whether it is on the metric-versus-energy Pareto front, computed among the baseline and
            the variants with a measurable saving: no other of them has a metric at least as good and energy at
            most as high, one strictly (records of schema version 1 put every variant in the computation).
        flags: warnings a reader must see (unresolved windows, estimates, a counted float equivalent...).
        details: what the compression method reported (``compression_info.details``) and other facts.
    """

    name: str
    status: VariantStatus
    error: str | None = None
    recipe: str | None = None
    metric: float | None = None
    metric_values: tuple[float, ...] = ()
    energy_per_sample_j: Interval | None = None
    energy_values_j: tuple[float, ...] = ()
    energy_band: Band | None = None
    latency_batch: LatencyStats | None = None
    latency_sample: LatencyStats | None = None
    throughput_sps: float | None = None
    size_b: int | None = None
    params_total: int | None = None
    params_nonzero: int | None = None
    params_kind: str | None = None
    macs_per_sample: float | None = None
    macs_method: str | None = None
    macs_note: str | None = None
    carbon_per_million: CarbonEstimate | None = None
    provenance: tuple[str, ...] = ()
    making: MakingCost | None = None
    vs_baseline: BaselineDelta | None = None
    on_pareto_front: bool = False
    flags: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if hasattr(value, "to_dict"):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VariantResult:
        objects = {"energy_per_sample_j": Interval, "energy_band": Band, "latency_batch": LatencyStats,
                   "latency_sample": LatencyStats,
                   "carbon_per_million": CarbonEstimate, "making": MakingCost, "vs_baseline": BaselineDelta}
        kwargs: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name not in data:
                continue
            value = data[name]
            if name in objects:
                value = _opt(objects[name], value)
            elif name in ("metric_values", "energy_values_j", "provenance", "flags"):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)


@dataclass(frozen=True)
class Comparison:
    """A baseline and its variants measured side by side on the same data and machine.

    Attributes:
        name: the comparison's name.
        created_at: wall-clock start, ISO 8601 with time zone.
        baseline: the name of the reference variant.
        metric_name: what ``VariantResult.metric`` measures (``"accuracy"`` by default; higher is better).
        repeats: measured repeats per variant, interleaved (A B C A B C ...) after ``warmup`` passes each (in an
            interrupted comparison, the rounds every variant completed).
        samples_per_pass: evaluation samples in one pass over the data.
        passes_per_repeat: passes over the data in each repeat, so every repeat lasts long enough for the
            energy source to resolve it.
        variants: the results, baseline first.
        host: the machine.
        backends: the energy backends used.
        carbon: the carbon settings used (intensity and PUE, with sources), as a dict.
        seed: the seed set before each repeat (and the warm-up and the recipes).
        run_id: the stored run holding every measured window, when a store was used.
        flags: warnings about the whole comparison.
        duration_s: wall-clock time of the whole comparison, in seconds.
        sources: each energy domain's provenance (``{"key", "kind", "source", "method", "constants"}``),
            with every constant an estimate used; empty in records written before it was kept.
        torch_threads: PyTorch's intra-op threads during the timed passes; ``None`` in records written
            before it was kept.
        status: ``"complete"``, or ``"interrupted"`` when Ctrl-C or SIGTERM cut the comparison short: its
            figures then come from the ``repeats`` interleaved rounds every variant completed before it (the
            round in progress is not counted) and a flag says where it stopped.
    """

    name: str
    created_at: str
    baseline: str
    metric_name: str
    repeats: int
    warmup: int
    samples_per_pass: int
    passes_per_repeat: int
    variants: tuple[VariantResult, ...]
    host: HostInfo
    backends: tuple[str, ...]
    carbon: Mapping[str, Any]
    seed: int = 0
    run_id: str | None = None
    flags: tuple[str, ...] = ()
    duration_s: float | None = None
    sources: tuple[Mapping[str, Any], ...] = ()
    torch_threads: int | None = None
    status: ComparisonStatus = "complete"
    schema_version: int = COMPARISON_SCHEMA_VERSION

    @property
    def complete(self) -> bool:
        """Whether every planned repeat was measured (``False`` for an interrupted comparison)."""
        return self.status == "complete"

    def variant(self, name: str) -> VariantResult:
        """The result of the variant called ``name``."""
        for v in self.variants:
            if v.name == name:
                return v
        raise ConfigError(f"no variant named {name!r}; variants: {[v.name for v in self.variants]}")

    @property
    def pareto_front(self) -> tuple[str, ...]:
        """Names of the variants on the metric-versus-energy Pareto front."""
        return tuple(v.name for v in self.variants if v.on_pareto_front)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["variants"] = [v.to_dict() for v in self.variants]
        out["host"] = self.host.to_dict()
        out["backends"] = list(self.backends)
        out["flags"] = list(self.flags)
        out["carbon"] = dict(self.carbon)
        out["sources"] = [dict(x) for x in self.sources]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comparison:
        version = check_record_version(data, COMPARISON_SCHEMA_VERSION, "comparison")
        variants = tuple(VariantResult.from_dict(v) for v in data["variants"])
        if version < 2:  # written before savings had to be measurable: the front and break-even by today's rule
            variants = with_measurable_front(variants, data["baseline"])
        return cls(
            name=data["name"], created_at=data["created_at"], baseline=data["baseline"],
            metric_name=data["metric_name"], repeats=int(data["repeats"]), warmup=int(data["warmup"]),
            samples_per_pass=int(data["samples_per_pass"]), passes_per_repeat=int(data["passes_per_repeat"]),
            variants=variants,
            host=HostInfo.from_dict(data["host"]), backends=tuple(data["backends"]), carbon=dict(data["carbon"]),
            seed=int(data.get("seed", 0)), run_id=data.get("run_id"), flags=tuple(data.get("flags", ())),
            duration_s=data.get("duration_s"), sources=tuple(dict(x) for x in data.get("sources", ())),
            torch_threads=data.get("torch_threads"), status=data.get("status", "complete"),
            schema_version=COMPARISON_SCHEMA_VERSION,
        )

    def to_json(self, indent: int | None = 2) -> str:
        """The record as JSON (non-finite numbers written as ``null``)."""
        return json.dumps(finite_json(self.to_dict()), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Comparison:
        return cls.from_dict(parse_record_json(text, "comparison", "variants"))

    def to_frame(self) -> pd.DataFrame:
        """One row per variant with the headline figures (a pandas view; the record stays the source)."""
        import pandas as pd

        return pd.DataFrame([_row(v) for v in self.variants]).set_index("variant")

    def table(self) -> str:
        """A plain-text table of the headline figures, for terminals."""
        return format_table(self)

    def _repr_html_(self) -> str:
        """The comparison as a notebook shows it: a table with provenance and bands (``greenmeter.output.notebook``)."""
        from greenmeter.output.notebook import comparison_html  # records never import output at module level

        return comparison_html(self)

    def _repr_markdown_(self) -> str:
        """The comparison as short Markdown (see ``greenmeter.output.notebook``)."""
        from greenmeter.output.notebook import comparison_markdown

        return comparison_markdown(self)


def with_measurable_front(variants: tuple[VariantResult, ...], baseline: str) -> tuple[VariantResult, ...]:
    """The variants with ``on_pareto_front`` computed among the baseline and the measurable savings (mean metric
    against mean energy per sample), and no break-even for a variant without a measurable saving: the rule of
    every comparison (``summarise``), applied again to version-1 records, written before it."""
    from dataclasses import replace

    def eligible(v: VariantResult) -> bool:
        return (v.ok and v.metric is not None and v.energy_per_sample_j is not None
                and (v.name == baseline or (v.vs_baseline is not None and v.vs_baseline.measurable_saving)))

    chosen = [v for v in variants if eligible(v)]
    front = dict(zip((v.name for v in chosen), pareto_front(
        [(v.metric, v.energy_per_sample_j.mean) for v in chosen])))  # type: ignore[union-attr, misc]
    out = []
    for v in variants:
        d = v.vs_baseline
        if d is not None and not d.measurable_saving:
            d = replace(d, break_even_inferences=None)
        out.append(replace(v, on_pareto_front=front.get(v.name, False), vs_baseline=d))
    return tuple(out)


def _row(v: VariantResult) -> dict[str, Any]:
    e, d = v.energy_per_sample_j, v.vs_baseline
    sig = d.energy_significance if d is not None else None
    return {
        "variant": v.name, "status": v.status, "recipe": v.recipe, "metric": v.metric,
        "energy_per_sample_j": e.mean if e else None, "energy_ci_low_j": e.low if e else None,
        "energy_ci_high_j": e.high if e else None,
        "energy_band_low_j": v.energy_band.low_j if v.energy_band else None,
        "energy_band_high_j": v.energy_band.high_j if v.energy_band else None,
        "latency_batch_p50_s": v.latency_batch.p50_s if v.latency_batch else None,
        "latency_batch_p95_s": v.latency_batch.p95_s if v.latency_batch else None,
        "latency_batch_p99_s": v.latency_batch.p99_s if v.latency_batch else None,
        "latency_sample_p50_s": v.latency_sample.p50_s if v.latency_sample else None,
        "throughput_sps": v.throughput_sps, "size_b": v.size_b,
        "params_total": v.params_total, "params_nonzero": v.params_nonzero, "macs_per_sample": v.macs_per_sample,
        "co2e_g_per_million": v.carbon_per_million.co2e_g if v.carbon_per_million else None,
        "making_energy_j": v.making.energy_j if v.making else None,
        "metric_change": d.metric_change if d else None, "energy_ratio": d.energy_ratio if d else None,
        "energy_ratio_band_low": d.energy_ratio_band.low if d and d.energy_ratio_band else None,
        "energy_ratio_band_high": d.energy_ratio_band.high if d and d.energy_ratio_band else None,
        "size_ratio": d.size_ratio if d else None, "p_value": sig.p_value if sig else None,
        "significant": sig.significant if sig else None,
        "measurable_saving": d.measurable_saving if d else None,
        "metric_ci_low": d.metric_test.diff_low if d and d.metric_test else None,
        "metric_ci_high": d.metric_test.diff_high if d and d.metric_test else None,
        "metric_p_value": d.metric_test.p_value if d and d.metric_test else None,
        "break_even_inferences": d.break_even_inferences if d else None,
        "pareto": v.on_pareto_front, "error": v.error,
    }


def _energy_tests(comparison: Comparison) -> str:
    """The energy test(s) the comparison's variants were judged by, in words (``"Welch's t-test"``)."""
    tests = dict.fromkeys(describe_test(v.vs_baseline.energy_significance.test) for v in comparison.variants
                          if v.vs_baseline is not None and v.vs_baseline.energy_significance is not None)
    return " / ".join(tests) or "the energy test"


def band_note(comparison: Comparison) -> str:
    """What the comparison's bands are, in one line: systematic, apart from the CI, and what a ratio cancels."""
    if not any(v.energy_band is not None for v in comparison.variants):
        return ("band: not stated (a source states no band, or the comparison was recorded before greenmeter "
                "stated bands)")
    shared = any(v.vs_baseline is not None and v.vs_baseline.energy_ratio_band is not None
                 and v.vs_baseline.energy_ratio_band.shared for v in comparison.variants)
    text = ("band: how far off the energy sources could be (their constants and resolution), a systematic bound "
            "apart from the run-to-run 95% CI")
    if shared:
        text += ("; every variant ran on one machine with one model, so its constants cancel in the energy ratio "
                 "and the ratio's band is much narrower than each figure's")
    return text


def metric_text(metric_name: str, value: float) -> str:
    """A metric as reports write it: ``98.67%`` for accuracy, four significant digits otherwise."""
    return f"{value * 100:.2f}%" if metric_name == "accuracy" else f"{value:.4g}"


def change_text(metric_name: str, value: float) -> str:
    """A metric change as reports write it: ``-0.22 pp`` for accuracy, ``+0.0232`` otherwise."""
    return f"{value * 100:+.2f} pp" if metric_name == "accuracy" else f"{value:+.4f}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def format_table(comparison: Comparison, metric_scale: float = 100.0) -> str:
    """The headline figures as aligned text: metric, energy per sample with its CI, latency, size, deltas."""
    percent = comparison.metric_name == "accuracy" and metric_scale == 100.0
    header = ["variant", comparison.metric_name + (" %" if percent else ""), "mJ/sample (95% CI)", "band mJ",
              "p50 ms/batch", "size kB", "MACs/sample", "vs base: metric (95% CI)", "energy [band]", "p", "saving",
              "break-even", "front"]
    rows: list[Sequence[str]] = [header]
    for v in comparison.variants:
        if not v.ok:
            rows.append([v.name, "FAILED: " + (v.error or "")[:70]] + [""] * (len(header) - 2))
            continue
        e, d = v.energy_per_sample_j, v.vs_baseline
        scale = metric_scale if percent else 1.0
        ci = "-" if e is None else (f"{e.mean * 1e3:.3g}" + ("" if e.low is None else
                                                             f" [{e.low * 1e3:.3g}, {e.high * 1e3:.3g}]"))
        sig = d.energy_significance if d else None
        p = "-" if sig is None or sig.p_value is None else (f"{sig.p_value:.2g}" + ("*" if sig.significant else ""))
        spec = "+.2f" if percent else "+.4f"
        change = "-" if d is None or d.metric_change is None else format(d.metric_change * scale, spec)
        test = d.metric_test if d else None
        if test is not None and test.diff_low is not None and test.diff_high is not None:
            change += f" [{test.diff_low * scale:{spec}}, {test.diff_high * scale:{spec}}]"
        saving = "-" if d is None else ("yes" if d.measurable_saving else "no")
        be = "-" if d is None or d.break_even_inferences is None else f"{d.break_even_inferences:,.0f}"
        band = "-" if v.energy_band is None else f"{v.energy_band.low_j * 1e3:.3g}-{v.energy_band.high_j * 1e3:.3g}"
        ratio = "-" if d is None or d.energy_ratio is None else f"x{d.energy_ratio:.2f}"
        if d is not None and d.energy_ratio_band is not None:
            ratio += f" [{d.energy_ratio_band.low:.2f}, {d.energy_ratio_band.high:.2f}]"
        rows.append([
            v.name, _fmt(None if v.metric is None else v.metric * scale, ".2f" if percent else ".4f"), ci, band,
            _fmt(v.latency_batch.p50_s * 1e3 if v.latency_batch else None, ".3g"),
            _fmt(v.size_b / 1e3 if v.size_b is not None else None, ".1f"),
            _fmt(v.macs_per_sample, ",.0f"), change, ratio, p, saving, be,
            "*" if v.on_pareto_front else "",
        ])
    notes = [f"baseline: {comparison.baseline}; {comparison.repeats} repeats x {comparison.passes_per_repeat} "
             f"pass(es) of {comparison.samples_per_pass} samples; p: {_energy_tests(comparison)} of energy per sample "
             "against the baseline (* significant at 0.05); saving: measurable when significantly lower; metric CI: "
             "paired test on the same samples (McNemar's exact test for accuracy); front: on the metric-energy "
             "Pareto front of the baseline and the measurable savings; break-even only for measurable savings",
             band_note(comparison)]
    if not comparison.complete:
        notes.insert(0, f"INTERRUPTED: only the {comparison.repeats} repeat(s) every variant completed are counted")
    return "\n".join([text_table(rows), *notes])
