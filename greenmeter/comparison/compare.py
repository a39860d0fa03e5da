"""``compare``: a baseline and its variants measured side by side on the same data and machine.

Every variant gets the same treatment: built (recipes) under a meter window so the energy of making it
is kept; checked and warmed up on the evaluation data; then measured in interleaved repeats
(A B C A B C ...), each repeat passing over the data as many times as the energy source needs to
resolve it, with the same seed before each repeat. A variant that fails is recorded with its message
and the others go on::

    result = greenmeter.compare(
        {"float": model, "int8": "int8-dynamic", "pruned": "prune:0.5"},
        (x_test, y_test), repeats=5, train_data=loader)
    print(result.table())

Energy per sample is reported as a mean with a 95% confidence interval over the repeats, and each
variant's difference from the baseline is tested by a paired t-test of the per-round ratios (every round
measures every variant once, so a load the round shares cancels); Welch's t-test or a bootstrap on request.

Each variant runs on its own device (that of its parameters: a model on ``cuda:0`` there, an int8 variant on
the CPU, where PyTorch's int8 kernels run); the data may stay on the CPU. Before each window the batches'
inputs are copied to the variant's device, so no window holds the copy; on a GPU each step ends with
``torch.cuda.synchronize`` of that device, so a step's latency is its work, not its launch. The metric sees the
outputs and targets on the CPU. Variants on different devices are flagged (:data:`MIXED_DEVICES`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from greenmeter._checks import choice, number, whole_number
from greenmeter._errors import ConfigError
from greenmeter.carbon.settings import CarbonSettings
from greenmeter.comparison import facts as model_facts
from greenmeter.comparison.batches import (
    DEFAULT_TARGET_KEY,
    OutputFn,
    check_output_fn,
    check_target_key,
    evaluation_batches,
    to_device,
)
from greenmeter.comparison.metrics import Metric, accuracy_metric, check_metric, metric_name as name_of_metric
from greenmeter.comparison.progress import Progress, progress_printer
from greenmeter.comparison.recipes import RecipeContext, check_recipe
from greenmeter.comparison.steps import Scoring, build_entries, measure, prepare, summarise
from greenmeter.metering.cpu_load import LoadWatch, busy_flag
from greenmeter.metering.interrupts import signals_deferred, sigterm_interrupts
from greenmeter.metering.meter import Meter
from greenmeter.records.comparison import Comparison, MakingCost
from greenmeter.records.measurement import Measurement

__all__ = ["MAX_MIN_REPEAT_S", "MAX_REPEATS", "MAX_SEED", "MAX_THREADS", "MAX_WARMUP", "MIXED_DEVICES",
           "SIGNIFICANCE_TESTS", "Variant", "accuracy_metric", "check_settings", "compare", "evaluation_batches",
           "mixed_devices"]

log = logging.getLogger("greenmeter")
#: a repeat lasts at least this many update periods of the slowest energy source (and MIN_REPEAT_S)
RESOLUTION_FACTOR = 50
MIN_REPEAT_S = 0.2


#: the ranges of compare's settings (a comparison that would run for days is a typo, not a plan)
MAX_REPEATS = 1000
MAX_WARMUP = 100
MAX_MIN_REPEAT_S = 3600.0
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1
#: The tests of each variant's energy against the baseline's: ``significance=`` of :func:`compare`.
SIGNIFICANCE_TESTS = ("paired", "welch", "bootstrap")


def check_settings(*, repeats: Any = 5, warmup: Any = 1, batch_size: Any = 256, seed: Any = 0,
                   min_repeat_s: Any = None, significance: Any = "paired", threads: Any = None,
                   label: Callable[[str], str] = str) -> dict[str, Any]:
    """Check :func:`compare`'s numeric and named settings, before any work; each has a range.

    ``compare`` calls it on its arguments; the comparison TOML file and ``greenmeter compare``'s options call
    it too, with ``label`` naming each setting where the user wrote it.

    Args:
        repeats: a whole number in [1, MAX_REPEATS].
        warmup: a whole number in [0, MAX_WARMUP].
        batch_size: a whole number >= 1.
        seed: a whole number in [0, MAX_SEED].
        min_repeat_s: seconds in [0, MAX_MIN_REPEAT_S], or ``None``.
        significance: one of :data:`SIGNIFICANCE_TESTS`.
        threads: a whole number in [1, MAX_THREADS], or ``None``.
        label: ``label(key) -> str``, the name of a setting in the message (``"compare.repeats"``,
            ``"--repeats"``); the key itself by default.

    Returns:
        The settings by key, normalised (whole numbers as ``int``, seconds as ``float``).

    Raises:
        ConfigError: the first setting out of range, with its name, its range and the value given.
    """
    return {
        "repeats": whole_number(label("repeats"), repeats, minimum=1, maximum=MAX_REPEATS),
        "warmup": whole_number(label("warmup"), warmup, minimum=0, maximum=MAX_WARMUP),
        "batch_size": whole_number(label("batch_size"), batch_size, minimum=1),
        "seed": whole_number(label("seed"), seed, minimum=0, maximum=MAX_SEED),
        "min_repeat_s": number(label("min_repeat_s"), min_repeat_s, low=0, high=MAX_MIN_REPEAT_S, unit="seconds",
                               optional=True),
        "significance": choice(label("significance"), significance, SIGNIFICANCE_TESTS),
        "threads": whole_number(label("threads"), threads, minimum=1, maximum=MAX_THREADS, optional=True,
                                note="None keeps torch's setting"),
    }


#: The flag of a comparison whose variants ran on different devices; ``{devices}`` lists them.
MIXED_DEVICES = ("the variants ran on different devices ({devices}): every window measures every source of the "
                 "machine, so the energies compare the whole machine running each variant (a GPU idles while a "
                 "CPU variant runs), and the latencies compare different hardware")


def mixed_devices(entries: Iterable[Any]) -> str | None:
    """The :data:`MIXED_DEVICES` flag when the variants that ran did so on more than one device, else ``None``."""
    where = {e.name: e.facts.get("device") for e in entries if e.error is None and e.facts.get("device")}
    if len(set(where.values())) < 2:
        return None
    return MIXED_DEVICES.format(devices=", ".join(f"{name} on {device}" for name, device in where.items()))


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
        recipe: a recipe spec such as ``"prune:0.5"``, or steps stacked with ``+`` (``"channels:0.5+int8-static"``,
            see :mod:`greenmeter.comparison.recipes`), built from the baseline.
        making: what producing ``model`` cost, when it was measured elsewhere (a :class:`Measurement`, e.g.
            from ``@greenmeter.track`` on its training, or a :class:`MakingCost`).
    """

    model: Any = None
    recipe: str | None = None
    making: MakingCost | Measurement | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.recipe is None):
            raise ConfigError("a Variant needs exactly one of model= or recipe=")


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
    significance: str = "paired",
    threads: int | None = None,
    name: str = "comparison",
    progress: bool | Callable[[str], None] = True,
    target_key: str = DEFAULT_TARGET_KEY,
    output_fn: OutputFn | None = None,
) -> Comparison:
    """Evaluate a baseline and its variants side by side; see the module docstring for the procedure.

    Args:
        variants: names mapped to models, to recipe specs (``"int8-dynamic"``, ``"prune:0.5"``, stacked
            ``"channels:0.5+int8-static"``...) built from the baseline, or to :class:`Variant` objects. The baseline
            must be a model. A stacked recipe's steps are applied left to right, each measured in its own making
            window; its making cost is their sum, with each step's in ``MakingCost.steps``.
        data: evaluation data (:func:`greenmeter.comparison.batches.evaluation_batches`): an ``(inputs, targets)``
            pair or a dict of tensors holding the whole set (split into ``batch_size`` batches), or an iterable of
            batches such as a ``DataLoader`` (read once and kept, so every pass is the same), each batch
            ``(inputs, targets)`` or a dict with the targets under ``target_key``. Inputs are a tensor
            (``model(x)``), a tuple of tensors (``model(*inputs)``) or a dict (``model(**inputs)``); batches may
            differ in shape (dynamic padding).
        baseline: the reference variant's name (default: the first).
        metric: higher is better; ``metric(outputs, targets) -> float`` over every batch's outputs and targets
            joined into one tensor each, or an object with ``reset()``, ``update(outputs, targets)`` and
            ``compute()`` (a torchmetrics ``Metric``), fed batch by batch, for outputs that cannot be joined
            (default: top-1 accuracy as a fraction).
        metric_name: its name in the results (default ``"accuracy"``, the function's or the metric class's name).
        repeats: measured repeats per variant, 1 to 1000 (at least 2 for a confidence interval; 5 by default).
        warmup: untimed passes over the data per variant before the repeats, 0 to 100 (at least 1 is always
            run: it checks the outputs and times a pass).
        train_data: training batches for recipes that train or calibrate (see
            :class:`greenmeter.comparison.recipes.RecipeContext`); or give ``recipe_context`` directly.
        train_fn: the user's trainer for recipes that train, as in ``RecipeContext``.
        val_data: held-out batches for recipes that calibrate on them, as in ``RecipeContext``.
        meter: the meter to use (default: a new one with ``carbon`` and ``store``).
        carbon: carbon settings for the CO2e figures (default: world average, marked assumed).
        store: keep the windows and the comparison in a run store (a Store, a path, or ``True``).
        min_repeat_s: shortest repeat in seconds, 0 to 3600 (default: 50 update periods of the slowest source,
            and at least 0.2 s); repeats pass over the data several times to reach it.
        seed: ``torch.manual_seed`` before building recipes, before the warm-up and before each repeat (outside its
            window, so the first pass, whose outputs are scored, starts from the same state); 0 to 2**32 - 1.
        significance: the test of each variant's energy against the baseline's over the repeats:
            ``"paired"`` (the default: a paired t-test of the per-round ratios variant / baseline, which
            removes the load a round shares, :func:`greenmeter.stats.paired_ratio_test`), ``"welch"``
            (Welch's t-test, the repeats taken as independent samples) or ``"bootstrap"`` (percentile
            bootstrap, 10,000 resamples, seeded with ``seed``; for repeats far from normal, and at least 5
            a side). The same test decides which variants are statistically tied in energy.
        threads: PyTorch's intra-op threads for the whole comparison, 1 to 1024 (``torch.set_num_threads``;
            restored afterwards); ``None`` keeps the current setting. The number used is kept in
            ``Comparison.torch_threads``. On a machine that other work keeps busy, fewer threads than the
            free cores keep latency and CPU-time estimates from growing with the other load.
        name: the comparison's name.
        progress: ``True`` for progress on stderr (a progress bar on a terminal or in a notebook, a line per
            item elsewhere: :mod:`greenmeter.comparison.progress`), ``False`` for none, or a callable given
            each line.
        target_key: the key of the targets in dict batches (default ``"labels"``); removed from the inputs.
        output_fn: ``output_fn(model_output) -> tensor``, what the metric sees of a model's output (default
            :func:`greenmeter.comparison.batches.default_output`: a tensor as it is, the first tensor of a tuple,
            or the ``.logits`` of a Hugging Face ``ModelOutput``).

    Returns:
        A :class:`Comparison`, also stored when the meter has a store.

    Raises:
        ConfigError: bad arguments (:func:`check_settings`), empty data or a batch it cannot read, an unknown recipe, a recipe argument
            the recipe refuses or a stacked order that cannot work (all checked before any work), a baseline that cannot run or whose metric is not
            a number. Failures of other variants are recorded in their results instead.
        KeyboardInterrupt: Ctrl-C, or SIGTERM (as :class:`~greenmeter.metering.interrupts.Terminated`, while
            ``compare`` runs, where SIGTERM had its default action): raised unchanged once the run is finished
            ``interrupted`` and, with a store, the interleaved rounds every variant completed are stored as a
            comparison with ``status="interrupted"`` (none when no round was complete).
    """
    import torch

    if not isinstance(variants, Mapping) or not variants:
        raise ConfigError("variants must be a non-empty mapping of names to models, recipe specs or Variants")
    checked = check_settings(repeats=repeats, warmup=warmup, batch_size=batch_size, seed=seed,
                             min_repeat_s=min_repeat_s, significance=significance, threads=threads)
    repeats, warmup, batch_size, seed = checked["repeats"], checked["warmup"], checked["batch_size"], checked["seed"]
    min_repeat_s, threads = checked["min_repeat_s"], checked["threads"]
    progress_printer(progress)  # a bad progress fails here, before any work
    target_key, output_fn = check_target_key(target_key), check_output_fn(output_fn)
    check_metric(metric)
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
    metric_name = name_of_metric(metric, metric_name)
    batches = evaluation_batches(data, batch_size, target_key=target_key)
    n_samples = sum(b.size for b in batches)
    targets = [to_device(b.targets, "cpu") for b in batches]  # the metric sees targets and outputs on the CPU
    recipes = {k: s.recipe for k, s in specs.items() if s.recipe is not None}
    if recipes:
        for key, spec_text in recipes.items():  # every name and argument, before anything is built
            try:
                check_recipe(spec_text)
            except ConfigError as err:
                raise ConfigError(f"variant {key!r}: {err}") from err
        if recipe_context is None:
            recipe_context = RecipeContext(example_input=batches[0].inputs, train_data=train_data, train_fn=train_fn,
                                           val_data=val_data, seed=seed, target_key=target_key)

    own_meter = meter is None
    if meter is None:
        meter = Meter(carbon=carbon, store=store, name=name)
    started = time.perf_counter()
    created_at = _dt.datetime.now(_dt.timezone.utc).isoformat()
    show = Progress(progress, len(recipes) + len(specs) + repeats * len(specs))
    threads_before = torch.get_num_threads()
    entries: list[Any] = []
    rounds = _Rounds()  # the interleaved rounds every variant completed, kept for an interrupted comparison
    passes = 0
    watch: LoadWatch | None = None
    stored = False
    ended_by: BaseException | None = None  # what cut the comparison short: its run ends failed or interrupted

    def conclude(status: str, flags: list[str]) -> Comparison:
        """The comparison of the completed rounds, stored when the meter has a store."""
        nonlocal stored
        results = summarise(entries, baseline, carbon, meter, significance, seed,
                            Scoring(metric_fn, targets, zero_one=metric is None))
        mixed = mixed_devices(entries)
        if mixed is not None:
            flags.append(mixed)
        if rounds.done < 3:
            flags.append(f"only {rounds.done} repeat(s): confidence intervals and significance need more "
                         "(5 advised)")
        used_threads = torch.get_num_threads()
        busy = None if watch is None else busy_flag(watch.other_cores(), "the timed passes", used_threads)
        if busy is not None:
            flags.append(busy)
        comparison = Comparison(
            name=name, created_at=created_at, baseline=baseline, metric_name=metric_name, repeats=rounds.done,
            warmup=warmup, samples_per_pass=n_samples, passes_per_repeat=passes, variants=results,
            host=meter.host, backends=tuple(b.name for b in meter.backends),
            carbon=(carbon or CarbonSettings()).to_dict(), seed=seed, run_id=meter.run_id, flags=tuple(flags),
            duration_s=time.perf_counter() - started,
            sources=tuple({"key": d.key, **d.provenance.to_dict()} for d in meter.domains),
            torch_threads=used_threads, status=status,
        )
        if meter.store is not None:
            with signals_deferred():  # stored whole, then a Ctrl-C that came meanwhile is raised
                meter.store.add_comparison(comparison)
                stored = True
        return comparison

    with sigterm_interrupts():  # SIGTERM ends the comparison as Ctrl-C does, not the process at once
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            meter.start()
            entries = build_entries(specs, baseline, recipes, recipe_context, meter, carbon, seed, show)
            base = entries[0]
            for entry in entries:
                prepare(entry, base, batches, targets, metric_fn, metric_name, warmup, seed, model_facts, show,
                        output_fn)
                if entry is base and base.error is not None:
                    raise ConfigError(f"the baseline {baseline!r} could not be evaluated: {base.error}")
            live = [e for e in entries if e.error is None]
            fastest = min(e.facts["pass_s"] for e in live)
            passes = passes_for(min_repeat_s if min_repeat_s is not None else default_repeat_s(meter), fastest)
            watch = LoadWatch()
            for r in range(repeats):
                for entry in entries:
                    if entry.error is None:
                        measure(entry, meter, batches, targets, metric_fn, metric_name, passes, r, seed, show,
                                output_fn)
                    else:
                        show(f"{entry.name}: skipped (failed)", advance=1)
                rounds.complete(entries)
            return conclude("complete", [])
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: the completed rounds are kept, then it goes on
            ended_by = err
            if rounds.done and not stored and meter.store is not None:
                _keep_interrupted(conclude, rounds, entries, repeats, err, show)
            raise
        except BaseException as err:  # recorded on the run, then raised unchanged
            ended_by = err
            raise
        finally:
            show.close()  # a bar cut short stays as last drawn
            if threads is not None:
                torch.set_num_threads(threads_before)
            if own_meter:  # the windows measured so far stay stored; the run ends by what ended the comparison
                with signals_deferred():
                    meter.close(error=ended_by)


