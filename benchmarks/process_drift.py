"""How much a fixed comparison's figures move between processes: the same comparison in fresh processes, side by side.

Each process trains the demo's digits CNN (3 epochs, seed 0) and compares it with ``int8-static`` and
``channels:0.5+int8-static`` (5 repeats of at least 0.5 s, the 450 test images), then prints each variant's energy
per sample, p50 batch latency and ratio to the float model. A comparison's confidence interval covers the variation
between its own repeats; what moves from one process (or minute) to the next is outside it, and this shows how
much. On the 2-vCPU development VM the float model's figure moved far more than the int8 variants' (quoted in
docs/optimize.md).

Run: ``python benchmarks/process_drift.py [--processes N]`` (4 by default, one after the other; about 40 s each).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child() -> None:
    """One process: the comparison, printed as one JSON line."""
    sys.path.insert(0, str(ROOT))
    warnings.filterwarnings("ignore")
    import torch

    import greenmeter
    from greenmeter.demo.digits import batches, load_digits_data, make_digits_cnn, train_classifier

    torch.manual_seed(0)
    data = load_digits_data()
    model = train_classifier(make_digits_cnn(seed=0), data, epochs=3, seed=0)
    result = greenmeter.compare(
        {"float": model, "int8-static": "int8-static", "stack": "channels:0.5+int8-static"},
        (data.x_test, data.y_test), repeats=5, min_repeat_s=0.5, progress=False,
        train_data=list(batches(data.x_train, data.y_train, 64, shuffle=False)))
    print(json.dumps({v.name: {"uJ": v.energy_per_sample_j.mean * 1e6, "p50_ms": v.latency_batch.p50_s * 1e3,
                               "ratio": v.vs_baseline.energy_ratio if v.vs_baseline else 1.0}
                      for v in result.variants}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4, help="fresh processes, one after the other (default 4)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child()
        return 0
    rows = []
    for i in range(args.processes):
        run = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in reversed(run.stdout.splitlines()) if x.startswith("{")), None)
        if line is None:
            print(f"process {i + 1} failed: {run.stderr.strip()[-500:]}")
            continue
        rows.append(json.loads(line))
        cells = "  ".join(f"{name} {v['uJ']:6.1f} uJ {v['p50_ms']:5.2f} ms x{v['ratio']:.3f}" for name, v in rows[-1].items())
        print(f"process {i + 1}: {cells}", flush=True)
    for name in (rows[0] if rows else {}):
        values = [r[name]["uJ"] for r in rows]
        print(f"{name}: {min(values):.1f} to {max(values):.1f} uJ per sample over {len(values)} processes "
              f"(max/min {max(values) / min(values):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
