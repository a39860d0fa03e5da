"""Measure a training loop with ``@greenmeter.track``: per-epoch and per-step energy, stored and reported.

What it shows:

* ``@greenmeter.track(name=..., meter=...)`` on a plain training function: every call is one measured
  window, and inside it ``greenmeter.current_meter()`` marks steps (``.step(batch_size)``) and epochs
  (``.epoch()``, which reads the energy counters, so per-epoch energy is exact to them).
* a :class:`greenmeter.Meter` with ``store=`` keeps the run (every window) in a SQLite run store;
* per-epoch joules and joules per sample, per-step joules (the window's energy split by step time,
  as ``step_energy_method`` says), and where every figure came from: ``measured`` (a hardware counter)
  or ``estimated`` (a model with its constants);
* the stored run rendered as a self-contained HTML report with ``greenmeter.store_report`` and
  ``greenmeter.write_report``.

The model and data are greenmeter's bundled digits task (scikit-learn's copy: no download).

Run it::

    python examples/train_with_decorator.py --quick            # 2 epochs, a few seconds
    python examples/train_with_decorator.py --epochs 10 --country FRA --out ./out

It writes ``OUT/train_runs.db`` (unless ``--store`` names another store) and ``OUT/train_report.html``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import greenmeter
from greenmeter.demo.digits import accuracy, batches, load_digits_data, make_digits_cnn
from greenmeter.store.database import Store

DEFAULT_OUT = "./greenmeter-example-out"


def log(message: str) -> None:
    """A progress line on standard error."""
    print(f"[train] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (2 epochs), as CI runs it")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--store", default=None, help="run store to keep the run in (default OUT/train_runs.db)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs to train (default 10, or 2 with --quick)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--country", default=None,
                        help="ISO 3166 country for the grid intensity (default: the world average, marked assumed)")
    return parser.parse_args(argv)


def provenance_lines(m: greenmeter.Measurement) -> list[str]:
    """One line per energy domain counted in the total: measured (which counter) or estimated (which model)."""
    return [f"{d.key}: {d.provenance.describe()}" for d in m.domains if d.in_total]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    epochs = args.epochs if args.epochs is not None else (2 if args.quick else 10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store_path = Path(args.store) if args.store else out / "train_runs.db"

    data = load_digits_data()
    model = make_digits_cnn(seed=0)
    # Set-up stays outside the measured loop: the first optimizer built in a process imports part of
    # torch (about 2 s here), which would otherwise land in the first step's latency and energy.
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    carbon = greenmeter.CarbonSettings(country=args.country) if args.country else None
    # One meter for this script: it opens a run in the store when it starts and finishes it when closed.
    meter = greenmeter.Meter(store=store_path, name="train_with_decorator", carbon=carbon)

    step_sizes: list[int] = []

    @greenmeter.track(name="train", meter=meter)
    def train(n_epochs: int) -> None:
        gm = greenmeter.current_meter()
        for epoch in range(n_epochs):
            model.train()
            for xb, yb in batches(data.x_train, data.y_train, args.batch_size, shuffle=True, seed=epoch):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                gm.step(len(xb))        # one step per batch, with its sample count
                step_sizes.append(len(xb))
            gm.epoch()                  # reads the counters: this epoch's energy
            log(f"epoch {epoch + 1}/{n_epochs}: last batch loss {loss.item():.4f}")

    started = time.perf_counter()
    try:
        log(f"training the digits CNN for {epochs} epoch(s) on {len(data.x_train)} images")
        train(epochs)
        m = train.last_measurement
        with greenmeter.measure("evaluate", samples=len(data.x_test), meter=meter) as ev:
            test_accuracy = accuracy(model, data.x_test, data.y_test)
        run_id = meter.run_id
    finally:
        meter.close()  # finishes the run in the store
    assert m is not None and ev.measurement is not None and run_id is not None

    kinds = sorted({d.provenance.kind for d in m.domains if d.in_total})
    print(f"train: {m.energy_j:.3f} J over {m.duration_s:.2f} s (mean {m.power_w:.2f} W), "
          f"{m.samples} samples, {m.steps} steps; energy is {' + '.join(kinds)}")
    for line in provenance_lines(m):
        print(f"  provenance  {line}")
    print(f"{'epoch':>5}  {'steps':>5}  {'samples':>7}  {'time s':>7}  {'energy J':>9}  {'J/sample':>10}")
    for e in m.epochs:
        per_sample = f"{e.energy_j / e.samples:.4g}" if e.samples else "-"
        print(f"{e.index + 1:>5}  {e.steps:>5}  {e.samples or 0:>7}  {e.duration_s:>7.3f}  {e.energy_j:>9.4f}  "
              f"{per_sample:>10}")
    step_j = m.step_energies_j()
    if step_j:
        per_sample = [j / n for j, n in zip(step_j, step_sizes)]
        print(f"per step ({m.step_energy_method}, {len(step_j)} steps): mean {statistics.fmean(step_j):.4g} J, "
              f"median {statistics.median(step_j):.4g} J, max {max(step_j):.4g} J; "
              f"median {statistics.median(per_sample):.4g} J/sample "
              f"(whole window {m.energy_per_sample_j:.4g} J/sample)")
    if m.latency is not None:
        print(f"step latency: p50 {m.latency.p50_s * 1e3:.2f} ms, p95 {m.latency.p95_s * 1e3:.2f} ms, "
              f"p99 {m.latency.p99_s * 1e3:.2f} ms")
    if m.carbon is not None:
        print(f"carbon: {m.carbon.describe()}")
    for flag in m.flags:
        print(f"  ! {flag}")
    print(f"evaluate: test accuracy {test_accuracy:.3f}, {ev.measurement.energy_j:.4f} J "
          f"({ev.measurement.energy_per_sample_j:.4g} J/sample)")

    with Store(store_path) as store:
        kind, html = greenmeter.store_report(store, run_id)
    report = greenmeter.write_report(html, out / "train_report.html")
    print(f"stored run {run_id[:12]} in {store_path}; wrote the {kind} report to {report}")
    log(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
