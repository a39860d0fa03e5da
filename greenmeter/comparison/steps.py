"""The steps of a comparison for one variant: build, check and describe, measure, summarise.

Private to :func:`greenmeter.comparison.compare.compare`, which runs them in its interleaved order.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError
from greenmeter.carbon.settings import CarbonSettings, estimate_carbon
from greenmeter.comparison.batches import Batch, OutputFn, device_sync, model_device, model_output, to_device
from greenmeter.comparison.metrics import Metric, correct_predictions, joined, metric_value
from greenmeter.comparison.recipes import STEP_SEPARATOR, build_variant
from greenmeter.records.comparison import (
    BaselineDelta,
    MakingCost,
    MakingStep,
    VariantResult,
    measurable_saving,
    with_measurable_front,
)
from greenmeter.records.measurement import LatencyStats, Measurement
from greenmeter.sources.band import Band, ratio_band, sum_bands
from greenmeter.stats import (
    Significance,
    energy_test,
    mcnemar_exact,
    mean_ci,
    paired_bootstrap,
)

if TYPE_CHECKING:
    import torch

    from greenmeter.comparison.progress import Progress
    from greenmeter.metering.meter import Meter

#: resamples of the paired bootstrap of a metric that is not 0/1 per sample (each one calls the metric twice)
METRIC_RESAMPLES = 1000


def _making_cost(m: Measurement, settings: CarbonSettings | None, trains: bool) -> MakingCost:
    co2 = m.carbon.co2e_g if m.carbon is not None else estimate_carbon(m.energy_j, settings).co2e_g
    return MakingCost(m.energy_j, m.duration_s, provenance_lines(m.domains), co2, trains)


def _recipe_making_cost(recipe: Any, measured: Sequence[tuple[str, Measurement]],
                        settings: CarbonSettings | None) -> MakingCost:
    """The making cost of a recipe built in ``measured`` windows: one window, or one per step of a stacked recipe
    (then the sum of the steps' energies and durations, with each step's figures kept in ``steps``)."""
    if not recipe.steps:
        return _making_cost(measured[0][1], settings, recipe.trains)
    return stacked_making([(text, _making_cost(m, settings, step.trains))
                           for (text, m), step in zip(measured, recipe.steps)])


def stacked_making(parts: Sequence[tuple[str, MakingCost]]) -> MakingCost:
    """The making cost of a stacked recipe from its parts' costs, in the order applied: the sums of their
    energies, durations and CO2e (``None`` when any is unknown), their provenance lines once each, and every step
    in ``steps`` (a part that is itself stacked contributes its own steps).

    Args:
        parts: ``(step spec, its MakingCost)`` pairs.
    """
    steps = tuple(step for text, c in parts for step in (
        c.steps or (MakingStep(text, c.energy_j, c.duration_s, c.co2e_g, c.trains),)))
    costs = [c for _, c in parts]
    return MakingCost(
        sum(c.energy_j for c in costs), sum(c.duration_s for c in costs),
        tuple(dict.fromkeys(line for c in costs for line in c.provenance)),
        None if any(c.co2e_g is None for c in costs) else sum(c.co2e_g for c in costs),  # type: ignore[misc]
        any(c.trains for c in costs), steps)


def provenance_lines(domains: Iterable[Any]) -> tuple[str, ...]:
    """``"key: provenance"`` once for each domain counted in the total (a meter's or a measurement's domains)."""
    return tuple(dict.fromkeys(f"{d.key}: {d.provenance.describe()}" for d in domains if d.in_total))


class _Entry:
    """A variant while the comparison runs."""

    def __init__(self, name: str, model: Any, recipe: str | None, making: MakingCost | None) -> None:
        self.name, self.model, self.recipe, self.making = name, model, recipe, making
        self.error: str | None = None
        self.facts: dict[str, Any] = {}
        self.metric_values: list[float] = []
        self.energy: list[float] = []
        self.bands: list[Band | None] = []  # each repeat's band of joules per sample
        self.durations: list[float] = []
        self.sizes: list[int] = []
        self.samples, self.time_s = 0, 0.0
        self.flags: dict[str, None] = {}
        self.provenance: dict[str, None] = {}
        # one pass's outputs, from the first repeat, for the paired metric test: each batch's (or, given, one tensor)
        self.outputs: list[torch.Tensor] | torch.Tensor | None = None

    def fail(self, stage: str, err: BaseException) -> None:
        self.error = f"{stage}: {type(err).__name__}: {err}"


def staged(entry: _Entry, batches: Sequence[Batch]) -> tuple[list[Any], Callable[[], None] | None]:
    """Each batch's inputs on the variant's device (:func:`~greenmeter.comparison.batches.model_device`; the
    same objects where they are there already), copied before a window opens, so that no window holds the copy,
    and the device's :func:`~greenmeter.comparison.batches.device_sync`; the device is kept in
    ``entry.facts["device"]``."""
    device = model_device(entry.model)
    entry.facts["device"] = None if device is None else str(device)
    return [to_device(b.inputs, device) for b in batches], device_sync(device)


def _on_cpu(outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The outputs on the CPU, where the metric and the paired test see them (no copy for CPU tensors)."""
    return [o.detach().cpu() for o in outputs]


