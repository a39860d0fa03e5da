"""``compare``: a baseline and its variants measured side by side on the same data and machine.

Every variant gets the same treatment: built (recipes) under a meter window so the energy of making it
is kept; checked and warmed up on the evaluation data; then measured in interleaved repeats
(A B C A B C ...), each repeat passing over the data as many times as the energy source needs to
resolve it, with the same seed before every pass. A variant that fails is recorded with its message
and the others go on::

    result = greenmeter.compare(
        {"float": model, "int8": "int8-dynamic", "pruned": "prune:0.5"},
        (x_test, y_test), repeats=5, train_data=loader)
    print(result.table())

Energy per sample is reported as a mean with a 95% confidence interval over the repeats, and each
variant's difference from the baseline is tested with Welch's t-test.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmeter._checks import choice, number, whole_number
from greenmeter._errors import ConfigError
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.comparison import facts as model_facts
from greenmeter.comparison.progress import Progress, progress_printer
from greenmeter.comparison.recipes import RecipeContext, parse_recipe, registered_recipes
from greenmeter.comparison.steps import Batch, build_entries, measure, prepare, summarise
from greenmeter.metering.cpu_load import LoadWatch, busy_flag
from greenmeter.metering.meter import Meter
from greenmeter.records.comparison import Comparison, MakingCost
from greenmeter.records.measurement import Measurement

if TYPE_CHECKING:
    import torch

__all__ = ["Variant", "accuracy_metric", "compare"]

Metric = Callable[["torch.Tensor", "torch.Tensor"], float]
#: a repeat lasts at least this many update periods of the slowest energy source (and MIN_REPEAT_S)
RESOLUTION_FACTOR = 50
MIN_REPEAT_S = 0.2


def default_repeat_s(meter: Meter) -> float:
    """The shortest measured window that the meter's slowest source resolves: 50 of its update periods, >= 0.2 s."""
    slowest = max((d.update_period_s for d in meter.domains), default=0.0)
    return max(MIN_REPEAT_S, RESOLUTION_FACTOR * slowest)


def passes_for(target_s: float, pass_s: float) -> int:
    """Passes over the data that make a window last ``target_s`` when one pass takes ``pass_s`` (at least 1)."""
    return max(1, math.ceil(target_s / max(pass_s, 1e-9)))


@dataclass(frozen=True)
class Variant:
    """A variant to compare: a model, or a recipe applied to the baseline; with its making cost if known.

    Attributes:
        model: the model as it is (evaluated in eval mode).
        recipe: a recipe spec such as ``"prune:0.5"`` (see :mod:`greenmeter.comparison.recipes`), built from the baseline.
        making: what producing ``model`` cost, when it was measured elsewhere (a :class:`Measurement`, e.g.
            from ``@greenmeter.track`` on its training, or a :class:`MakingCost`).
    """

    model: Any = None
    recipe: str | None = None
    making: MakingCost | Measurement | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.recipe is None):
            raise ConfigError("a Variant needs exactly one of model= or recipe=")


