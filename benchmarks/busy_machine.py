"""What a busy machine does to greenmeter's figures, and what ``compare``'s busy-machine watch sees.

The digits CNN runs ``--batches`` batches of 64 under ``greenmeter.measure`` four ways, side by side in one
run and repeated in ``--rounds`` rounds: torch with 2 threads and with 1, on a quiet machine and while a
second process burns one core. Each line prints the medians of energy per sample, the window's duration
and the other processes' load that
``greenmeter.metering.cpu_load.LoadWatch`` (the watch ``compare`` uses) measured over the window. On a machine without
RAPL the energy is the CPU-time estimate, so it rises with the CPU time that threads spend waiting (spinning)
for a core.

Run: ``python benchmarks/busy_machine.py [--batches N]`` (a report: exit code 0 whatever it finds).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time

import torch

import greenmeter
from greenmeter.metering.cpu_load import BUSY_LIMIT_CORES, LoadWatch
from greenmeter.demo.digits import load_digits_data, make_digits_cnn


def run(model: torch.nn.Module, x: torch.Tensor, threads: int, batches: int) -> tuple[float, float, float | None]:
    """One measurement: (joules per sample, seconds, other processes' load in cores or None)."""
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for _ in range(5):  # warm-up
            model(x)
        watch = LoadWatch()
        with greenmeter.measure("busy-machine", samples=len(x) * batches) as m:
            for _ in range(batches):
                model(x)
    me = m.measurement
    assert me is not None and me.energy_per_sample_j is not None
    return me.energy_per_sample_j, me.duration_s, watch.other_cores()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100, help="batches of 64 per measurement (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the four conditions (default 5)")
    args = parser.parse_args()
    logging.getLogger("greenmeter").setLevel(logging.ERROR)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, os.cpu_count() {os.cpu_count()}; "
          f"{args.rounds} rounds, each: quiet with 2 and 1 threads, then busy with 2 and 1; medians below")
    x = load_digits_data().x_test[:64]
    model = make_digits_cnn(seed=0).eval()
    results: dict[tuple[str, int], list[tuple[float, float, float | None]]] = {}
    for _ in range(args.rounds):
        for t in (2, 1):
            results.setdefault(("quiet", t), []).append(run(model, x, t, args.batches))
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            for t in (2, 1):
                results.setdefault(("one core busy elsewhere", t), []).append(run(model, x, t, args.batches))
        finally:
            hog.kill()
            hog.wait()
    energy = {}
    for (label, t), runs in results.items():
        energy[label, t] = statistics.median(r[0] for r in runs)
        loads = [r[2] for r in runs if r[2] is not None]
        other = statistics.median(loads) if loads else None
        seen = "unknown" if other is None else f"{other:.2f} core"
        flagged = other is not None and other > BUSY_LIMIT_CORES
        print(f"{label:24s} threads {t}: {energy[label, t] * 1e3:.3f} mJ/sample, "
              f"{statistics.median(r[1] for r in runs):.2f} s, other processes' load seen: {seen}"
              f"{' (compare would flag it)' if flagged else ''}")
    for t in (2, 1):
        print(f"threads {t}: busy / quiet energy per sample = "
              f"{energy['one core busy elsewhere', t] / energy['quiet', t]:.2f}x")


if __name__ == "__main__":
    main()
