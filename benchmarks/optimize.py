"""``greenmeter.optimize`` on the demo's digits CNN: the cheapest variant within half a point of accuracy.

Trains the demo's digits CNN (``greenmeter.demo.run.FULL`` settings: 20 epochs), holds out the last 20% of
the training split as validation data (the search chooses on it; the final comparison judges on the 450 test
images), and runs ``greenmeter.optimize`` with its default candidates (sensitivity-chosen quantizers,
shrinkers and their stacks with int8) and ``max_drop=0.005``. Prints the search's table, the final
comparison and the goals of issue 16:

* the chosen variant uses at least 10x less measured energy per sample than the float baseline;
* its energy is significantly lower than the best one-step recipe's (the paired test on the final
  comparison's rounds), when the chosen variant is a stack.

With ``--minilm`` it runs instead on the pretrained MiniLM-L6 sentence encoder (``examples/minilm_compare.py``'s
loader and sentences, loaded offline, in a mean-pooling wrapper): the metric is the mean cosine similarity of each sentence's embedding to
the float model's, the budget 0.97 (``max_drop`` 0.03), no training data (so the quantizers only), the int8
sensitivity probe; it reports the best variant within the budget and its measured energy ratio, whatever it is.

Run: ``python benchmarks/optimize.py [--max-drop D] [--time-budget S] [--threads N] [--json PATH] [--quick]
[--minilm]``.
The exit code is 0 even when a goal fails (this is a report). Estimate backends on a VM: the energy is
CPU time times a power model, so ratios between variants are the figures to read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _bench_common import load_line, progress

from greenmeter.comparison.optimize import optimize
from greenmeter.demo.digits import batches, load_digits_data, make_digits_cnn, train_classifier
from greenmeter.demo.run import FULL, QUICK
from greenmeter.records.comparison import measurable_saving
from greenmeter.records.optimization import OptimizeResult

GOAL_RATIO = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-drop", type=float, default=0.005, help="accuracy budget (default 0.005 = 0.5 pp)")
    parser.add_argument("--time-budget", type=float, default=900.0, help="seconds for the search (default 900)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the measurements")
    parser.add_argument("--quick", action="store_true", help="the demo's quick training settings")
    parser.add_argument("--json", help="write the OptimizeResult as JSON to this file")
    parser.add_argument("--minilm", action="store_true", help="the MiniLM-L6 encoder instead of the digits CNN")
    args = parser.parse_args(argv)
    if args.minilm:
        return minilm(args)
    settings = QUICK if args.quick else FULL
    print(f"optimize on the digits CNN: max_drop {args.max_drop:g}, time budget {args.time_budget:.0f} s; "
          f"{load_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    data = load_digits_data()
    train_part, val = data.validation_split(0.2)
    progress(f"training the baseline ({settings.epochs} epochs on {len(train_part.x_train)} images)")
    model = train_classifier(make_digits_cnn(seed=0), train_part, epochs=settings.epochs, seed=0)

    def train_fn(m: torch.nn.Module, loss_fn=None, epochs=None) -> None:  # noqa: ANN001
        train_classifier(m, train_part, epochs=epochs or settings.fine_tune_epochs, loss_fn=loss_fn)

    started = time.perf_counter()
    result = optimize(
        model, (data.x_test, data.y_test), max_drop=args.max_drop, train_fn=train_fn,
        train_data=lambda: batches(train_part.x_train, train_part.y_train, 64, shuffle=True),
        val_data=(val.x_test, val.y_test), time_budget_s=args.time_budget, threads=args.threads,
        final_repeats=settings.repeats, min_repeat_s=settings.min_repeat_s, name="digits optimize",
        progress=progress,
    )
    took = time.perf_counter() - started
    show(result)
    print()
    if result.improved:
        chosen = result.comparison.variant(result.chosen)
        ratio = 1 / chosen.vs_baseline.energy_ratio
        print(f"goal: >= {GOAL_RATIO:g}x less energy per sample than float: {ratio:.1f}x "
              f"({'PASS' if ratio >= GOAL_RATIO else 'FAIL'})")
    else:
        print(f"goal: >= {GOAL_RATIO:g}x less energy per sample than float: nothing chosen (FAIL)")
    if result.versus_best_single is not None:
        single, test = result.versus_best_single
        lower = measurable_saving(test)
        print(f"goal: lower energy than the best one-step recipe ({single}) with significance: "
              f"p = {test.p_value:.2g}, {'lower' if test.diff_mean < 0 else 'higher'} ({'PASS' if lower else 'FAIL'})")
    else:
        print("goal: lower energy than the best one-step recipe with significance: not tested (the choice is not "
              "a stack, or no one-step recipe reached the final) (FAIL)")
    print(f"search and final comparison took {took:.0f} s")
    if args.json:
        Path(args.json).write_text(result.to_json(), encoding="utf-8")
    return 0


def show(result: OptimizeResult) -> None:
    """Every candidate, the final comparison, the decision and the search's flags."""
    print(result.table())
    print()
    print(result.comparison.table())
    print()
    print(result.summary())
    for flag in result.flags:
        print(f"note: {flag}")


class SentenceEncoder(torch.nn.Module):
    """The encoder as one tensor in, one tensor out: ``[N, 2, L]`` packed ``input_ids`` and ``attention_mask``
    in, the attention-masked mean of the last hidden states, L2-normalised, out (``[N, hidden]``), as
    sentence-transformers pools. One input tensor, so that ``save_to`` and every recipe can take it."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        ids, mask = packed[:, 0], packed[:, 1]
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)


def cosine_to_float(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cosine similarity of each sentence's embedding to the float model's (1.0 = identical)."""
    return float(torch.nn.functional.cosine_similarity(outputs.float(), targets.float(), dim=1).mean())


def minilm(args: argparse.Namespace) -> int:
    """optimize on MiniLM-L6, cosine to the float embeddings as the metric, budget 0.97."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from minilm_compare import SENTENCES, load_minilm

    print(f"optimize on MiniLM-L6: cosine to float >= 0.97, time budget {args.time_budget:.0f} s; {load_line()}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    tok, encoder = load_minilm()
    model = SentenceEncoder(encoder).eval()
    sentences = list(SENTENCES)
    enc = tok(sentences, padding=True, truncation=True, return_tensors="pt")
    packed = torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).long()
    with torch.inference_mode():
        targets = model(packed)
    progress(f"{len(sentences)} sentences, padded to {packed.shape[-1]} tokens")
    result = optimize(
        model, (packed, targets), max_drop=0.03, metric=cosine_to_float, metric_name="cosine to float",
        probes=("int8",), time_budget_s=args.time_budget, threads=args.threads, batch_size=32,
        final_repeats=3 if args.quick else 5, name="MiniLM optimize", progress=progress,
    )
    show(result)
    if result.improved:
        v = result.comparison.variant(result.chosen)
        print(f"best within cosine >= 0.97: {result.chosen}, cosine {v.metric:.4f}, energy per sentence "
              f"{v.energy_per_sample_j.mean * 1e3:.3g} mJ against {result.comparison.variant('baseline').energy_per_sample_j.mean * 1e3:.3g} "
              f"mJ for float ({1 / v.vs_baseline.energy_ratio:.2f}x less), batch 32")
    else:
        print("best within cosine >= 0.97: none with a measurable saving; the float model stays")
    if args.json:
        Path(args.json).write_text(result.to_json(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
