"""Decision stability: how often the demo's comparison recommends the same variant.

Trains the demo's digits CNN once and builds the demo's variants once (``greenmeter.demo.run.DEMO_RECIPES``,
each built under a meter window so its making energy is kept), then runs the demo's comparison
(``greenmeter.compare`` with the demo's repeats and repeat length) N times on those same models, each time
with a fresh interleaving order (the variants shuffled behind the baseline) and a fresh seed, and asks
``greenmeter.comparison.recommend.recommend`` (default 1 pp budget) for its recommendation. It prints each
run's recommendation, the energy tie and the rule that broke it, and how many runs agree with the most
common answer. Goal: the same recommendation in at least 9 of 10 runs (PASS when the most common answer
holds in >= 90% of the runs).

Reusing the models keeps the benchmark to the comparison's own noise (energy measurement, machine load):
training is deterministic for a fixed seed, but retraining N times would cost N times the demo.

Run: ``python benchmarks/decision_stability.py [--repeats N] [--quick] [--threads N] [--json PATH]
[--save DIR | --from DIR]``. ``--quick`` uses the demo's quick settings (fewer epochs and repeats, shorter
repeats); ``--threads N`` runs each comparison with ``compare(threads=N)`` (the demo keeps torch's
setting); ``--significance`` picks the energy test (``paired`` by default, as ``compare``). ``--save DIR`` keeps each comparison as ``DIR/run-N.json``; ``--from DIR`` measures nothing and
asks the recommendation again of the comparisons saved there (to see what a change of the rule does to
the same measurements). The exit code is 0 even when the goal fails (this is a report).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _bench_common import load_line, progress, table

import greenmeter
from greenmeter.comparison.compare import SIGNIFICANCE_TESTS, Variant
from greenmeter.comparison.recipes import build_variant
from greenmeter.comparison.recommend import recommend
from greenmeter.demo.digits import load_digits_data, make_digits_cnn, train_classifier
from greenmeter.demo.run import DEMO_RECIPES, FULL, QUICK, demo_context
from greenmeter.metering.meter import Meter
from greenmeter.records.comparison import Comparison
from greenmeter.stats import energy_test

GOAL_SHARE = 0.9


def build_models(quick: bool) -> tuple[torch.nn.Module, dict[str, Variant], Any]:
    """The demo's trained baseline and its variants (each with its measured making energy), built once."""
    settings = QUICK if quick else FULL
    data, val = load_digits_data().validation_split()  # as the demo splits it
    progress(f"training the baseline ({settings.epochs} epochs)")
    model = train_classifier(make_digits_cnn(seed=0), data, epochs=settings.epochs)
    context = demo_context(data, val, settings)
    variants: dict[str, Variant] = {}
    meter = Meter(name="decision stability: making the variants")
    with meter:
        for name, recipe in DEMO_RECIPES.items():
            progress(f"making {name}")
            torch.manual_seed(0)
            with meter.window(f"make:{name}") as window:
                built = build_variant(recipe, model, context)
            variants[name] = Variant(model=built, making=window.measurement)
    return model, variants, data


