"""``greenmeter.optimize``: the lowest measured energy per sample within an accuracy budget.

The question it answers: of the variants the bundled recipes (alone and stacked) can make from this model,
which uses the least energy per sample, measured on this machine, while its metric stays within
``max_drop`` of the baseline's (and, optionally, its latency or size within a limit)? ::

    result = greenmeter.optimize(model, (x_test, y_test), max_drop=0.005, train_data=loader,
                                 val_data=(x_val, y_val), time_budget_s=600)
    print(result.summary())
    print(result.table())                # every candidate, how far it got and why it stopped there

How it searches (docs/optimize.md has the rules and their reasons):

1. **Sensitivity.** :func:`greenmeter.comparison.sensitivity.layer_sensitivity` measures, layer by layer,
   the metric drop when that layer alone is quantized (int8, int4) or pruned, on the selection data.
2. **Candidates** (:func:`default_candidates`, unless ``recipes=`` names them): the quantizers, with the
   layers whose int8 (int4) drop alone exceeds half the budget kept in float (``[keep=...]``); when the
   model can be trained, structured shrinking (``channels``, ``distill``) at ratios chosen from the
   pruning sensitivity, and each shrinker stacked with int8 (``"channels:0.5+int8-static"``).
3. **Build and check** (round 0): each candidate is built with its making energy measured, then its metric
   is computed on the selection data; one whose drop exceeds ``max_drop`` is dropped at once, before any
   energy is measured. Stacks whose first step already left the budget are not built.
4. **Successive halving on measured energy.** The survivors and the baseline are compared side by side
   (:func:`greenmeter.compare`, interleaved repeats) with ``screen_repeats`` repeats; the ``1/eta`` of lowest
   energy per sample go on to a round with ``eta`` times the repeats, until ``finalists`` remain. A latency or
   size limit drops a candidate in any round.
5. **The final comparison.** The baseline, the finalists and the best one-step recipe are compared with
   ``final_repeats`` repeats on the evaluation data, and the recommendation rule
   (:func:`greenmeter.comparison.recommend.recommend`, tolerance ``max_drop``: a measurable saving, the
   metric change's 95% interval within the budget, least energy, ties ranked) picks the winner. That
   comparison is the evidence, stored with the rest when the meter has a store.

The time budget is checked before each build and each screening round, a build or a round being started only
when the time it is expected to take (:func:`expected_build_s`, :func:`next_round_s`) is left; when it runs out, the candidates
not yet built are marked ``not tried`` and the final comparison still runs, so the answer always rests on a
full comparison.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from greenmeter._checks import number, text, whole_number
from greenmeter._errors import ConfigError, GreenmeterError
from greenmeter.comparison.batches import (
    DEFAULT_TARGET_KEY,
    Batch,
    OutputFn,
    check_output_fn,
    check_target_key,
    evaluation_batches,
    model_output,
)
from greenmeter.comparison.compare import Variant, check_settings, compare
from greenmeter.comparison.metrics import Metric, accuracy_metric, check_metric, metric_value
from greenmeter.comparison.metrics import metric_name as name_of_metric
from greenmeter.comparison.progress import Progress
from greenmeter.comparison.recipes import STEP_SEPARATOR, RecipeContext, check_recipe, parse_step
from greenmeter.comparison.recommend import recommend
from greenmeter.comparison.steps import Scoring, build_measured, paired_metric_test, stacked_making
from greenmeter.metering.interrupts import signals_deferred
from greenmeter.metering.meter import Meter
from greenmeter.records.comparison import change_text, metric_text
from greenmeter.records.optimization import CandidateOutcome, OptimizeResult, Rung
from greenmeter.stats import energy_test

if TYPE_CHECKING:
    import torch

    from greenmeter.carbon.settings import CarbonSettings
    from greenmeter.records.comparison import Comparison, MakingCost
    from greenmeter.records.sensitivity import Sensitivity

__all__ = ["DEFAULT_PROBES", "default_candidates", "optimize"]

#: The sensitivity probes :func:`optimize` runs by default: int8 and int4 on each layer, magnitude pruning at
#: two levels (the pruning drops choose the shrinking ratios tried).
DEFAULT_PROBES = ("int8", "int4", "prune:0.5", "prune:0.8")


def expected_build_s(spec: str, made: Mapping[str, float]) -> tuple[float, str] | None:
    """How long making ``spec`` is expected to take, and the candidate that says so: the longest making time in
    ``made`` (candidate -> seconds) of a candidate whose first step is the same recipe (``distill:0.25`` for
    ``distill:0.5``, ``channels:0.5`` for ``channels:0.7+int8-static``); ``None`` when none was made."""
    def recipe(candidate: str) -> str:
        return parse_step(candidate.split(STEP_SEPARATOR)[0].strip())[0]

    same = [(seconds, other) for other, seconds in made.items() if recipe(other) == recipe(spec)]
    return max(same) if same else None


def next_round_s(last: Rung, candidates: int, eta: int) -> float:
    """The next screening round's expected seconds: the last round's, scaled by the models it compares (the
    candidates and the baseline) and by ``eta`` times the repeats."""
    return last.seconds * eta * (candidates + 1) / (len(last.measured) + 1)


def _kept_whole(model: Any) -> dict[str, list[str]]:
    """The layers ``channels`` and ``qat`` cannot take in this model, which their candidates keep: channel
    pruning's layers it cannot prune (an embedding, attention), QAT's embeddings and the layers inside modules FX
    calls whole (:func:`~greenmeter.compression.qat.qat_float_layers`)."""
    from greenmeter.compression.pruning import channel_unprunable_layers
    from greenmeter.compression.qat import qat_float_layers

    return {"channels": [n for n in channel_unprunable_layers(model) if n != "(model)"],
            "qat": qat_float_layers(model)}


def default_candidates(sensitivity: Sensitivity | None, max_drop: float, *, can_train: bool,
                       has_val: bool = False, kept: Mapping[str, Sequence[str]] | None = None) -> list[tuple[str, str]]:
    """The recipes :func:`optimize` tries when ``recipes=`` is not given, each with why it was proposed.

    Rules (docs/optimize.md):

    * **Layers kept in float.** A layer whose metric drops by more than half the budget when it alone is
      int8-quantized is kept in float by every int8 step (``int8-static[keep=...]``); the same with the
      int4 probe for ``int4``. Half, because the drops of several layers add up.
    * **Quantizers:** ``int8-static``, ``int8-dynamic``, ``int4`` and, when the model can be trained, ``qat``.
    * **Shrinkers** (only when the model can be trained): ``channels`` at 0.5 and 0.7 when no layer alone
      loses more than the budget at 80% magnitude pruning, else at 0.3 and 0.5; ``distill`` at 0.5 and 0.25.
    * **Stacks:** each shrinker followed by int8-static (with its kept layers): shrinking removes MACs, int8
      makes the rest cheaper; ordered first, since on a CPU they are the likeliest to be cheapest.
    * ``early-exit:auto`` when the model can be trained and validation data is given (its threshold is
      calibrated there).
    * **Layers a method cannot take** (``kept``) are kept by its steps: ``channels`` keeps the layers channel
      pruning cannot prune (a text model's embedding and attention: ``channels:0.5[keep=emb,...]``, which
      then prunes the feed-forward width), ``qat`` the embeddings it cannot fake-quantize.
    * Unstructured pruning (``prune``, ``ticket``) is not proposed: its masked weights still run dense
      kernels, so it saves no energy on a CPU; name it in ``recipes=`` to measure it anyway.

    Args:
        sensitivity: the per-layer sensitivity (``None``: no layer is kept in float; ratios 0.3 and 0.5).
        max_drop: the metric budget, in the metric's unit.
        can_train: whether a trainer or training data is available.
        has_val: whether validation data is available.
        kept: recipe name (``"channels"``, ``"qat"``) -> the layers of the model its steps must keep whole.

    Returns:
        ``(spec, origin)`` pairs in the order they are built.
    """

    def sensitive(probe: str, kinds: tuple[str, ...] | None = None) -> tuple[str, ...]:
        if sensitivity is None or probe not in sensitivity.probes:
            return ()
        names = sensitivity.sensitive_layers(probe, max_drop / 2)
        if kinds is None:
            return tuple(names)
        kind = {layer.name: layer.kind for layer in sensitivity.layers}
        return tuple(n for n in names if kind.get(n) in kinds)

    def keep(spec: str, layers: Sequence[str]) -> str:
        return f"{spec}[keep={','.join(layers)}]" if layers else spec

    int8_keep = sensitive("int8")
    static = keep("int8-static", int8_keep)
    why8 = "quantizer" + (f", keeping {', '.join(int8_keep)} in float (int8 alone costs over half the budget)"
                          if int8_keep else "")
    out: list[tuple[str, str]] = []
    shrinkers: list[str] = []
    if can_train:
        worst = None if sensitivity is None or "prune:0.8" not in sensitivity.probes else sensitivity.worst("prune:0.8")
        tolerant = worst is not None and worst[1] <= max_drop
        ratios = ("0.5", "0.7") if tolerant else ("0.3", "0.5")
        whole = {name: tuple((kept or {}).get(name, ())) for name in ("channels", "qat")}

        def kept_note(name: str) -> str:
            return f", keeping {', '.join(whole[name])} whole (it cannot take them)" if whole[name] else ""

        shrinkers = [keep(f"channels:{r}", whole["channels"]) for r in ratios] + ["distill:0.5", "distill:0.25"]
        out += [(s, "shrinker" + (" (every layer tolerates 80% pruning alone)" if tolerant and s.startswith("channels")
                                  else "") + (kept_note("channels") if s.startswith("channels") else ""))
                for s in shrinkers]
        out += [(f"{s}{STEP_SEPARATOR}{static}", "stack: shrink, then int8") for s in shrinkers]
        out.append((keep("qat", tuple(dict.fromkeys([*int8_keep, *whole["qat"]]))), "quantizer (trained)"
                    + kept_note("qat")))
    out.append((static, why8))
    out.append((keep("int8-dynamic", sensitive("int8", ("Linear",))), "quantizer"))
    out.append((keep("int4", sensitive("int4", ("Linear",))), "quantizer (4-bit weights)"))
    if can_train and has_val:
        out.append(("early-exit:auto", "dynamic inference"))
    return out


def _score(model: Any, batches: Sequence[Batch], metric_fn: Metric,
           output_fn: OutputFn | None = None) -> tuple[float, list[Any]]:
    """The metric of ``model`` on ``batches``, and each batch's outputs (for a paired test against the baseline), on
    the CPU as ``compare`` scores them (candidates may run on different devices)."""
    import torch

    with torch.inference_mode():
        outputs = [model_output(model, b.inputs, output_fn).cpu() for b in batches]
    return float(metric_value(metric_fn, outputs, [b.targets for b in batches])), outputs


def _accuracy_low(base_outputs: list[Any], outputs: list[Any], targets: list[Any]) -> float | None:
    """The low end of the 95% interval of the accuracy change (McNemar's exact test, as the comparison gives it);
    ``None`` when the outputs cannot be paired sample by sample (shapes that differ between batches)."""
    from greenmeter.comparison.metrics import joined

    try:
        pair = joined(base_outputs), joined(outputs)
    except ConfigError:
        return None
    return paired_metric_test(*pair, Scoring(accuracy_metric, targets, True)).diff_low


def optimize(
    model: torch.nn.Module,
    data: Any,
    *,
    max_drop: float = 0.01,
    max_latency_ratio: float | None = None,
    max_size_ratio: float | None = None,
    recipes: Sequence[str] | None = None,
    train_fn: Callable[..., Any] | None = None,
    train_data: Any = None,
    val_data: tuple[Any, Any] | None = None,
    recipe_context: RecipeContext | None = None,
    metric: Metric | None = None,
    metric_name: str | None = None,
    time_budget_s: float = 900.0,
    screen_repeats: int = 2,
    final_repeats: int = 5,
    finalists: int = 3,
    eta: int = 2,
    batch_size: int = 256,
    min_repeat_s: float | None = None,
    probes: Sequence[str] | None = DEFAULT_PROBES,
    significance: str = "paired",
    meter: Meter | None = None,
    carbon: CarbonSettings | None = None,
    store: Any = None,
    seed: int = 0,
    threads: int | None = None,
    save_to: Any = None,
    name: str = "optimize",
    progress: bool | Callable[[str], None] = True,
    resume: bool = False,
    target_key: str = DEFAULT_TARGET_KEY,
    output_fn: OutputFn | None = None,
) -> OptimizeResult:
    """Find the variant with the lowest measured energy per sample whose metric stays within ``max_drop``.

    See the module docstring for the search and docs/optimize.md for its rules.

    Args:
        model: the trained baseline (never changed).
        data: the evaluation data, ``(inputs, targets)`` tensors or an iterable of batches, as for
            :func:`greenmeter.compare`; the final comparison measures and judges on it.
        max_drop: how much worse than the baseline's metric is acceptable, in the metric's unit (for accuracy
            a fraction: 0.005 is half a percentage point); judged against the 95% interval of the change in
            the final comparison. ``>= 0``.
        max_latency_ratio: optional limit on the per-sample latency (p50) against the baseline's (1.0: no slower).
        max_size_ratio: optional limit on the serialized size against the baseline's (0.25: a quarter).
        recipes: the recipe specs to try; ``None``: :func:`default_candidates` from the sensitivity.
        train_fn: the trainer that recipes that train use, as for :func:`greenmeter.compare`.
        train_data: the batches that recipes that train or calibrate use, as for :func:`greenmeter.compare`.
        val_data: held-out batches, as for :func:`greenmeter.compare`. With ``val_data`` the sensitivity and
            the budget checks of the search run on it, and only the final comparison on ``data``; without it,
            all run on ``data`` and the result says so (a choice made and confirmed on the same data is
            optimistic).
        recipe_context: all of what recipes use, given at once, as for :func:`greenmeter.compare`.
        metric: the metric (higher is better: a function or a batch metric object, as for
            :func:`greenmeter.compare`); default top-1 accuracy.
        metric_name: the metric's name.
        time_budget_s: seconds the search may take before the final comparison (> 0): checked before each
            build and each screening round (either starts only if the time it is expected to take is left).
        screen_repeats: repeats of the first screening round (>= 2; each later round ``eta`` times more).
        final_repeats: repeats of the final comparison (>= 2).
        finalists: how many candidates reach the final comparison (>= 1).
        eta: the halving factor: each screening round keeps the best ``1/eta`` (>= 2).
        batch_size: as for :func:`greenmeter.compare`.
        min_repeat_s: as for :func:`greenmeter.compare`.
        significance: as for :func:`greenmeter.compare`.
        threads: as for :func:`greenmeter.compare`.
        seed: as for :func:`greenmeter.compare`.
        carbon: as for :func:`greenmeter.compare`.
        probes: the sensitivity probes (:func:`greenmeter.comparison.sensitivity.layer_sensitivity`);
            ``None`` or empty skips the sensitivity (then no layer is kept in float).
        meter: the meter for every window (default: a new one with ``carbon`` and ``store``).
        store: keep the windows and comparisons in a run store (a Store, a path, or ``True``).
        save_to: a directory to save the chosen model in (state dict, recipe, exported program:
            :func:`greenmeter.comparison.export.save_model`); ``None``: not saved.
        name: the name of the search, its comparisons and its run.
        progress: ``True`` (a progress bar on a terminal or in a notebook, lines on other standard errors:
            :mod:`greenmeter.comparison.progress`), ``False`` or a callable given each line.
        resume: go on with the unfinished search of the same name, baseline, data and settings journaled in the
            store (:mod:`greenmeter.comparison.journal`): its sensitivity, built candidates and screening rounds
            are read back, not done again, and ``time_budget_s`` counts the time it already spent. Needs a store.
            When ``False``, an unfinished journal of the same search is discarded. With a store every search is
            journaled step by step, so an interrupted one can be resumed.
        target_key: how dict batches give their targets, as for :func:`greenmeter.compare`; used by every
            step of the search.
        output_fn: how the model's output becomes the tensor the metric sees, as for
            :func:`greenmeter.compare`; used by every step of the search.

    Returns:
        An :class:`~greenmeter.records.optimization.OptimizeResult`; ``chosen`` is the baseline's name when no
        candidate has a measurable saving within the budget.

    Raises:
        ConfigError: a bad argument or recipe (before any work), a batch it cannot read; ``save_to`` with inputs
            that are not one tensor (the saved program takes one); ``resume`` without a store; the baseline
            cannot be evaluated.
    """
    import torch

    from greenmeter.comparison.journal import SearchJournal, fingerprint
    from greenmeter.records.comparison import MakingCost

    # ----------------------------------------------------------------------------------- checks, before work
    max_drop = number("max_drop", max_drop, low=0, note="in the metric's unit: 0.005 = half a percentage point of "
                                                         "accuracy")
    max_latency_ratio = number("max_latency_ratio", max_latency_ratio, low=0, low_open=True, optional=True)
    max_size_ratio = number("max_size_ratio", max_size_ratio, low=0, low_open=True, optional=True)
    time_budget_s = number("time_budget_s", time_budget_s, low=0, low_open=True, unit="seconds")
    screen_repeats = whole_number("screen_repeats", screen_repeats, minimum=2, maximum=1000)
    final_repeats = whole_number("final_repeats", final_repeats, minimum=2, maximum=1000)
    finalists = whole_number("finalists", finalists, minimum=1, maximum=100)
    eta = whole_number("eta", eta, minimum=2, maximum=16)
    name = text("name", name)
    settings = check_settings(batch_size=batch_size, seed=seed, min_repeat_s=min_repeat_s,
                              significance=significance, threads=threads)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"optimize needs a torch.nn.Module baseline, not {type(model).__name__}")
    if recipes is not None:
        if isinstance(recipes, str) or not all(isinstance(r, str) for r in recipes) or not recipes:
            raise ConfigError("recipes must be a non-empty list of recipe specs such as ['int8-static', "
                              "'channels:0.5+int8-static'], or None for the default candidates")
        for spec in recipes:
            check_recipe(spec)
    probes = tuple(probes or ())
    if save_to is not None:  # a search of many minutes must not end on a directory it cannot write
        from greenmeter.comparison.export import check_save_directory

        save_to = check_save_directory(save_to)
    # a bar over the candidates, the screening rounds and the final comparison (it grows as rounds start)
    show = Progress(progress, 1, prefix="[optimize] ", counted=False)
    check_metric(metric)
    target_key, output_fn = check_target_key(target_key), check_output_fn(output_fn)
    metric_fn = metric or accuracy_metric
    metric_name = name_of_metric(metric, metric_name)
    eval_batches = evaluation_batches(data, settings["batch_size"], target_key=target_key)
    selection_data = data if val_data is None else val_data
    select_batches = evaluation_batches(selection_data, settings["batch_size"], target_key=target_key)
    if save_to is not None and not isinstance(eval_batches[0].inputs, torch.Tensor):
        raise ConfigError("save_to saves a program that takes one input tensor, and these batches' inputs are not "
                          "one tensor; leave save_to out and save the chosen model yourself")
    if recipe_context is None:
        recipe_context = RecipeContext(example_input=eval_batches[0].inputs, train_data=train_data, train_fn=train_fn,
                                       val_data=val_data, seed=settings["seed"], target_key=target_key)
    compare_kwargs = {"metric": metric, "metric_name": metric_name, "batch_size": settings["batch_size"],
                      "min_repeat_s": settings["min_repeat_s"], "seed": settings["seed"],
                      "significance": settings["significance"], "carbon": carbon, "target_key": target_key,
                      "output_fn": output_fn}
    created_at = _dt.datetime.now(_dt.timezone.utc).isoformat()
    if resume and meter is None and store in (None, False):
        raise ConfigError(_NO_STORE)
    own_meter = meter is None
    if meter is None:
        meter = Meter(carbon=carbon, store=store, name=name)
    threads_before = torch.get_num_threads()
    flags: list[str] = []
    if val_data is None:
        flags.append("the candidates were chosen on the same data the final comparison judges them on: its figures "
                     "are optimistic for unseen data; pass val_data to choose on held-out data")
    model.eval()
    journal = None
    try:
        if settings["threads"] is not None:
            torch.set_num_threads(settings["threads"])
        meter.start()  # opens its store
        if resume and meter.store is None:
            raise ConfigError(_NO_STORE)
        journal = SearchJournal(meter.store, name, fingerprint(model, eval_batches, select_batches, train_data, {
            "max_drop": max_drop, "max_latency_ratio": max_latency_ratio, "max_size_ratio": max_size_ratio,
            "recipes": None if recipes is None else list(recipes), "probes": list(probes), "metric": metric_name,
            "train_fn": None if train_fn is None else getattr(train_fn, "__qualname__", type(train_fn).__name__),
            "screen_repeats": screen_repeats, "final_repeats": final_repeats, "finalists": finalists, "eta": eta,
            **({} if target_key == DEFAULT_TARGET_KEY else {"target_key": target_key}),
            **({} if output_fn is None else {"output_fn": getattr(output_fn, "__qualname__", type(output_fn).__name__)}),
            **settings}), resume=resume, show=show)
        deadline = time.perf_counter() + time_budget_s - journal.spent_before_s
        if journal.resumed:
            flags.append(f"resumed from the store's journal ({journal.summary()}); the making energy of the "
                         "candidates read back was measured in the earlier run")
            if str(journal.fingerprint["training data"]).startswith("unchecked"):
                flags.append("resumed with training data greenmeter cannot hash: it was not checked to be the same "
                             "as in the earlier run")
        # ------------------------------------------------------------------------- baseline and sensitivity
        base_metric, base_outputs = _score(model, select_batches, metric_fn, output_fn)
        select_targets = [b.targets for b in select_batches]
        show(f"baseline {metric_name} on the {'validation' if val_data is not None else 'evaluation'} data: "
             f"{metric_text(metric_name, base_metric)}")
        sensitivity = None
        if probes and journal.get("sensitivity") is not None:
            from greenmeter.records.sensitivity import Sensitivity

            sensitivity = Sensitivity.from_dict(journal.get("sensitivity"))
            show("per-layer sensitivity: read back from the journal")
        elif probes:
            from greenmeter.comparison.sensitivity import layer_sensitivity

            show(f"per-layer sensitivity ({', '.join(probes)})")
            # int8 ranges from the data int8-static calibrates on (the training batches), not the selection data
            # each calibration input as a one-item batch, so that a tuple of inputs is not read as (inputs, targets)
            calibration = [(x,) for x in recipe_context.calibration_inputs()]
            sensitivity = layer_sensitivity(model, selection_data, metric=metric, metric_name=metric_name,
                                            probes=probes, batch_size=settings["batch_size"], calibration=calibration,
                                            progress=False, target_key=target_key, output_fn=output_fn)
            journal.record("sensitivity", sensitivity.to_dict())
        can_train = recipe_context.can_train
        planned = ([(spec, "user") for spec in recipes] if recipes is not None else
                   default_candidates(sensitivity, max_drop, can_train=can_train, has_val=val_data is not None,
                                      kept=_kept_whole(model)))
        if recipes is None and not can_train:
            flags.append("no train_fn or train_data: recipes that train (channels, distill, qat, stacks) were not "
                         "tried")
        show.grow(len(planned))
        show(f"{len(planned)} candidates: {', '.join(spec for spec, _ in planned)}")

        # ----------------------------------------------------------------------- round 0: build and check
        outcomes: dict[str, dict[str, Any]] = {}
        built: dict[str, tuple[Any, MakingCost]] = {}
        made_s: dict[str, float] = {}  # each candidate made here: seconds, to foresee the next of the same recipe
        over: set[str] = set()
        for i, (spec, origin) in enumerate(show.iterate(planned)):
            outcome = outcomes.setdefault(spec, {"spec": spec, "origin": origin, "rung": 0})
            first = spec.split(STEP_SEPARATOR)[0].strip() if STEP_SEPARATOR in spec else None
            if first is not None and first in over:
                outcome.update(status="over budget", reason=f"not built: its first step {first} already left the "
                                                            f"{metric_name} budget")
                continue
            step = f"candidate:{spec}"
            old = journal.get(step)
            if old is not None:
                outcome.update(old["outcome"])
                if outcome.get("status") == "over budget":
                    over.add(spec)
                if old.get("making") is None:  # it failed or left the budget: not done again
                    show(f"{spec}: {outcome.get('status')} (from the journal)")
                    continue
                stored = journal.model(step)
                if not isinstance(stored, str):
                    value, _ = _score(stored, select_batches, metric_fn, output_fn)
                    if value == outcome.get("metric"):
                        built[spec] = (stored, MakingCost.from_dict(old["making"]))
                        show(f"{spec}: read back from the journal")
                        continue
                    stored = "its stored model no longer gives the metric journaled for it"
                show(f"[{i + 1}/{len(planned)}] making {spec} again: {stored}")
            else:
                left = deadline - time.perf_counter()
                on_made = spec.rpartition(STEP_SEPARATOR)[0].strip() in built  # only its last step will run
                expected = None if on_made else expected_build_s(spec, made_s)
                if left <= 0 or (expected is not None and expected[0] > left):
                    outcome.update(status="not tried", reason="the time budget ran out before it was built" if left <= 0
                                   else f"the time budget had {left:.0f} s left, and making it would take about "
                                        f"{expected[0]:.0f} s (as {expected[1]} did)")
                    continue
                show(f"[{i + 1}/{len(planned)}] making {spec}")
            try:
                prefix, _, last = spec.rpartition(STEP_SEPARATOR)
                if prefix.strip() in built:  # a stack on a model already made: only its last step is built
                    variant, making = _build_on(spec, built[prefix.strip()], last.strip(), model, recipe_context,
                                                meter, carbon, settings["seed"])
                else:
                    variant, making, _ = build_measured(spec, spec, model, recipe_context, meter, carbon,
                                                        settings["seed"])
                value, outputs = _score(variant, select_batches, metric_fn, output_fn)
            except Exception as err:  # noqa: BLE001 - recorded for this candidate; the others go on
                outcome.update(status="failed", reason=f"{type(err).__name__}: {err}".splitlines()[0])
                show(f"{spec} FAILED: {outcome['reason']}", keep=True)
                journal.record(step, {"outcome": outcome})
                continue
            change = value - base_metric
            low = None
            if metric is None:  # McNemar's exact test of the accuracy change, as the comparison gives it
                low = _accuracy_low(base_outputs, outputs, select_targets)
            outcome.update(metric=value, metric_change=change, metric_low=low, making_j=making.energy_j,
                           making_s=making.duration_s)
            if prefix.strip() not in built:  # made whole, not on an earlier candidate's model
                made_s[spec] = making.duration_s
            if change < -max_drop - 1e-12:
                over.add(spec)
                outcome.update(status="over budget", reason=f"{metric_name} {change_text(metric_name, change)} on "
                                                            "the selection data, beyond the budget")
                show(f"{spec}: {change_text(metric_name, change)}, over budget")
                journal.record(step, {"outcome": outcome})
                continue
            built[spec] = (variant, making)
            journal.record(step, {"outcome": outcome, "making": making.to_dict()}, model=variant)
            show(f"{spec}: {change_text(metric_name, change)}, making {making.energy_j:.3g} J")

        # --------------------------------------------------------------------- successive halving on energy
        alive = list(built)
        rungs: list[Rung] = []
        repeats = screen_repeats
        last_ratio: dict[str, float] = {}
        while len(alive) > finalists:
            old = journal.get(f"round:{len(rungs) + 1}")
            if old is not None and set(old["rung"]["measured"]) <= set(alive):  # done before: read back
                for spec, outcome in old["outcomes"].items():
                    outcomes[spec].update(outcome)
                last_ratio.update(old["last_ratio"])
                alive = list(old["rung"]["kept"])
                rungs.append(Rung.from_dict(old["rung"]))
                show.grow(1)
                show(f"screening round {len(rungs)}: read back from the journal, {len(alive)} went on", advance=1)
                repeats *= eta
                continue
            left = deadline - time.perf_counter()
            expected = next_round_s(rungs[-1], len(alive), eta) if rungs else None
            if left <= 0 or (expected is not None and expected > left):
                why = ("ran out" if left <= 0 else
                       f"had {left:.0f} s left, and the next round would take about {expected:.0f} s")
                flags.append(f"the time budget {why} after {len(rungs)} screening round(s): {len(alive)} candidates "
                             f"were left, the final comparison took the {finalists} of lowest energy so far")
                break
            index = len(rungs) + 1
            round_started = time.perf_counter()
            show.grow(1)
            show(f"screening round {index}: {len(alive)} candidates, {repeats} repeats")
            in_round = list(alive)
            result = compare({"baseline": model, **{s: Variant(model=built[s][0], making=built[s][1]) for s in alive}},
                             data, baseline="baseline", repeats=repeats, meter=meter,
                             name=f"{name}: screening round {index}", progress=False, **compare_kwargs)
            measured = []
            for spec in alive:
                v = result.variant(spec)
                outcomes[spec]["rung"] = index
                if not v.ok:
                    outcomes[spec].update(status="failed", reason=f"it failed while measured: {v.error}")
                    continue
                broken = _limit_broken(v, max_latency_ratio, max_size_ratio)
                if broken is not None:
                    outcomes[spec].update(status="over budget", reason=broken)
                    continue
                ratio = v.vs_baseline.energy_ratio if v.vs_baseline is not None else None
                last_ratio[spec] = math.inf if ratio is None else ratio
                outcomes[spec]["energy_ratio"] = ratio
                measured.append(spec)
            measured.sort(key=lambda s: last_ratio[s])
            keep = max(finalists, math.ceil(len(measured) / eta))
            for rank, spec in enumerate(measured[keep:], start=keep + 1):
                outcomes[spec].update(status="screened out", reason=(
                    f"energy x{last_ratio[spec]:.3f} of the baseline's, rank {rank} of {len(measured)} in screening "
                    f"round {index} ({repeats} repeats); the {keep} lowest went on"))
            alive = measured[:keep]
            rungs.append(Rung(index, repeats, tuple(measured), tuple(alive), time.perf_counter() - round_started))
            journal.record(f"round:{index}", {"rung": rungs[-1].to_dict(), "last_ratio": last_ratio,
                                              "outcomes": {spec: outcomes[spec] for spec in in_round}})
            show.advance()
            repeats *= eta
        alive.sort(key=lambda s: last_ratio.get(s, math.inf))
        for spec in alive[finalists:]:
            outcomes[spec].update(status="screened out", reason="the time budget ran out: not among the "
                                                                f"{finalists} of lowest energy so far")
        final_specs = alive[:finalists]
        singles = sorted((s for s in built if STEP_SEPARATOR not in s and s in last_ratio),
                         key=lambda s: last_ratio[s])
        best_single = singles[0] if singles else None
        if best_single is not None and best_single not in final_specs and any(STEP_SEPARATOR in s for s in final_specs):
            final_specs.append(best_single)  # the stack's claim is made against it, side by side
            outcomes[best_single].pop("status", None)
            outcomes[best_single]["origin"] += "; back in the final as the best one-step recipe"

        # ------------------------------------------------------------------------------ the final comparison
        show(f"final comparison: the baseline and {', '.join(final_specs) or 'no candidate'}, {final_repeats} repeats")
        final = compare({"baseline": model, **{s: Variant(model=built[s][0], making=built[s][1]) for s in final_specs}},
                        data, baseline="baseline", repeats=final_repeats, meter=meter, name=name, progress=False,
                        **compare_kwargs)
        eligible = final
        for spec in final_specs:
            v = final.variant(spec)
            outcomes[spec]["rung"] = len(rungs) + 1
            outcomes[spec]["energy_ratio"] = None if v.vs_baseline is None else v.vs_baseline.energy_ratio
            broken = _limit_broken(v, max_latency_ratio, max_size_ratio) if v.ok else None
            if broken is not None:
                outcomes[spec].update(status="over budget", reason=broken)
                eligible = replace(eligible, variants=tuple(x for x in eligible.variants if x.name != spec))
        rec = recommend(eligible, tolerance=max_drop)
        chosen = rec.name or "baseline"
        for spec in final_specs:
            if outcomes[spec].get("status") is not None:
                continue
            if spec == chosen:
                outcomes[spec].update(status="chosen", reason=rec.reason)
            else:
                outcomes[spec].update(status="finalist", reason=_why_not(spec, final, rec, max_drop))
        versus = None
        if STEP_SEPARATOR in chosen and best_single is not None and best_single in final_specs:
            a, b = final.variant(best_single), final.variant(chosen)
            if a.ok and b.ok:
                versus = (best_single, energy_test(settings["significance"], a.energy_values_j, b.energy_values_j,
                                                   settings["seed"]))
        saved = None
        if save_to is not None and chosen != "baseline":
            from greenmeter.comparison.export import save_model

            show(f"saving {chosen} to {save_to}")
            v = final.variant(chosen)
            manifest = save_model(built[chosen][0], save_to, example_input=eval_batches[0].inputs, recipe=chosen,
                                  metric={"name": metric_name, "value": v.metric})
            saved = {"directory": str(save_to), **manifest.to_dict()}
        elif save_to is not None:
            flags.append("no variant was chosen, so nothing was saved")
        result = OptimizeResult(
            name=name, created_at=created_at, baseline="baseline", metric_name=metric_name, max_drop=max_drop,
            chosen=chosen, reason=rec.reason, comparison=final,
            candidates=tuple(CandidateOutcome.from_dict(o) for o in outcomes.values()), rungs=tuple(rungs),
            sensitivity=sensitivity,
            limits={k: v for k, v in (("max_latency_ratio", max_latency_ratio), ("max_size_ratio", max_size_ratio))
                    if v is not None},
            selection="validation data" if val_data is not None else "evaluation data",
            versus_best_single=versus, time_budget_s=time_budget_s, duration_s=journal.spent_s,
            flags=tuple(flags), saved=saved,
        )
        show(f"chose {chosen} in {result.duration_s:.0f} s", advance=1)
        if meter.store is not None:
            with signals_deferred():  # stored whole, then a Ctrl-C that came meanwhile is raised
                meter.store.add_optimization(result, finished_search=journal.key)
        return result
    except KeyboardInterrupt:
        if journal is not None and journal.store is not None:
            with signals_deferred(), contextlib.suppress(GreenmeterError):  # the time spent, for the budget
                journal.record("interrupted", {"at": _dt.datetime.now(_dt.timezone.utc).isoformat()})
            show("interrupted: what the search finished is journaled in the store; run the same search with "
                 "resume=True (greenmeter optimize CONFIG --resume) to go on from there", keep=True)
        raise
    finally:
        show.close()  # a bar cut short stays as last drawn
        torch.set_num_threads(threads_before)
        if own_meter:
            meter.close()


_NO_STORE = ("resume=True reads the search back from a run store: pass store= (a Store, a path or True), or a "
             "meter made with one")


def _build_on(spec: str, first: tuple[Any, MakingCost], last: str, baseline: Any, ctx: RecipeContext, meter: Meter,
              carbon: CarbonSettings | None, seed: int) -> tuple[Any, MakingCost]:
    """The stack ``spec``: step ``last`` built on the model already made for the rest of it (``first``).

    The result is what building the whole stack makes, without making its first steps twice: its making cost
    is the first steps' measured cost plus the last step's, each step kept in ``MakingCost.steps``, and its
    ``recipe`` lists every step. A ``distill`` step learns from the baseline, as in a stack built whole.
    """
    from greenmeter.comparison.recipes import Recipe

    before, before_cost = first
    if ctx.teacher is None:
        ctx = replace(ctx, teacher=baseline)
    variant, step_cost, _ = build_measured(spec, last, before, ctx, meter, carbon, seed)
    making = stacked_making([(before.recipe.spec, before_cost), (last, step_cost)])
    recipes = (*(before.recipe.steps or (before.recipe,)), variant.recipe)
    variant.recipe = Recipe(spec, None, making.trains, ", then ".join(r.description for r in recipes), steps=recipes)
    return variant, making


def _limit_broken(v: Any, max_latency_ratio: float | None, max_size_ratio: float | None) -> str | None:
    """Why a measured variant breaks a latency or size limit, or ``None``."""
    d = v.vs_baseline
    if d is None:
        return None
    if max_latency_ratio is not None and d.latency_ratio is not None and d.latency_ratio > max_latency_ratio:
        return f"latency x{d.latency_ratio:.2f} of the baseline's, over the limit x{max_latency_ratio:g}"
    if max_size_ratio is not None and d.size_ratio is not None and d.size_ratio > max_size_ratio:
        return f"size x{d.size_ratio:.2f} of the baseline's, over the limit x{max_size_ratio:g}"
    return None


def _why_not(spec: str, final: Comparison, rec: Any, max_drop: float) -> str:
    """Why a finalist was not chosen, in one sentence."""
    v = final.variant(spec)
    if not v.ok:
        return f"it failed in the final comparison: {v.error}"
    d = v.vs_baseline
    if d is None or not d.measurable_saving:
        p = None if d is None or d.energy_significance is None else d.energy_significance.p_value
        return "no measurable saving in the final comparison" + ("" if p is None else f" (p = {p:.2g})")
    test = d.metric_test
    if test is not None and test.diff_low is not None and test.diff_low < -max_drop - 1e-12:
        return (f"the 95% interval of its {final.metric_name} change reaches "
                f"{change_text(final.metric_name, test.diff_low)}, beyond the budget")
    if spec in rec.tied:
        return f"tied in energy with {rec.name}, ranked lower ({rec.tie_rule})"
    return f"more energy per sample than {rec.name} (x{d.energy_ratio:.3f} of the baseline's)"