def accuracy_metric(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy, a fraction in [0, 1], of logits ``outputs`` (N, classes) against labels (N,)."""
    if outputs.ndim != 2:
        raise ConfigError(f"the accuracy metric needs (N, classes) logits, got outputs of shape {tuple(outputs.shape)}; "
                          "pass metric= for other outputs")
    return float((outputs.argmax(dim=1) == targets.to(outputs.device)).float().mean())


def _batches(data: Any, batch_size: int) -> list[Batch]:
    """The evaluation data as a fixed list of (inputs, targets) batches, so every pass sees the same data."""
    import torch

    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ConfigError(f"the evaluation inputs and targets differ in length ({len(x)} and {len(y)})")
        out = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    elif isinstance(data, Iterable):
        out = []
        for item in data:
            if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                raise ConfigError("the evaluation data must yield (inputs, targets) batches, got "
                                  f"{type(item).__name__}")
            out.append((item[0], item[1]))
    else:
        raise ConfigError(f"data must be an (inputs, targets) pair of tensors or an iterable of such batches, "
                          f"not {type(data).__name__}")
    if not out or sum(len(x) for x, _ in out) == 0:
        raise ConfigError("the evaluation data is empty: compare needs at least one (inputs, targets) batch")
    return out


def compare(
    variants: Mapping[str, Any],
    data: Any,
    *,
    baseline: str | None = None,
    metric: Metric | None = None,
    metric_name: str | None = None,
    repeats: int = 5,
    warmup: int = 1,
    batch_size: int = 256,
    train_data: Any = None,
    train_fn: Callable[..., Any] | None = None,
    val_data: tuple[Any, Any] | None = None,
    recipe_context: RecipeContext | None = None,
    meter: Meter | None = None,
    carbon: CarbonSettings | None = None,
    store: Any = None,
    min_repeat_s: float | None = None,
    seed: int = 0,
    significance: str = "welch",
    threads: int | None = None,
    name: str = "comparison",
    progress: bool | Callable[[str], None] = True,
) -> Comparison:
    """Evaluate a baseline and its variants side by side; see the module docstring for the procedure.

    Args:
        variants: names mapped to models, to recipe specs (``"int8-dynamic"``, ``"prune:0.5"``...) built
            from the baseline, or to :class:`Variant` objects. The baseline must be a model.
        data: evaluation data: an ``(inputs, targets)`` pair of tensors (split into ``batch_size`` batches)
            or an iterable of ``(inputs, targets)`` batches (read once and kept, so every pass is the same).
        baseline: the reference variant's name (default: the first).
        metric: ``metric(outputs, targets) -> float`` over the whole data set, higher is better (default:
            top-1 accuracy as a fraction).
        metric_name: its name in the results (default ``"accuracy"`` or the function's name).
        repeats: measured repeats per variant (at least 2 for a confidence interval; 5 by default).
        warmup: untimed passes over the data per variant before the repeats (at least 1 is always run:
            it checks the outputs and times a pass).
        train_data, train_fn, val_data: for recipes that train or calibrate (see
            :class:`greenmeter.comparison.recipes.RecipeContext`); or give ``recipe_context`` directly.
        meter: the meter to use (default: a new one with ``carbon`` and ``store``).
        carbon: carbon settings for the CO2e figures (default: world average, marked assumed).
        store: keep the windows and the comparison in a run store (a Store, a path, or ``True``).
        min_repeat_s: shortest repeat in seconds (default: 50 update periods of the slowest source, and
            at least 0.2 s); repeats pass over the data several times to reach it.
        seed: ``torch.manual_seed`` before every pass and before building recipes.
        significance: the test of each variant's energy against the baseline's over the repeats:
            ``"welch"`` (Welch's t-test, the default) or ``"bootstrap"`` (percentile bootstrap, 10,000
            resamples, seeded with ``seed``; for repeats far from normal, and at least 5 a side).
        threads: PyTorch's intra-op threads for the whole comparison (``torch.set_num_threads``; restored
            afterwards); ``None`` keeps the current setting. The number used is kept in
            ``Comparison.torch_threads``. On a machine that other work keeps busy, fewer threads than the
            free cores keep latency and CPU-time estimates from growing with the other load.
        name: the comparison's name.
        progress: ``True`` for progress on stderr, ``False`` for none, or a callable given each line.

    Returns:
        A :class:`Comparison`, also stored when the meter has a store.

    Raises:
        ConfigError: bad arguments, empty data, an unknown recipe, a baseline that cannot run or whose
            metric is not a number. Failures of other variants are recorded in their results instead.
    """
    import torch

    if not isinstance(variants, Mapping) or not variants:
        raise ConfigError("variants must be a non-empty mapping of names to models, recipe specs or Variants")
    repeats = whole_number("repeats", repeats, minimum=1)
    warmup = whole_number("warmup", warmup, minimum=0)
    batch_size = whole_number("batch_size", batch_size, minimum=1)
    choice("significance", significance, ("welch", "bootstrap"))
    threads = whole_number("threads", threads, minimum=1, optional=True, note="None keeps torch's setting")
    min_repeat_s = number("min_repeat_s", min_repeat_s, low=0, unit="seconds", optional=True)
    progress_printer(progress)  # a bad progress fails here, before any work
    specs = {str(k): (v if isinstance(v, Variant) else Variant(recipe=v) if isinstance(v, str) else Variant(model=v))
             for k, v in variants.items()}
    baseline = next(iter(specs)) if baseline is None else baseline
    if baseline not in specs:
        raise ConfigError(f"baseline {baseline!r} is not one of the variants {list(specs)}")
    if specs[baseline].model is None:
        raise ConfigError(f"the baseline {baseline!r} must be a model, not a recipe (recipes are built from it)")
    for key, spec in specs.items():
        if spec.model is not None and not isinstance(spec.model, torch.nn.Module):
            raise ConfigError(f"variant {key!r} is a {type(spec.model).__name__}, not a torch.nn.Module or a recipe")
    metric_fn = metric or accuracy_metric
    metric_name = metric_name or ("accuracy" if metric is None else getattr(metric, "__name__", "metric"))
    batches = _batches(data, batch_size)
    n_samples = sum(len(x) for x, _ in batches)
    targets = torch.cat([y for _, y in batches])
    recipes = {k: s.recipe for k, s in specs.items() if s.recipe is not None}
    if recipes:
        known = registered_recipes()
        for key, spec_text in recipes.items():
            recipe_name, _ = parse_recipe(spec_text)
            if recipe_name not in known:
                raise ConfigError(f"variant {key!r}: unknown recipe {recipe_name!r}; registered recipes: "
                                  f"{', '.join(sorted(known))}")
        if recipe_context is None:
            recipe_context = RecipeContext(example_input=batches[0][0], train_data=train_data, train_fn=train_fn,
                                           val_data=val_data, seed=seed)

    own_meter = meter is None
    if meter is None:
        meter = Meter(carbon=carbon, store=store, name=name)
    started = time.perf_counter()
    created_at = _dt.datetime.now(_dt.timezone.utc).isoformat()
    show = Progress(progress, len(recipes) + len(specs) + repeats * len(specs))
    threads_before = torch.get_num_threads()
    ended_by: BaseException | None = None  # what cut the comparison short: its run ends failed or interrupted
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        meter.start()
        entries = build_entries(specs, baseline, recipes, recipe_context, meter, carbon, seed, show)
        base = entries[0]
        for entry in entries:
            prepare(entry, base, batches, targets, metric_fn, metric_name, warmup, seed, model_facts, show)
            if entry is base and base.error is not None:
                raise ConfigError(f"the baseline {baseline!r} could not be evaluated: {base.error}")
        live = [e for e in entries if e.error is None]
        fastest = min(e.facts["pass_s"] for e in live)
        passes = passes_for(min_repeat_s if min_repeat_s is not None else default_repeat_s(meter), fastest)
        watch = LoadWatch()
        for r in range(repeats):
            for entry in entries:
                if entry.error is None:
                    measure(entry, meter, batches, targets, metric_fn, metric_name, passes, r, seed, show)
                else:
                    show(f"{entry.name}: skipped (failed)", advance=1)
        results = summarise(entries, baseline, carbon, meter, significance, seed)
        flags = []
        if repeats < 3:
            flags.append(f"only {repeats} repeat(s): confidence intervals and significance need more (5 advised)")
        used_threads = torch.get_num_threads()
        busy = busy_flag(watch.other_cores(), "the timed passes", used_threads)
        if busy is not None:
            flags.append(busy)
        comparison = Comparison(
            name=name, created_at=created_at, baseline=baseline, metric_name=metric_name, repeats=repeats,
            warmup=warmup, samples_per_pass=n_samples, passes_per_repeat=passes, variants=results,
            host=meter.host, backends=tuple(b.name for b in meter.backends),
            carbon=(carbon or CarbonSettings()).to_dict(), seed=seed, run_id=meter.run_id, flags=tuple(flags),
            duration_s=time.perf_counter() - started,
            sources=tuple({"key": d.key, **d.provenance.to_dict()} for d in meter.domains),
            torch_threads=used_threads,
        )
        if meter.store is not None:
            meter.store.add_comparison(comparison)
        return comparison
    except BaseException as err:  # Ctrl-C included: recorded on the run, then raised unchanged
        ended_by = err
        raise
    finally:
        if threads is not None:
            torch.set_num_threads(threads_before)
        if own_meter:  # the windows measured so far stay stored; no comparison is made from part of the repeats
            meter.close(error=ended_by)