def retested(comparison: Comparison, significance: str) -> Comparison:
    """The saved comparison with each variant's energy tested again against the baseline by ``significance``
    (the recommendation reads these tests; the measurements are unchanged)."""
    base = comparison.variant(comparison.baseline)
    variants = []
    for v in comparison.variants:
        if v.vs_baseline is not None and v.energy_values_j:
            test = energy_test(significance, base.energy_values_j, v.energy_values_j, comparison.seed)
            v = dataclasses.replace(v, vs_baseline=dataclasses.replace(v.vs_baseline, energy_significance=test))
        variants.append(v)
    return dataclasses.replace(comparison, variants=tuple(variants))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="comparisons to run (default 10)")
    parser.add_argument("--quick", action="store_true", help="the demo's quick settings")
    parser.add_argument("--json", help="write each run's recommendation and figures to this file")
    parser.add_argument("--save", help="keep each comparison as DIR/run-N.json")
    parser.add_argument("--threads", type=int, default=None,
                        help="compare(threads=N) (default: torch's setting, as the demo); 1 on a busy machine")
    parser.add_argument("--from", dest="source", help="re-decide the comparisons saved in DIR; measure nothing")
    parser.add_argument("--significance", choices=SIGNIFICANCE_TESTS, default="paired",
                        help="the energy test (default paired, compare's default); with --from, the saved "
                             "measurements are tested again with it")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    settings = QUICK if args.quick else FULL
    print(f"decision stability of the demo's comparison: {args.repeats} runs, "
          f"{'QUICK settings' if args.quick else 'full demo settings'}; {load_line()}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; energy test: {args.significance}")
    saved = sorted(Path(args.source).glob("run-*.json"), key=lambda p: int(p.stem[4:])) if args.source else []
    if args.source:
        print(f"re-deciding {len(saved)} saved comparison(s) from {args.source}; nothing is measured")
        args.repeats = len(saved)
        if not saved:
            parser.error(f"no run-N.json in {args.source}")
    else:
        model, variants, data = build_models(args.quick)
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(args.repeats):
        started = time.perf_counter()
        if saved:
            comparison = retested(Comparison.from_json(saved[i].read_text(encoding="utf-8")), args.significance)
            order = [v.name for v in comparison.variants[1:]]
            took = comparison.duration_s or 0.0
        else:
            order = list(variants)
            random.Random(i).shuffle(order)
            comparison = greenmeter.compare(
                {"float": model, **{name: variants[name] for name in order}}, (data.x_test, data.y_test),
                repeats=settings.repeats, min_repeat_s=settings.min_repeat_s, seed=i, progress=False, threads=args.threads,
                significance=args.significance,
                name=f"decision stability {i + 1}",
            )
            took = time.perf_counter() - started
            if args.save:
                (Path(args.save) / f"run-{i + 1}.json").write_text(comparison.to_json(), encoding="utf-8")
        rec = recommend(comparison)
        chosen = comparison.variant(rec.name) if rec.name else None
        runs.append({
            "run": i + 1, "order": order, "recommended": rec.name, "tied": list(rec.tied), "tie_rule": rec.tie_rule,
            "front": list(comparison.pareto_front), "seconds": took,
            "energy_mj": None if chosen is None else chosen.energy_per_sample_j.mean * 1e3,  # type: ignore[union-attr]
            "notes": list(rec.notes),
        })
        progress(f"run {i + 1}/{args.repeats}: {rec.name} ({took:.0f} s); tied: {', '.join(rec.tied) or '-'}"
                 f"{'; by ' + rec.tie_rule if rec.tie_rule else ''}")
    rows = []
    for r in runs:
        rows.append([str(r["run"]), str(r["recommended"]), "-" if r["energy_mj"] is None else f"{r['energy_mj']:.3g}",
                     ", ".join(r["tied"]) or "-", r["tie_rule"] or "-", ", ".join(r["front"]), f"{r['seconds']:.0f}"])
    print(table(["run", "recommended", "mJ/sample", "tied in energy", "tie broken by", "front", "s"], rows))
    counts = collections.Counter(r["recommended"] for r in runs)
    answer, agree = counts.most_common(1)[0]
    need = math.ceil(GOAL_SHARE * len(runs))
    print(f"\nrecommendations: {dict(counts)}")
    print(f"the most common ({answer}) in {agree} of {len(runs)} runs; goal >= {need} of {len(runs)}: "
          f"{'PASS' if agree >= need else 'FAIL'}")
    print(f"one comparison took {min(r['seconds'] for r in runs):.0f}-{max(r['seconds'] for r in runs):.0f} s "
          f"({settings.repeats} repeats of {len(order) + 1} variants)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"runs": runs, "counts": dict(counts), "agree": agree, "goal": need}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
