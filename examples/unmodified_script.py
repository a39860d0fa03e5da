"""A plain PyTorch training script that knows nothing about greenmeter: measure it from outside.

What it shows: ``greenmeter run`` measures any command, and every process it starts, without a change
to its code. This script trains a small MLP on scikit-learn's bundled digits (no download) and imports
nothing from greenmeter. Measure it, keep the run in a store, and render the stored run::

    greenmeter run --store runs.db -- python examples/unmodified_script.py --quick
    greenmeter report --last-run --store runs.db -o run.html

It also runs on its own (``python examples/unmodified_script.py --quick``). It writes
``OUT/mlp_result.json`` (test accuracy, epochs, seconds) so a caller can check what it did.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

DEFAULT_OUT = "./greenmeter-example-out"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (5 epochs), as CI runs it")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 40, or 5 with --quick)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (5 if args.quick else 40)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_tr))
        total = 0.0
        for start in range(0, len(order), 32):
            idx = order[start:start + 32]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x_tr):.4f}", flush=True)

    model.eval()
    with torch.no_grad():
        test_accuracy = float((model(x_te).argmax(1) == y_te).float().mean())
    seconds = time.perf_counter() - started
    print(f"test accuracy {test_accuracy:.3f} after {epochs} epochs ({seconds:.1f} s)")
    result = {"test_accuracy": test_accuracy, "epochs": epochs, "seconds": seconds}
    (out / "mlp_result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
