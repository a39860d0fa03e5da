"""Early exit on a CPU: MACs, accuracy and measured energy per sample against float, at batch 1 and batch 256.

The digits CNN of the demo (20 epochs on the first 80% of the training split; the last 20% is the validation
data every threshold and exit choice is made on; the 450 test images judge). Variants, all of one backbone:

- ``early-exit:0.9``: the recipe as it was: exits after about 1/3 and 2/3 of the MACs, heads trained on the
  frozen backbone, fixed threshold 0.9;
- ``early-exit:auto``: heads at every possible place (the frozen backbone), then the subset of exits and the
  threshold with the least expected time per sample at batch 1, measured on this machine, within 0.5 pp of the
  final exit on the validation data (``choose_exits``);
- ``joint``: the same choice after BranchyNet joint training (backbone trained with the heads, equal weights,
  Adam at lr 1e-3 for the demo's ``train_epochs``);
- ``self-distill``: joint training plus self-distillation from the final exit (weight 1, temperature 3).

Each is compared with the float model by ``greenmeter.compare`` (interleaved repeats, paired test of the energy
per sample, McNemar's test of the accuracy change), at batch 1, where early exit is used on devices, and at the
demo's batch of 256; one torch thread. Energy comes from greenmeter's default sources (RAPL where readable, else
the CPU-time and RAM estimates; the output says which).

Goals (issue 17): at batch 1, a variant within 0.5 pp of float (95% interval of the change) with at least 2x fewer
MACs per sample and at least 1.5x less measured energy per sample (significant); at batch 256, no more energy
than float. It also prints where one sample's time goes at batch 1 (each layer and head, ``measure_exit_costs``; the
float model whole; the first head pooled and folded) and how many test images leave at each exit.
Run: ``python benchmarks/early_exit.py [--quick] [--repeats N] [--head-epochs N]``. The exit code is 0 even when a goal
fails (this is a report). No network calls.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch
from _bench_common import Goals, load_line, progress, table, torch_threads

import greenmeter
from greenmeter.comparison.recipes import RecipeContext, build_variant
from greenmeter.compression import EarlyExitConfig, compress
from greenmeter.compression.early_exit import (
    AUTO_CANDIDATES,
    choose_exits,
    exit_positions,
    exit_report,
    measure_exit_costs,
)
from greenmeter.demo.digits import load_digits_data, make_digits_cnn, train_classifier
from greenmeter.demo.run import FULL, QUICK

MAX_DROP = 0.005


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the demo's quick training and 3 repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="compare repeats (default 7, 3 with --quick)")
    parser.add_argument("--head-epochs", type=int, default=None,
                        help="epochs the recipes train their heads (default: the demo's train_epochs, 10; 2 with --quick)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    goals = Goals()
    run(args.quick, args.repeats, goals, args.head_epochs)
    print()
    print(goals.report())
    print(f"\ntook {time.perf_counter() - started:.0f} s")
    return 0


def print_costs(multi: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> None:
    """Where the time of one sample goes (batch 1, this machine): each backbone layer and exit head as
    ``measure_exit_costs`` times them, the float model whole, and a pooled head against its folded form."""
    costs = measure_exit_costs(multi, x, batch_size=1)
    layers = ", ".join(f"{type(layer).__name__} {s * 1e6:.1f}" for layer, s in zip(model, costs.layer_s))
    print(f"batch 1, µs per call ({costs.source}): {layers}; heads "
          + ", ".join(f"after layer {cut} {s * 1e6:.1f}" for cut, s in costs.head_s.items()))
    cut = multi.exits_after[0]
    head = multi.heads[0]
    names = {"m": model, "h": head, "x": x}
    with torch.no_grad():  # no gradients: the head runs folded
        names["f"] = model[:cut + 1](x)
        whole, folded = torch_timer("m(x)", names), torch_timer("h(f)", names)
    pooled = torch_timer("h(f)", names)  # gradients on: the head runs its pool, then its Linear layer
    exit_s = costs.exit_s([cut])[0]
    print(f"the float model whole: {whole * 1e6:.1f} µs; a sample leaving at the first exit: {exit_s * 1e6:.1f} µs "
          f"({exit_s / whole:.2f}x); its head pooled then Linear {pooled * 1e6:.1f} µs, folded {folded * 1e6:.1f} µs")


def torch_timer(stmt: str, names: dict[str, object]) -> float:
    """Seconds per call of ``stmt`` by ``torch.utils.benchmark`` (its adaptive autorange, median)."""
    from torch.utils import benchmark

    return benchmark.Timer(stmt, globals=names).blocked_autorange(min_run_time=0.2).median


def run(quick: bool, repeats: int | None, goals: Goals, head_epochs: int | None = None) -> None:
    """Build the variants, compare them at batch 1 and 256, print the tables and add the two goals to ``goals``
    (``benchmarks/compression.py`` calls this too). Runs on one torch thread and restores the count after."""
    with torch_threads(1):
        _run(quick, repeats, goals, head_epochs)


def _run(quick: bool, repeats: int | None, goals: Goals, head_epochs: int | None) -> None:
    settings = QUICK if quick else FULL
    repeats = repeats or (3 if quick else 7)
    print(f"early exit on the digits CNN: {load_line()}; torch {torch.__version__}, 1 thread, {repeats} repeats")
    data = load_digits_data()
    train_part, val = data.validation_split()
    val_data = (val.x_test, val.y_test)
    progress(f"training the baseline ({settings.epochs} epochs on {len(train_part.x_train)} images)")
    model = train_classifier(make_digits_cnn(seed=0), train_part, epochs=settings.epochs, seed=0)

    def train_fn(m: torch.nn.Module, loss_fn=None, epochs=None) -> None:  # noqa: ANN001
        # the demo's trainer (Adam, lr 3e-3): the recipes train their heads for train_epochs
        train_classifier(m, train_part, epochs=epochs or settings.fine_tune_epochs, loss_fn=loss_fn)

    def fine_tune(m: torch.nn.Module, loss_fn) -> None:  # noqa: ANN001
        # joint training moves the trained backbone too: a smaller step, as when fine-tuning
        train_classifier(m, train_part, epochs=settings.train_epochs, lr=1e-3, loss_fn=loss_fn)

    ctx = RecipeContext(example_input=data.x_test[:64], train_fn=train_fn, val_data=val_data, seed=0,
                        fine_tune_epochs=settings.fine_tune_epochs, train_epochs=head_epochs or settings.train_epochs)
    variants: dict[str, torch.nn.Module] = {}
    for spec in ("early-exit:0.9", "early-exit:auto"):
        progress(f"building {spec}")
        variants[spec] = build_variant(spec, model, ctx)
    candidates = exit_positions(model, data.x_test[:1], candidates=AUTO_CANDIDATES)
    for name, extra in (("joint", {}), ("self-distill", {"self_distill": 1.0})):
        progress(f"building {name} (backbone trained with heads at {candidates})")
        multi = compress(model, EarlyExitConfig(exits_after=candidates, example_input=data.x_test[:1],
                                                train_fn=fine_tune, freeze_backbone=False,
                                                seed=0, **extra)).eval()
        variants[name], _ = choose_exits(multi, *val_data, measure_exit_costs(multi, data.x_test[:1]), MAX_DROP)
    describe = []
    for name, v in variants.items():
        where = exit_report(v, data.x_test, data.y_test)["exit_histogram"]
        describe.append([name, str(list(v.exits_after)), f"{v.threshold:.4f}",
                         f"{where} ({100 * sum(where[:-1]) / sum(where):.0f}% leave early)"])
    print(f"heads trained {ctx.train_epochs} epochs (recipes); joint variants {settings.train_epochs} epochs")
    print(table(["variant", "exits after layers", "threshold", "test images per exit"], describe))
    print_costs(variants["early-exit:auto"], model, data.x_test[:1])

    results = {}
    for batch in (1, 256):
        progress(f"comparing at batch {batch}")
        c = greenmeter.compare({"float": model, **variants}, (data.x_test, data.y_test), batch_size=batch,
                               repeats=repeats, threads=1, name=f"early exit, batch {batch}", progress=False)
        results[batch] = c
        print(f"\nbatch {batch}: energy from {'; '.join(c.variant('float').provenance)}")
        rows = []
        for v in c.variants[1:]:
            d = v.vs_baseline
            test, sig = d.metric_test, d.energy_significance
            rows.append([v.name, f"{d.metric_change * 100:+.2f} pp ({test.diff_low * 100:+.2f} to {test.diff_high * 100:+.2f})",
                         f"{c.variant('float').macs_per_sample / v.macs_per_sample:.2f}x",
                         f"{d.energy_ratio:.3f} (1/{1 / d.energy_ratio:.2f})", f"{sig.p_value:.2g}",
                         f"{v.energy_per_sample_j.mean * 1e3:.4f}"])
        print(table(["variant", "accuracy change (95% interval)", "fewer MACs", "energy ratio", "p", "mJ/sample"],
                    rows))

    def within(v: object) -> bool:
        return v.vs_baseline.metric_test.diff_low >= -MAX_DROP - 1e-12  # type: ignore[attr-defined]

    one, big = results[1], results[256]
    float_macs = one.variant("float").macs_per_sample
    passing = [v for v in one.variants[1:] if within(v) and float_macs / v.macs_per_sample >= 2
               and v.vs_baseline.measurable_saving and v.vs_baseline.energy_ratio <= 1 / 1.5]
    best = min(one.variants[1:], key=lambda v: v.vs_baseline.energy_ratio)
    goals.add("early exit, batch 1: >= 2x fewer MACs and >= 1.5x less energy per sample, significant, within 0.5 pp "
              "of float",
              f"{', '.join(v.name for v in passing) or 'none'} meet it; least energy: {best.name} at "
              f"x{best.vs_baseline.energy_ratio:.3f} ({float_macs / best.macs_per_sample:.2f}x fewer MACs, "
              f"{best.vs_baseline.metric_change * 100:+.2f} pp)", bool(passing))
    for name in ("early-exit:auto",):
        v = big.variant(name)
        d = v.vs_baseline
        higher = d.energy_significance.significant and d.energy_ratio > 1
        goals.add(f"early exit, batch 256: {name} uses no more energy than float",
                  f"x{d.energy_ratio:.3f} of float's energy per sample (p = {d.energy_significance.p_value:.2g})",
                  not higher and d.energy_ratio <= 1.0)


if __name__ == "__main__":
    sys.exit(main())
