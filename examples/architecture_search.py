"""Hardware-aware architecture search on the digits task, compared against the hand-designed CNN.

Searches greenmeter's bundled digits CNN space (depth, width, kernel, hidden units, stride or pool) with
regularized evolution (or successive halving): every candidate is trained briefly, scored on a held-out
part of the training split, and its inference energy per sample is measured with the meter on this
machine. Prints the accuracy-energy Pareto front and how well MACs predicted the measured energy; then
trains the front's architectures and the hand-designed ``make_digits_cnn`` the same way, compares them on
the test split with ``greenmeter.compare`` and writes the HTML report::

    python examples/architecture_search.py --quick --out out/
    python examples/architecture_search.py --candidates 40 --epochs 3 --final-epochs 10 --out out/
    python examples/architecture_search.py --strategy halving --candidates 27 --out out/

Measurements are cached in ``OUT/search_cache.json`` (per configuration and machine): run it again, or
after an interruption, and nothing already measured is measured again.

Writes ``OUT/search_result.json``, ``OUT/search_comparison.json`` and ``OUT/search_report.html``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import greenmeter
from greenmeter.search import (
    Evolution,
    SearchBudget,
    SuccessiveHalving,
    compare_found,
    digits_cnn_space,
    digits_task,
    search_architectures,
)
from greenmeter.demo.digits import load_digits_data, make_digits_cnn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a narrower space and a small budget (under a minute)")
    parser.add_argument("--out", default="./greenmeter-example-out", help="output folder")
    parser.add_argument("--strategy", choices=("evolution", "halving"), default="evolution")
    parser.add_argument("--candidates", type=int, default=None, help="distinct architectures to evaluate")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per candidate (halving: x1, x3)")
    parser.add_argument("--final-epochs", type=int, default=None, help="training epochs for the final comparison")
    parser.add_argument("--top", type=int, default=3, help="front members to compare against the baseline")
    parser.add_argument("--repeats", type=int, default=None, help="repeats of the final comparison")
    parser.add_argument("--max-time-s", type=float, default=None, help="stop starting new evaluations after this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="cache file (default OUT/search_cache.json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.quick:  # widths to 32 and depth to 2: the slowest candidates are the ones left out
        space = digits_cnn_space(depth=(1, 2), width=(8, 16, 32))
        candidates, epochs, final_epochs, repeats = args.candidates or 8, args.epochs or 1, args.final_epochs or 2, 3
        population = 4
    else:
        space = digits_cnn_space()
        candidates, epochs, final_epochs, repeats = args.candidates or 30, args.epochs or 3, args.final_epochs or 10, 5
        population = 10
    repeats = args.repeats or repeats
    if args.strategy == "evolution":
        strategy: Evolution | SuccessiveHalving = Evolution(population=min(population, candidates), sample=3)
        budget = SearchBudget(candidates, epochs, args.max_time_s)
    else:
        strategy = SuccessiveHalving(eta=3)
        budget = SearchBudget(candidates, (epochs, 3 * epochs), args.max_time_s)

    data = load_digits_data()
    task = digits_task(data)
    started = time.perf_counter()
    print(f"searching {space.name} ({space.size} configurations) with {strategy.to_dict()}, budget "
          f"{budget.to_dict()}", flush=True)
    result = search_architectures(space, task, strategy=strategy, budget=budget, seed=args.seed,
                                  cache=args.cache or out / "search_cache.json")
    (out / "search_result.json").write_text(result.to_json(), encoding="utf-8")
    print(f"\n{len(result.candidates)} candidates ({result.fresh_evaluations} evaluated now, "
          f"{result.cached_evaluations} from the cache), stopped by {result.stopped_by}, "
          f"{time.perf_counter() - started:.1f} s")
    print("energy source:", "; ".join(result.sources))
    print(f"\nPareto front (accuracy on the held-out {result.task['val_samples']} images after the search's "
          "training; energy per sample measured on this machine):")
    print(result.table(front_only=True))
    print("\n" + result.correlation.describe())
    print(f"search cost: {result.search_energy_j:.4g} J (every training and measurement window, counted once)")

    print(f"\ncomparing the front against make_digits_cnn, all trained {final_epochs} epochs, on the test split",
          flush=True)
    comparison = compare_found(result, space, task, make_digits_cnn(), (data.x_test, data.y_test), top=args.top,
                               epochs=final_epochs, repeats=repeats, name="architecture search (digits)")
    print(comparison.table())
    for flag in comparison.flags:
        print("note:", flag)
    (out / "search_comparison.json").write_text(comparison.to_json(), encoding="utf-8")
    report = greenmeter.write_report(greenmeter.comparison_report(comparison), out / "search_report.html")
    print(f"\nwrote {out / 'search_result.json'}, {out / 'search_comparison.json'} and {report} "
          f"({time.perf_counter() - started:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