class _Rounds:
    """How many interleaved rounds (one repeat of every variant) completed, and each variant's state after
    the last of them, so that an interrupted comparison rests on whole rounds only."""

    _LISTS = ("metric_values", "energy", "bands", "durations", "sizes")
    _VALUES = ("samples", "time_s")
    _SETS = ("flags", "provenance")

    def __init__(self) -> None:
        self._state: tuple[int, dict[int, tuple[Any, ...]]] = (0, {})  # one attribute: a Ctrl-C never splits it

    @property
    def done(self) -> int:
        """The number of completed rounds."""
        return self._state[0]

    def complete(self, entries: Iterable[Any]) -> None:
        """Count one more completed round and remember where each variant stood."""
        marks = {id(e): (tuple(len(getattr(e, k)) for k in self._LISTS), tuple(getattr(e, k) for k in self._VALUES),
                         tuple(dict(getattr(e, k)) for k in self._SETS)) for e in entries}
        self._state = (self._state[0] + 1, marks)

    def rewind(self, entries: Iterable[Any]) -> None:
        """Bring each variant back to where it stood after the last completed round (its failure is kept)."""
        for e in entries:
            lengths, values, sets = self._state[1][id(e)]
            for key, n in zip(self._LISTS, lengths):
                del getattr(e, key)[n:]
            for key, value in zip(self._VALUES + self._SETS, values + sets):
                setattr(e, key, value)


def _keep_interrupted(conclude: Callable[[str, list[str]], Comparison], rounds: _Rounds, entries: list[Any],
                      repeats: int, err: KeyboardInterrupt, show: Progress) -> None:
    """Store the comparison of the completed rounds, marked interrupted; a store fault is logged, not raised."""
    said = "SIGTERM" if getattr(err, "signal_name", "SIGINT") == "SIGTERM" else "Ctrl-C (SIGINT)"
    if rounds.done < repeats:
        note = (f"interrupted by {said} in repeat {rounds.done + 1} of {repeats}: these figures come from the "
                f"{rounds.done} repeat(s) every variant completed; the repeat in progress is not counted (its "
                "finished windows stay in the stored run, the window it cut short was dropped)")
    else:
        note = f"interrupted by {said} after all {repeats} repeats, while the comparison was being summarised"
    rounds.rewind(entries)
    try:
        conclude("interrupted", [note])
    except Exception as fault:  # noqa: BLE001 - the interruption is what the caller must get
        log.warning("greenmeter: the interrupted comparison could not be stored (%s: %s)", type(fault).__name__,
                    fault)
        return
    show(f"interrupted: stored the {rounds.done} repeat(s) every variant completed, marked interrupted", keep=True)
