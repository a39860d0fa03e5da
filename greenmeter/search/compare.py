"""The found architectures against a hand-designed baseline, as a :class:`~greenmeter.records.comparison.Comparison`.

:func:`compare_found` trains the baseline and the best architectures of the search's Pareto front the
same way (the task's training, the same epochs and seed), each in a meter window that becomes its making
cost, and then runs :func:`greenmeter.compare` on data the search never saw, so every existing report
(``greenmeter.comparison_report``, ``table()``, the store) shows the result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from greenmeter._checks import whole_number
from greenmeter._errors import ConfigError
from greenmeter.comparison.compare import Variant, compare
from greenmeter.comparison.progress import progress_printer
from greenmeter.comparison.steps import provenance_lines
from greenmeter.metering.meter import Meter
from greenmeter.records.comparison import MakingCost
from greenmeter.search.evaluate import SearchTask
from greenmeter.search.records import Candidate, SearchResult
from greenmeter.search.space import SearchSpace, config_key
from greenmeter.store.recorder import opened_store

if TYPE_CHECKING:
    from torch import nn

    from greenmeter.records.comparison import Comparison

__all__ = ["compare_found"]


def _pick(result: SearchResult, top: int) -> list[Candidate]:
    """The ``top`` front members spread from the most accurate to the cheapest (both ends kept)."""
    front = list(result.pareto_front)
    if top >= len(front):
        return front
    if top == 1:
        return front[:1]
    step = (len(front) - 1) / (top - 1)
    picked = dict.fromkeys(front[round(k * step)].id for k in range(top))
    return [result.candidate(i) for i in picked]


def compare_found(
    result: SearchResult,
    space: SearchSpace,
    task: SearchTask,
    baseline: nn.Module | Mapping[str, Any],
    data: Any,
    *,
    top: int = 3,
    epochs: int | None = None,
    train_baseline: bool = True,
    include_search_cost: bool = True,
    meter: Meter | None = None,
    store: Any = None,
    name: str = "architecture search",
    progress: bool | Callable[[str], None] = True,
    **compare_kwargs: Any,
) -> Comparison:
    """Compare a hand-designed baseline with the architectures a search found, side by side.

    Args:
        result: the search's result.
        space: the space it searched (to build the found configurations again).
        task: the task it used (its ``train`` trains every model here).
        baseline: the hand-designed model, untrained (it is trained like the found ones, in place) or a
            configuration of ``space``.
        data: evaluation data for :func:`greenmeter.compare`, unseen by the search (e.g. the test split).
        top: how many front members to compare, spread from the most accurate to the cheapest.
        epochs: training epochs for every model (default: the search's longest rung).
        train_baseline: ``False`` when ``baseline`` is already trained (its making cost is then unknown).
        include_search_cost: count the search's whole energy (``result.search_energy_j``) in each found
            model's making cost, so ``break_even_inferences`` says when the search itself pays back.
        meter: the meter for the training windows and the comparison (default: a new one, closed here). A
            meter with a store keeps the comparison as ``compare`` made it, without the notes added here.
        store: keep the returned comparison (with its notes and details) in a run store: a
            :class:`~greenmeter.store.database.Store`, a path, or ``True`` for the default store.
        name: the comparison's name.
        progress: ``True`` for progress lines on stderr, ``False`` for none, or a callable given each line.
        **compare_kwargs: passed to :func:`greenmeter.compare` (``repeats``, ``min_repeat_s``, ``threads``...).

    Returns:
        The :class:`~greenmeter.records.comparison.Comparison`: ``"baseline"`` first, then ``"found-1"``... in
        front order; each found variant's ``details`` hold its ``config`` and ``search_candidate`` id.

    Raises:
        ConfigError: an empty front, ``top`` below 1, or a baseline that is neither a model nor a config.
    """
    top = whole_number("top", top, minimum=1)
    progress_printer(progress)  # a bad progress fails here, before any training
    import torch

    picked = _pick(result, top)
    if not picked:
        raise ConfigError("the search has no Pareto front to compare (it evaluated no candidate)")
    if space.name != result.space.get("name"):
        raise ConfigError(f"the result searched space {result.space.get('name')!r}, not {space.name!r}")
    epochs = epochs if epochs is not None else max(result.budget["epochs"])
    seed = result.seed
    own_meter = meter is None
    if meter is None:
        meter = Meter(name=name)

    def trained(model: nn.Module, label: str, extra_j: float) -> Variant:
        with meter.window(f"make:{label}") as w:
            task.train(model, epochs, seed)
        model.eval()
        m = w.measurement
        lines = provenance_lines(m.domains)
        if extra_j:
            lines += (f"includes the architecture search: {result.search_energy_j:.4g} J over "
                      + f"{len(result.candidates)} candidates",)
        total = m.energy_j + extra_j
        co2e = None  # the training window's grid intensity and PUE, applied to the search's joules too
        if m.carbon is not None and m.energy_j > 0:
            co2e = m.carbon.co2e_g * total / m.energy_j
        return Variant(model=model, making=MakingCost(total, m.duration_s, lines, co2e, True))

    try:
        if isinstance(baseline, Mapping):
            torch.manual_seed(seed)
            baseline = space.build(space.validate(baseline))
        if not isinstance(baseline, torch.nn.Module):
            raise ConfigError(f"baseline must be a torch.nn.Module or a configuration, not {type(baseline).__name__}")
        variants: dict[str, Any] = {"baseline": trained(baseline, "baseline", 0.0) if train_baseline else baseline}
        notes = [f"every model trained the same way: {task.name}, {epochs} epochs, seed {seed}"]
        extra = result.search_energy_j if include_search_cost else 0.0
        for k, cand in enumerate(picked, start=1):
            torch.manual_seed(seed)
            variants[f"found-{k}"] = trained(space.build(cand.config), f"found-{k}", extra)
            notes.append(f"found-{k} is search candidate #{cand.id}: {cand.label()} (held-out accuracy "
                         f"{cand.accuracy * 100:.2f}% after {cand.epochs} epoch{'' if cand.epochs == 1 else 's'} "
                         "in the search)")
        if include_search_cost:
            notes.append(f"each found model's making cost includes the whole search ({result.search_energy_j:.4g} "
                         "J), so its break-even counts the inferences that pay back the search")
        comparison = compare(variants, data, meter=meter, name=name, seed=seed, progress=progress, **compare_kwargs)
    finally:
        if own_meter:
            meter.close()
    found = {f"found-{k}": c for k, c in enumerate(picked, start=1)}
    results = tuple(dataclasses.replace(v, details={**v.details, "config": dict(found[v.name].config),
                                                    "config_key": config_key(found[v.name].config),
                                                    "search_candidate": found[v.name].id})
                    if v.name in found else v for v in comparison.variants)
    final = dataclasses.replace(comparison, variants=results, flags=tuple(notes) + tuple(comparison.flags))
    if store is not None and store is not False:
        with opened_store(store) as target:
            if target is not None:
                target.add_comparison(final)
    return final
