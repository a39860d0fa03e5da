"""``greenmeter.optimize`` on a small transformer classifier: every default candidate built and measured.

The model is the 4-layer ``nn.TransformerEncoder`` classifier of ``tests/comparison/test_recipes_batches.py``
(an embedding, the encoder, a masked mean, a Linear layer; ``forward(input_ids, attention_mask)``) on its toy
task: 48 sentences in dict batches padded to their own lengths, three classes. The teacher is trained first (10
epochs of Adam, as in the test), then ``greenmeter.optimize`` runs with its default candidates, the built-in
trainer on the same batches, a 5 pp budget and a 60 s time budget. It prints the accuracy of ``distill:0.25``'s
student as copied from the teacher and after distillation, the search's table and the summary:
which candidates were built, which failed and why, the choice and its measured energy ratio. docs/optimize.md
quotes a run.

Run: ``python benchmarks/optimize_transformer.py [--time-budget S]``. Estimate backends on a VM: the energy is
CPU time times a power model, so ratios between variants are the figures to read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from greenmeter.comparison.optimize import optimize  # noqa: E402
from greenmeter.compression import make_shallow_student  # noqa: E402
from tests.comparison.test_recipes_batches import accuracy, text_batches, trained_tiny_transformer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-budget", type=float, default=60.0, help="optimize's time_budget_s (default 60)")
    args = parser.parse_args(argv)
    batches = text_batches()
    model = trained_tiny_transformer(batches)
    print(f"teacher accuracy on the {sum(len(b['labels']) for b in batches)} sentences: {accuracy(model, batches):.3f}")
    copied, _ = make_shallow_student(model, 0.25)
    print(f"distill:0.25's student as copied from the teacher (block 3 of 0-3): accuracy {accuracy(copied.eval(), batches):.3f}")
    result = optimize(model, batches, train_data=batches, max_drop=0.05, time_budget_s=args.time_budget,
                      progress=False, final_repeats=3)
    print(result.table())
    print()
    print(result.summary())
    for flag in result.flags:
        print(f"note: {flag}")
    distilled = result.candidate("distill:0.25")
    if distilled.metric is not None:
        print(f"distill:0.25 after distillation: accuracy {distilled.metric:.3f}")
    failed = [f"{c.spec} ({c.reason})" for c in result.candidates if c.status == "failed"]
    print(f"failed candidates: {'; '.join(failed) if failed else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
