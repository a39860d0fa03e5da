"""What PyTorch's int8 CPU kernels cost at the digits CNN's shapes, and what seeding costs a measured pass.

The figures docs/optimize.md ("Measured") quotes about the pruned int8 stack's kernels come from this script:

- an int8 convolution (3x3, padding 1, ReLU fused) on a batch of 256 8x8 images with 16 output channels, for 1, 2
  and 4 input channels, in ns per output element; and from 16 input channels to 32 and to 16 output channels;
- the int8 2x2 max-pool on channels-last activations of 32 and of 16 channels;
- ``torch.manual_seed`` per call, and one pass of ``channels:0.5+int8-static``'s convolutions and pool over 450
  samples with and without a seed before it (why ``compare`` seeds once per repeat, outside the measured window).

Random weights (the kernels' cost does not depend on their values); torch's default threads; CPU time
(``time.process_time``), the least of several interleaved rounds. Run: ``python benchmarks/int8_kernels.py
[--rounds N]``. About 20 s. No network calls.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
from _bench_common import load_line
from torch.ao.nn.intrinsic import quantized as nniq


def conv(c_in: int, c_out: int) -> nniq.ConvReLU2d:
    """An int8 conv + ReLU with random per-channel weights (the x86 engine, as static int8 builds it here)."""
    w = torch.quantize_per_channel(torch.randn(c_out, c_in, 3, 3) * 0.3, torch.full((c_out,), 0.01),
                                   torch.zeros(c_out, dtype=torch.long), 0, torch.qint8)
    layer = nniq.ConvReLU2d(c_in, c_out, 3, padding=1)
    layer.set_weight_bias(w, torch.zeros(c_out))
    layer.scale, layer.zero_point = 0.05, 0
    return layer


def cpu_us(fn: Callable[[], object], calls: int) -> float:
    """CPU microseconds per call of ``fn`` (after a warm-up)."""
    for _ in range(10):
        fn()
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the least is kept (default 5)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.backends.quantized.engine = "x86"
    print(f"int8 kernels at the digits CNN's shapes: {load_line()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch 256, 8x8")

    def images(channels: int) -> torch.Tensor:
        return torch.quantize_per_tensor(torch.rand(256, channels, 8, 8), 0.02, 0, torch.quint8).contiguous(
            memory_format=torch.channels_last)

    cases: dict[str, tuple[Callable[[], object], int]] = {}
    for c_in in (1, 2, 4):
        layer, x = conv(c_in, 16), images(c_in)
        cases[f"conv {c_in:>2} -> 16 channels"] = (lambda layer=layer, x=x: layer(x), 256 * 16 * 64)
    for c_out in (32, 16):
        layer, x = conv(16, c_out), images(16)
        cases[f"conv 16 -> {c_out} channels"] = (lambda layer=layer, x=x: layer(x), 256 * c_out * 64)
    for channels in (32, 16):
        pool, x = torch.nn.MaxPool2d(2), images(channels)
        cases[f"max-pool 2x2, {channels} channels"] = (lambda pool=pool, x=x: pool(x), 256 * channels * 16)
    cases["torch.manual_seed"] = (lambda: torch.manual_seed(0), 0)
    conv1, conv2, pool = conv(1, 16), conv(16, 32), torch.nn.MaxPool2d(2)
    batches = [torch.rand(256, 1, 8, 8), torch.rand(194, 1, 8, 8)]

    def one_pass() -> None:  # the stack's convolutions and pool over the 450 test images, as compare's batches
        for x in batches:
            pool(conv2(conv1(torch.quantize_per_tensor(x, 0.02, 0, torch.quint8))))

    def seeded_pass() -> None:  # what compare did before: seed, then the pass
        torch.manual_seed(0)
        one_pass()

    cases["a pass over 450 samples"] = (one_pass, 0)
    cases["seed, then that pass"] = (seeded_pass, 0)
    best = {name: float("inf") for name in cases}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, (fn, _outputs) in cases.items():
                best[name] = min(best[name], cpu_us(fn, 2000 if name == "torch.manual_seed" else 100))
    print("\nCPU time per call (least of the rounds):")
    for name, (_fn, outputs) in cases.items():
        per = f"  ({best[name] * 1e3 / outputs:.2f} ns per output element)" if outputs else ""
        print(f"  {name:<28} {best[name]:9.1f} µs{per}")
    one, seeded = best["a pass over 450 samples"], best["seed, then that pass"]
    print(f"\nseeding before every pass: {seeded:.0f} µs a pass instead of {one:.0f} µs (+{100 * (seeded / one - 1):.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