def _check_metric(value: Any, name: str, metric_name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the metric {metric_name!r} returned {value!r} for {name!r}, not a number") from err
    if not math.isfinite(number):
        raise ConfigError(f"the metric {metric_name!r} returned {number} for {name!r}: check the model's outputs "
                          "(NaN or inf logits) and the metric function")
    return number


def build_measured(key: str, recipe: str, baseline: Any, ctx: Any, meter: Meter, carbon: CarbonSettings | None,
                   seed: int) -> tuple[Any, MakingCost, tuple[str, ...]]:
    """Build the variant ``recipe`` from ``baseline`` with its making energy measured on ``meter``.

    Each step of a stacked recipe runs in its own window (``make:KEY/2:int8-static``), one-step recipes in
    ``make:KEY``; torch is seeded with ``seed`` first.

    Returns:
        The variant, its :class:`MakingCost` (for a stacked recipe the sum of its steps, each kept in
        ``steps``), and flags about the making windows (a window too short for its source to resolve).

    Raises:
        Whatever :func:`greenmeter.comparison.recipes.build_variant` raises.
    """
    import torch

    torch.manual_seed(seed)
    windows: list[tuple[str, Any]] = []  # each step of a stacked recipe in its own window
    stacked = STEP_SEPARATOR in recipe

    @contextlib.contextmanager
    def step_window(index: int, step: str) -> Any:
        with meter.window(f"make:{key}/{index + 1}:{step}" if stacked else f"make:{key}") as window:
            windows.append((step, window))
            yield

    model = build_variant(recipe, baseline, ctx, step_window=step_window)
    making = _recipe_making_cost(model.recipe, [(step, w.measurement) for step, w in windows], carbon)
    flags = tuple(dict.fromkeys(f"making it: {f}" for _, w in windows for f in w.measurement.flags
                                if "not resolved" in f))  # its making energy is uncertain
    return model, making, flags


def build_entries(specs: Mapping[str, Any], baseline: str, recipes: Mapping[str, str], ctx: Any, meter: Meter,
           carbon: CarbonSettings | None, seed: int, show: Progress) -> list[_Entry]:
    base_model = specs[baseline].model
    entries = []
    for key in [baseline] + [k for k in specs if k != baseline]:
        spec = specs[key]
        making = spec.making
        if isinstance(making, Measurement):
            making = _making_cost(making, carbon, trains=True)
        if spec.recipe is None:
            entries.append(_Entry(key, spec.model, None, making))
            continue

        entry = _Entry(key, None, spec.recipe, None)
        show(f"making {key} ({spec.recipe})")
        try:
            entry.model, entry.making, flags = build_measured(key, spec.recipe, base_model, ctx, meter, carbon, seed)
            entry.flags.update(dict.fromkeys(flags))
        except Exception as err:  # recorded for this variant; the others go on
            entry.fail("making it", err)
        show(f"made {key}" if entry.error is None else f"{key} FAILED: {entry.error}", advance=1,
             keep=entry.error is not None)
        entries.append(entry)
    return entries


def prepare(entry: _Entry, base: _Entry, batches: Sequence[Batch], targets: Sequence[Any], metric_fn: Metric,
            metric_name: str, warmup: int, seed: int, model_facts: Any, show: Progress,
            output_fn: OutputFn | None = None) -> None:
    """Check the outputs, compute the model facts and time untimed warm-up passes.

    ``targets`` holds each batch's targets; ``metric_fn`` is a function or a batch metric
    (:func:`greenmeter.comparison.metrics.metric_value`); ``output_fn`` reduces the model's output to a tensor.
    """
    import torch

    if entry.error is None:
        try:
            model = entry.model
            model.eval()
            inputs, sync = staged(entry, batches)
            t_pass = math.inf
            for _ in range(max(1, warmup)):
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    outs = [model_output(model, x, output_fn, move=False) for x in inputs]
                if sync is not None:
                    sync()
                t_pass = min(t_pass, time.perf_counter() - t0)
            outs = _on_cpu(outs)
            shapes = [tuple(o.shape[1:]) for o in outs]
            if entry is not base:
                _check_shapes(shapes, base.facts["output_shapes"])
            entry.facts.update(output_shapes=shapes, pass_s=t_pass,
                               metric=_check_metric(metric_value(metric_fn, outs, targets), entry.name, metric_name))
            _model_facts(entry, base, batches, targets, model_facts)
        except Exception as err:  # noqa: BLE001 - recorded in the variant's result
            entry.fail("evaluating it", err)
    show(f"checked {entry.name}" if entry.error is None else f"{entry.name} FAILED: {entry.error}", advance=1,
         keep=entry.error is not None)


def _check_shapes(shapes: Sequence[tuple[int, ...]], base: Sequence[tuple[int, ...]]) -> None:
    """Refuse a variant whose output shape (past the batch dimension) differs from the baseline's in a batch."""
    def text(shape: tuple[int, ...]) -> str:
        return f"(N, {', '.join(map(str, shape))})"

    for i, (mine, theirs) in enumerate(zip(shapes, base)):
        if mine != theirs:
            where = "" if len(set(base)) == 1 and len(set(shapes)) == 1 else f" in batch {i}"
            raise ConfigError(f"its outputs have shape {text(mine)} where the baseline's are {text(theirs)}{where}")


def _model_facts(entry: _Entry, base: _Entry, batches: Sequence[Batch], targets: Sequence[Any], facts: Any) -> None:
    import torch

    from greenmeter.compression.registry import facts_hooks_for

    model = entry.model
    entry.facts["size_b"] = facts.serialized_size_b(model)
    counts = facts.parameter_counts(model)
    entry.facts.update(params_total=counts.total, params_nonzero=counts.nonzero, params_kind=counts.kind)
    info = getattr(model, "compression_info", None)
    entry.facts["details"] = {} if info is None else {"method": info.method, **dict(info.details)}
    # a method's own warnings about the model it made (int4 running dequantized) become the variant's flags
    entry.flags.update(dict.fromkeys(str(f) for f in entry.facts["details"].get("flags", ())))
    example = batches[0].inputs
    hooks = facts_hooks_for(model)  # the method that made it (or whose model class it is) says how it is counted
    if hooks.data_macs is not None and all(isinstance(b.inputs, torch.Tensor) for b in batches):
        # MACs that depend on the data (early exits, whose models take one tensor)
        inputs = to_device(joined([b.inputs for b in batches], "inputs"), model_device(model))
        data = hooks.data_macs(model, inputs, joined(targets, "targets"))
        entry.facts.update(macs=data.macs_per_sample, macs_method=data.method, macs_note=data.note)
        return
    # a quantized model's int8 Linear/Conv layers are counted from their own shapes; the baseline is counted in
    # its place only when the model runs other kernels the counter cannot see (a quantized LSTM), with a note
    float_eq = base.model if hooks.quantized else None
    macs = facts.count_macs(model, example, float_equivalent=float_eq)
    entry.facts.update(macs=macs.macs_per_sample, macs_method=macs.method, macs_note=macs.note)


def measure(entry: _Entry, meter: Meter, batches: Sequence[Batch], targets: Sequence[Any], metric_fn: Metric,
            metric_name: str, passes: int, repeat: int, seed: int, show: Progress,
            output_fn: OutputFn | None = None) -> None:
    """One measured repeat of the variant: ``passes`` passes over the batches in one window, then its metric."""
    import torch

    model = entry.model
    sizes = [b.size for b in batches]
    inputs, sync = staged(entry, batches)  # on a GPU each step ends when its work is done
    # Every step kept whole, however long the repeat: the per-sample latency pairs each step's duration with its
    # batch's size, and the pooled percentiles stay exact.
    # Seeded once, before the window: the first pass (whose outputs are scored) sees the same random state in every
    # repeat, and the window holds none of the seeding's cost (seeding before every pass made a pass of a small int8
    # model 18-19% slower, benchmarks/int8_kernels.py: a charge the cheapest variants paid most).
    torch.manual_seed(seed)
    window = meter.begin(f"{entry.name}/repeat-{repeat + 1}", samples=passes * sum(sizes), keep_steps=True)
    outs: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for p in range(passes):
                for x, size in zip(inputs, sizes):
                    out = model_output(model, x, output_fn, move=False)
                    if sync is not None:
                        sync()
                    meter.step(samples=size)
                    if p == 0:
                        outs.append(out)
    except Exception as err:  # noqa: BLE001 - the variant is recorded as failed; the others go on
        meter.end(window, error=err)
        entry.fail(f"repeat {repeat + 1}", err)
        show(f"{entry.name} FAILED: {entry.error}", advance=1, keep=True)
        return
    m = meter.end(window)
    outs = _on_cpu(outs)
    try:
        entry.metric_values.append(_check_metric(metric_value(metric_fn, outs, targets), entry.name, metric_name))
    except Exception as err:  # noqa: BLE001
        entry.fail(f"metric in repeat {repeat + 1}", err)
    else:
        _keep_outputs(entry, outs)
    samples = m.samples or 0
    entry.energy.append(m.energy_j / samples)
    entry.bands.append(m.energy_per_sample_band)
    entry.durations.extend(m.step_durations_s)
    entry.sizes.extend(sizes * passes)
    entry.samples += samples
    entry.time_s += m.duration_s
    entry.flags.update(dict.fromkeys(m.flags))
    entry.provenance.update(dict.fromkeys(provenance_lines(m.domains)))
    show(f"{entry.name} repeat {repeat + 1}: {m.energy_j / max(samples, 1) * 1e3:.3g} mJ/sample", advance=1)


def _keep_outputs(entry: _Entry, outputs: list[torch.Tensor]) -> None:
    """Keep the first repeat's outputs (each batch's) for the paired metric test; flag a variant whose outputs
    change later."""
    import torch

    if entry.outputs is None:
        entry.outputs = outputs
    elif len(entry.outputs) != len(outputs) or not all(
            a.shape == b.shape and torch.equal(a, b) for a, b in zip(entry.outputs, outputs)):
        entry.flags[OUTPUTS_VARY] = None


#: the flag of a variant whose outputs differ between repeats (a model that samples, or a non-deterministic kernel)
OUTPUTS_VARY = ("its outputs differ between repeats: the metric is the mean over the repeats, and the paired test "
                "of its change uses the first repeat's outputs")


@dataclass(frozen=True)
class Scoring:
    """How the metric is scored, for the paired test of each variant's change against the baseline.

    Attributes:
        metric_fn: ``metric(outputs, targets) -> float`` over the whole data set, or a batch metric object
            (:mod:`greenmeter.comparison.metrics`).
        targets: the evaluation targets in the order of the outputs: one tensor, or each batch's.
        zero_one: the metric is the mean of a 0/1 outcome per sample (the built-in accuracy): McNemar's exact
            test on each sample's outcome; otherwise a paired bootstrap that recomputes the metric on
            resampled samples (:data:`METRIC_RESAMPLES` resamples).
    """

    metric_fn: Metric
    targets: torch.Tensor | Sequence[Any]
    zero_one: bool


def summarise(entries: Sequence[_Entry], baseline: str, carbon: CarbonSettings | None,
              meter: Meter, significance: str = "paired", seed: int = 0,
              scoring: Scoring | None = None) -> tuple[VariantResult, ...]:
    """The results of every variant: figures, tests against the baseline, the Pareto front, break-even.

    A variant's saving is measurable when its energy per sample is significantly lower than the baseline's
    (the ``significance`` test at 0.05); one without a measurable saving gets no break-even and no place on the
    front, which is computed among the baseline and the variants with a measurable saving. With ``scoring``,
    each variant's metric change also gets a paired test on the same samples (``BaselineDelta.metric_test``).
    """
    from greenmeter.compression._core import plain_value as _json_safe  # the same rule as CompressionInfo.config

    ok = [e for e in entries if e.error is None and e.energy]
    base = entries[0]
    tests = {e.name: energy_test(significance, base.energy, e.energy, seed) for e in ok if e is not base}
    out = []
    for e in entries:
        if e.error is not None or not e.energy:
            out.append(VariantResult(e.name, "failed", error=e.error or "no repeat was measured", recipe=e.recipe,
                                     making=e.making))
            continue
        energy = mean_ci(e.energy)
        band = mean_band(e.bands)
        per_sample = [d / n for d, n in zip(e.durations, e.sizes)]
        delta = None
        if e is not base:
            metric_test = _metric_test(e, base, scoring, seed)
            delta = _delta(e, base, energy.mean, tests[e.name], metric_test, band, mean_band(base.bands))
        out.append(VariantResult(
            name=e.name, status="ok", recipe=e.recipe, metric=sum(e.metric_values) / len(e.metric_values),
            metric_values=tuple(e.metric_values), energy_per_sample_j=energy, energy_values_j=tuple(e.energy),
            energy_band=band,
            latency_batch=LatencyStats.from_durations(e.durations),
            latency_sample=LatencyStats.from_durations(per_sample),
            throughput_sps=e.samples / e.time_s if e.time_s > 0 else None,
            size_b=e.facts["size_b"], params_total=e.facts["params_total"], params_nonzero=e.facts["params_nonzero"],
            params_kind=e.facts["params_kind"], macs_per_sample=e.facts["macs"], macs_method=e.facts["macs_method"],
            macs_note=e.facts["macs_note"], carbon_per_million=estimate_carbon(energy.mean * 1e6, carbon),
            provenance=tuple(e.provenance), making=e.making, vs_baseline=delta,
            flags=tuple(e.flags), details=_json_safe(_with_device(e.facts["details"], e.facts.get("device"))),
        ))
    return with_measurable_front(tuple(out), base.name)



def _with_device(details: Mapping[str, Any], device: str | None) -> dict[str, Any]:
    """The method's details with ``"device"``, where the variant ran (when known)."""
    return dict(details) if device is None else {**details, "device": device}


#: the flag of a variant whose outputs (or targets) cannot be lined up sample by sample for the paired test
UNPAIRED = ("no paired test of its metric change: the outputs or targets differ in shape between batches, so they "
            "cannot be paired sample by sample; its metric change is untested")


def _as_one(parts: Any) -> Any:
    """Each batch's tensors as one tensor (a tensor given whole is kept)."""
    import torch

    return parts if isinstance(parts, torch.Tensor) else joined(parts)


def _metric_test(e: _Entry, base: _Entry, scoring: Scoring | None, seed: int) -> Significance | None:
    """The paired test of the variant's metric change on the first repeat's outputs, or None (with a flag why)."""
    if scoring is None or e.outputs is None or base.outputs is None:
        return None
    try:
        base_outputs, outputs, targets = _as_one(base.outputs), _as_one(e.outputs), _as_one(scoring.targets)
    except ConfigError:  # outputs of different shapes per batch: there are no per-sample outcomes to pair
        e.flags[UNPAIRED] = None
        return None
    try:
        return paired_metric_test(base_outputs, outputs, replace(scoring, targets=targets), seed)
    except Exception as err:  # noqa: BLE001 - the comparison stands; the reader is told the change is untested
        e.flags[f"no paired test of its metric change ({type(err).__name__}: {err})"] = None
        return None


def paired_metric_test(base_outputs: torch.Tensor, outputs: torch.Tensor, scoring: Scoring,
                       seed: int = 0) -> Significance:
    """The paired test of a metric change, variant minus baseline, on the same samples' outputs.

    McNemar's exact test on each sample's correctness for a 0/1 metric (``scoring.zero_one``), else a paired
    bootstrap that recomputes the metric (a function, or a batch metric given the resample as one batch) on
    :data:`METRIC_RESAMPLES` resamples of the samples.

    Raises:
        ConfigError: outputs the metric cannot score (not (N, classes) logits for accuracy; a metric that is
            not a finite number on a resample).
    """
    import torch

    targets = _as_one(scoring.targets)
    if scoring.zero_one:
        return mcnemar_exact(correct_predictions(base_outputs, targets).cpu().numpy(),
                             correct_predictions(outputs, targets).cpu().numpy())
    targets = targets.cpu()  # the kept outputs are on the CPU

    def metric_at(side: torch.Tensor, idx: Any) -> float:
        index = torch.as_tensor(idx)
        return float(metric_value(scoring.metric_fn, [side[index]], [targets[index]]))

    return paired_bootstrap(base_outputs, outputs, statistic=metric_at, n_resamples=METRIC_RESAMPLES, seed=seed)


def mean_band(bands: Sequence[Band | None]) -> Band | None:
    """The band of the mean of per-repeat figures (each repeat's band weighted 1/n); ``None`` if one has none."""
    total = sum_bands(bands)
    return None if total is None or not bands else total.scaled(1.0 / len(bands))


def _delta(e: _Entry, base: _Entry, energy_mean: float, significance: Significance,
           metric_test: Significance | None, band: Band | None, base_band: Band | None) -> BaselineDelta:
    base_energy = sum(base.energy) / len(base.energy)
    saving = base_energy - energy_mean
    if e.making is None or saving <= 0 or not measurable_saving(significance):
        break_even = None
    else:
        break_even = e.making.energy_j / saving
    base_metric = sum(base.metric_values) / len(base.metric_values)
    metric = sum(e.metric_values) / len(e.metric_values)
    base_p50 = LatencyStats.from_durations(base.durations)
    p50 = LatencyStats.from_durations(e.durations)
    return BaselineDelta(
        metric_change=metric - base_metric,
        energy_ratio=energy_mean / base_energy if base_energy > 0 else None,
        latency_ratio=p50.p50_s / base_p50.p50_s if p50 and base_p50 and base_p50.p50_s > 0 else None,
        size_ratio=e.facts["size_b"] / base.facts["size_b"] if base.facts.get("size_b") else None,
        energy_significance=significance,
        break_even_inferences=break_even,
        metric_test=metric_test,
        energy_ratio_band=None if band is None or base_band is None or base_energy <= 0 else ratio_band(band, base_band),
    )
