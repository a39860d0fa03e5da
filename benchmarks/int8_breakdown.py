"""Where the time of the digits CNN goes, float against its int8 variants: CPU time per sample and the int8 stack's ops.

Trains the demo's CNN (20 epochs), builds ``int8-static`` and ``channels:0.5+int8-static`` with the demo's
recipes, and on the 450 test images at batch 256, one torch thread, prints each model's CPU time per sample
(``time.process_time`` over repeated passes, several rounds: the least and the most) and, for the stack, the
share of its time in each operator and input shape (``torch.profiler``). The figures in docs/optimize.md ("Measured")
come from this script. Run: ``python benchmarks/int8_breakdown.py [--rounds N]``. No network calls.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _bench_common import load_line, progress, torch_threads
from torch.profiler import ProfilerActivity, profile

from greenmeter.comparison.recipes import RecipeContext, build_variant
from greenmeter.demo.digits import load_digits_data, make_digits_cnn, train_classifier
from greenmeter.demo.run import FULL, demo_context


def cpu_us_per_sample(model: torch.nn.Module, x: torch.Tensor, passes: int) -> float:
    """CPU microseconds per sample over ``passes`` passes of ``model`` on ``x`` (after a warm-up pass)."""
    with torch.inference_mode():
        model(x)
        start = time.process_time()
        for _ in range(passes):
            model(x)
        return (time.process_time() - start) / passes / len(x) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every model (default 5)")
    args = parser.parse_args(argv)
    print(f"int8 breakdown on the digits CNN: {load_line()}; torch {torch.__version__}, 1 thread, batch 256")
    data, val = load_digits_data().validation_split()
    with torch_threads(1):
        progress(f"training the baseline ({FULL.epochs} epochs)")
        model = train_classifier(make_digits_cnn(seed=0), data, epochs=FULL.epochs, seed=0)
        ctx: RecipeContext = demo_context(data, val, FULL)
        models = {"float": model}
        for spec in ("int8-static", "channels:0.5+int8-static"):
            progress(f"building {spec}")
            models[spec] = build_variant(spec, model, ctx)
        x = data.x_test[:256].contiguous()
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):  # interleaved: every model in each round
            for name, m in models.items():
                times[name].append(cpu_us_per_sample(m, x, 20 if name == "float" else 100))
        print("\nCPU µs per sample (least and most of the rounds):")
        for name, values in times.items():
            print(f"  {name:<26} {min(values):6.2f} to {max(values):6.2f}")
        print(f"  float / stack: {min(times['float']) / max(times['channels:0.5+int8-static']):.1f}x to "
              f"{max(times['float']) / min(times['channels:0.5+int8-static']):.1f}x")
        stack = models["channels:0.5+int8-static"]
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(50):
                stack(x)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("\nchannels:0.5+int8-static, share of its CPU time by operator and input shape (the largest):")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]:
        print(f"  {100 * e.self_cpu_time_total / total:5.1f}%  {e.key:<28} {str(e.input_shapes)[:60]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
