"""Measure inference with ``greenmeter.measure``: joules per sample and latency percentiles.

What it shows:

* ``with greenmeter.measure("inference", samples=n) as m:`` around batched inference; inside the block
  ``greenmeter.current_meter().step(len(batch))`` marks one step per batch, so the measurement holds
  per-batch latency statistics (p50/p95/p99, nearest rank) next to the energy;
* ``m.measurement``: energy in J, joules per sample, throughput, CO2e, and the provenance of every
  figure: ``measured`` (a hardware counter: RAPL, NVML) or ``estimated`` (a model with its constants);
* the figures written as a small JSON file, for a dashboard or a CI check.

The model is greenmeter's digits CNN, trained for a few epochs first (outside the measured block), and
the inputs are the bundled digits test split (scikit-learn's copy: no download). A few untimed
warm-up batches run before the block, so one-time set-up is not counted as inference.

Run it::

    python examples/inference_with_context_manager.py --quick     # a few seconds
    python examples/inference_with_context_manager.py --passes 200 --batch-size 1 --out ./out

It writes ``OUT/inference_figures.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import greenmeter
from greenmeter.demo.digits import accuracy, load_digits_data, make_digits_cnn, train_classifier

DEFAULT_OUT = "./greenmeter-example-out"


def log(message: str) -> None:
    """A progress line on standard error."""
    print(f"[inference] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (fewer passes), as CI runs it")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--passes", type=int, default=None,
                        help="passes over the 450 test images (default 60, or 10 with --quick)")
    parser.add_argument("--batch-size", type=int, default=32, help="inference batch size (default 32)")
    parser.add_argument("--train-epochs", type=int, default=None,
                        help="epochs to train the model first (default 10, or 3 with --quick)")
    parser.add_argument("--country", default=None,
                        help="ISO 3166 country for the grid intensity (default: the world average, marked assumed)")
    return parser.parse_args(argv)


def run_inference(model: torch.nn.Module, x: torch.Tensor, batch_size: int, passes: int) -> None:
    """``passes`` passes over ``x`` in batches, marking a step per batch on the current meter."""
    meter = greenmeter.current_meter()
    with torch.inference_mode():
        for _ in range(passes):
            for start in range(0, len(x), batch_size):
                batch = x[start:start + batch_size]
                model(batch)
                meter.step(len(batch))


def figures(m: greenmeter.Measurement, batch_size: int) -> dict[str, Any]:
    """The headline figures of an inference measurement, in SI units (J, s, W, g)."""
    assert m.latency is not None and m.samples
    domains = [d for d in m.domains if d.in_total]
    return {
        "name": m.name,
        "samples": m.samples,
        "batches": m.steps,
        "batch_size": batch_size,
        "duration_s": m.duration_s,
        "energy_j": m.energy_j,
        "power_w": m.power_w,
        "energy_per_sample_j": m.energy_per_sample_j,
        "throughput_samples_per_s": m.throughput_samples_per_s,
        "latency_batch_s": {"p50": m.latency.p50_s, "p95": m.latency.p95_s, "p99": m.latency.p99_s,
                            "mean": m.latency.mean_s, "max": m.latency.max_s},
        "co2e_g": None if m.carbon is None else m.carbon.co2e_g,
        "measured": m.measured,
        "provenance": [{"domain": d.key, "kind": d.provenance.kind, "source": d.provenance.source,
                        "method": d.provenance.method} for d in domains],
        "flags": list(m.flags),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    passes = args.passes if args.passes is not None else (10 if args.quick else 60)
    train_epochs = args.train_epochs if args.train_epochs is not None else (3 if args.quick else 10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_digits_data()
    log(f"training the digits CNN for {train_epochs} epoch(s) (not measured)")
    model = train_classifier(make_digits_cnn(seed=0), data, epochs=train_epochs).eval()
    log(f"test accuracy {accuracy(model, data.x_test, data.y_test):.3f}")
    x = data.x_test
    with torch.inference_mode():  # warm-up, untimed: first calls allocate and pick kernels
        for start in range(0, min(len(x), 5 * args.batch_size), args.batch_size):
            model(x[start:start + args.batch_size])

    n = passes * len(x)
    log(f"measuring {passes} pass(es) over {len(x)} images in batches of {args.batch_size} ({n} samples)")
    started = time.perf_counter()
    carbon = {"country": args.country} if args.country else {}
    with greenmeter.measure("inference", samples=n, **carbon) as m:
        run_inference(model, x, args.batch_size, passes)
    r = m.measurement
    assert r is not None and r.latency is not None
    log(f"measured in {time.perf_counter() - started:.2f} s")

    kinds = " + ".join(sorted({d.provenance.kind for d in r.domains if d.in_total}))
    print(f"inference: {r.samples} samples in {r.steps} batches of {args.batch_size}, {r.duration_s:.3f} s")
    print(f"  energy      {r.energy_j:.4f} J ({kinds}), mean power {r.power_w:.2f} W")
    print(f"  per sample  {r.energy_per_sample_j * 1e3:.4g} mJ/sample, {r.throughput_samples_per_s:.0f} samples/s")
    print(f"  latency     per batch p50 {r.latency.p50_s * 1e3:.3f} ms, p95 {r.latency.p95_s * 1e3:.3f} ms, "
          f"p99 {r.latency.p99_s * 1e3:.3f} ms (nearest rank over {r.latency.count} batches)")
    if r.carbon is not None:
        print(f"  carbon      {r.carbon.describe()}")
    for d in r.domains:
        if d.in_total:
            print(f"  provenance  {d.key}: {d.provenance.describe()}")
    for flag in r.flags:
        print(f"  ! {flag}")

    path = out / "inference_figures.json"
    path.write_text(json.dumps(figures(r, args.batch_size), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
