"""Attention benchmark: softmax against linear attention across sequence lengths, side by side.

For every length N (powers of 2, 32 to 8192 by default) it times the forward pass of
``nn.MultiheadAttention`` (softmax; torch's fused CPU kernel, eval mode, ``need_weights=False``) and of
``greenmeter.nn.LinearAttention`` (elu+1 kernel, the same projection weights), batch 1,
``--embed`` features, ``--heads`` heads, self-attention, under ``torch.inference_mode``. Each
measurement is one greenmeter ``Meter`` window over as many calls as make it last ``min_sample_s``:
latency = window time / calls, energy per token = window energy / (calls x N). The two attentions run
back to back at each length, in a random order, lengths in a random order, over several rounds; the
figures are medians over rounds (ratios: medians of the per-round paired ratios).

Printed: a table per form (global, then causal), the growth exponent of each attention (least-squares
slope of log cost per forward against log N over the top four lengths, 1024 to 8192 by default; 2 means
quadratic, 1 linear), the crossover length (the smallest N at which linear attention is cheaper,
interpolated in log space between the two lengths that bracket it), and goals with PASS or FAIL, for
each form:

- softmax attention's latency and energy grow with exponent in [1.6, 2.4]; linear attention's in [0.7, 1.3];
- the latency and energy crossovers are measured inside the lengths run (bracketed by two of them).

The causal form runs ``nn.MultiheadAttention`` with the causal mask and the ``is_causal`` hint (its fused
kernel then skips the blocks above the diagonal) and ``LinearAttention`` with ``is_causal=True`` alone
(its chunked prefix-sum form).

Run: ``python benchmarks/attention.py [--quick] [--threads N] [--no-causal] [--device cuda]``. Exit code 0 even when a goal
fails (this is a report). On a CPU without RAPL the energy is greenmeter's CPU-time estimate, which is
proportional to CPU time: its exponents and crossover are CPU time's, and the header says so.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
from _bench_common import (
    Goals,
    cpu_flags,
    cpu_name,
    load_line,
    progress,
    table,
)
from torch import nn

import greenmeter
from greenmeter.metering.cpu_load import LoadWatch
from greenmeter.nn import LinearAttention

SOFTMAX, LINEAR = "softmax", "linear"
EXPONENT_RANGES = {SOFTMAX: (1.6, 2.4), LINEAR: (0.7, 1.3)}


@dataclass
class Series:
    """Per length: per-round latency per forward (s) and energy per token (J) of one attention."""

    latency_s: dict[int, list[float]] = field(default_factory=dict)
    energy_per_token_j: dict[int, list[float]] = field(default_factory=dict)

    def add(self, n: int, latency_s: float, energy_per_token_j: float) -> None:
        self.latency_s.setdefault(n, []).append(latency_s)
        self.energy_per_token_j.setdefault(n, []).append(energy_per_token_j)


@dataclass
class Result:
    """The two attentions of one form (global or causal) over all lengths."""

    lengths: list[int]
    series: dict[str, Series]
    calls: dict[tuple[str, int], int]
    other_load: list[float]

    def median(self, kind: str, metric: str, n: int) -> float:
        return statistics.median(getattr(self.series[kind], metric)[n])

    def ratio(self, metric: str, n: int) -> float:
        """Median over rounds of linear / softmax (the pair ran back to back in each round)."""
        values = getattr(self.series[LINEAR], metric)[n], getattr(self.series[SOFTMAX], metric)[n]
        return statistics.median(a / b for a, b in zip(*values))

    def per_forward(self, kind: str, metric: str, n: int) -> float:
        """Latency per forward (s), or energy per forward (J) = energy per token x N."""
        value = self.median(kind, metric, n)
        return value * n if metric == "energy_per_token_j" else value


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    return statistics.linear_regression([math.log(x) for x in xs], [math.log(y) for y in ys]).slope


def crossover(lengths: list[int], ratios: list[float]) -> tuple[float | None, str]:
    """The smallest N where linear/softmax falls below 1, interpolated in log-log space, and a description.

    Returns ``(None, why)`` when the ratio is below 1 already at the shortest length or never below 1.
    """
    if ratios[0] < 1:
        return None, f"below {lengths[0]} (linear already cheaper at the shortest length run)"
    for i in range(1, len(lengths)):
        if ratios[i] < 1:
            r0, r1 = math.log(ratios[i - 1]), math.log(ratios[i])
            l0, l1 = math.log(lengths[i - 1]), math.log(lengths[i])
            n = math.exp(l0 + (0 - r0) / (r1 - r0) * (l1 - l0))
            back = [lengths[j] for j in range(i + 1, len(lengths)) if ratios[j] >= 1]
            note = f" (but linear is not cheaper again at N = {back})" if back else ""
            return n, f"N = {n:.0f}, between {lengths[i - 1]} and {lengths[i]}{note}"
    return None, f"above {lengths[-1]} (softmax cheaper at every length run)"


def run(lengths: list[int], embed: int, heads: int, causal: bool, rounds: int, min_sample_s: float,
        meter: greenmeter.Meter, seed: int, device: torch.device) -> Result:
    """Measure both attentions at every length, interleaved; see the module docstring."""
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(embed, heads, batch_first=True, device=device).eval()
    modules = {SOFTMAX: mha, LINEAR: LinearAttention.from_multihead(mha).eval()}
    inputs = {n: torch.randn(1, n, embed, device=device) for n in lengths}
    masks = {n: nn.Transformer.generate_square_subsequent_mask(n, device=device) for n in lengths} if causal else {}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # the meter syncs its own windows

    def call(kind: str, n: int) -> None:
        x = inputs[n]
        if causal and kind == SOFTMAX:  # nn.MultiheadAttention needs the mask along with the is_causal hint
            modules[kind](x, x, x, need_weights=False, attn_mask=masks[n], is_causal=True)
        elif causal:  # LinearAttention needs no mask
            modules[kind](x, x, x, need_weights=False, is_causal=True)
        else:
            modules[kind](x, x, x, need_weights=False)

    calls: dict[tuple[str, int], int] = {}
    result = Result(lengths, {SOFTMAX: Series(), LINEAR: Series()}, calls, [])
    rng = random.Random(seed)
    with torch.inference_mode():
        for n in lengths:  # warm up, then time calls for min_sample_s / 4 to choose the calls per measurement
            for kind in modules:
                call(kind, n)
                sync()
                done, t0 = 0, time.perf_counter()
                while done == 0 or time.perf_counter() - t0 < min_sample_s / 4:
                    call(kind, n)
                    sync()
                    done += 1
                calls[kind, n] = max(1, math.ceil(min_sample_s * done / (time.perf_counter() - t0)))
        progress(f"{'causal' if causal else 'global'}: warmed up; {rounds} rounds")
        for r in range(rounds):
            watch = LoadWatch()
            for n in rng.sample(lengths, len(lengths)):
                for kind in rng.sample(list(modules), 2):
                    k = calls[kind, n]
                    with meter.window(f"{kind}:{n}", samples=k * n) as w:
                        for _ in range(k):
                            call(kind, n)
                    m = w.measurement
                    result.series[kind].add(n, m.duration_s / k, m.energy_j / (k * n))
            other = watch.other_cores()
            if other is not None:
                result.other_load.append(other)
            progress(f"{'causal' if causal else 'global'}: round {r + 1}/{rounds} done")
    return result


def report(result: Result, fit: list[int], title: str) -> dict[str, object]:
    """Print the table, exponents and crossovers of one form; return the figures for the goals."""
    rows = []
    for n in result.lengths:
        row = [str(n)]
        for metric, scale in (("latency_s", 1e3), ("energy_per_token_j", 1e6)):
            row += [f"{result.median(SOFTMAX, metric, n) * scale:.4g}", f"{result.median(LINEAR, metric, n) * scale:.4g}",
                    f"{result.ratio(metric, n):.3f}"]
        row.append(f"{result.calls[SOFTMAX, n]}/{result.calls[LINEAR, n]}")
        rows.append(row)
    print(f"\n== {title} ==")
    print(table(["N", "softmax ms", "linear ms", "lin/soft", "softmax uJ/tok", "linear uJ/tok", "lin/soft",
                 "calls s/l"], rows))
    out: dict[str, object] = {}
    for metric, label in (("latency_s", "latency per forward"), ("energy_per_token_j", "energy per forward")):
        exps = {kind: slope([float(n) for n in fit], [result.per_forward(kind, metric, n) for n in fit])
                for kind in (SOFTMAX, LINEAR)}
        point, text = crossover(result.lengths, [result.ratio(metric, n) for n in result.lengths])
        print(f"{label}: growth exponent softmax {exps[SOFTMAX]:.2f}, linear {exps[LINEAR]:.2f} "
              f"(log-log slope over N = {fit[0]}..{fit[-1]}); crossover (linear cheaper from) {text}")
        out[metric] = (exps, point, text)
    if result.other_load:
        print(f"other processes' CPU use during the rounds: median {statistics.median(result.other_load):.2f} "
              f"core(s) (max {max(result.other_load):.2f})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of shorter measurements")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 2 with --quick)")
    parser.add_argument("--min-len", type=int, default=32, help="shortest length, a power of 2 (default 32)")
    parser.add_argument("--max-len", type=int, default=8192, help="longest length, a power of 2 (default 8192)")
    parser.add_argument("--embed", type=int, default=64, help="embedding width (default 64)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared machine a second thread stalls "
                             "whenever another process holds a core)")
    parser.add_argument("--no-causal", action="store_true", help="skip the causal form")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu; cuda: energy from NVML)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    lengths = [2 ** i for i in range(int(math.log2(args.min_len)), int(math.log2(args.max_len)) + 1)]
    if len(lengths) < 5 or any(n & (n - 1) for n in (args.min_len, args.max_len)):
        parser.error("--min-len and --max-len must be powers of 2 at least 16x apart")
    rounds = args.rounds or (2 if args.quick else 5)
    min_sample_s = 0.1 if args.quick else 0.2
    fit = lengths[-4:]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meter = greenmeter.Meter(name="attention-benchmark")
    meter.start()
    print("\n".join([
        f"command: {' '.join(['python', *sys.argv])}",
        (f"python {platform.python_version()}, torch {torch.__version__}, os.cpu_count() {os.cpu_count()}, "
         f"niceness {os.nice(0)}, torch threads {torch.get_num_threads()}"),
        f"cpu: {cpu_name()} ({cpu_flags()})",
        (f"mode: {'QUICK (smoke run: fewer, shorter samples)' if args.quick else 'full'}; {rounds} rounds; "
         f"samples of >= {min_sample_s} s; batch 1, embed {args.embed}, {args.heads} heads, float32, "
         f"self-attention, device {device}"
         + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")),
        "energy sources: " + "; ".join(f"{d.key}: {d.provenance.describe()}" for d in meter.domains),
        f"at start: {load_line()}",
        "every figure below was measured in this run",
    ]), flush=True)
    goals = Goals()
    forms = [("global", False)] + ([] if args.no_causal else [("causal", True)])
    for name, causal in forms:
        result = run(lengths, args.embed, args.heads, causal, rounds, min_sample_s, meter, args.seed, device)
        title = (f"{name} attention ({'is_causal=True' if causal else 'every query sees every key'}): median "
                 "over rounds; lin/soft = median of paired per-round ratios; energy per token in microjoules")
        figures = report(result, fit, title)
        for metric, label in (("latency_s", "latency"), ("energy_per_token_j", "energy")):
            exps, point, text = figures[metric]  # type: ignore[misc]
            for kind in (SOFTMAX, LINEAR):
                low, high = EXPONENT_RANGES[kind]
                goals.add(f"{name}: {kind} attention {label} per forward grows with exponent in [{low}, {high}]",
                          f"{exps[kind]:.2f} over N = {fit[0]}..{fit[-1]}", low <= exps[kind] <= high)
            goals.add(f"{name}: {label} crossover measured inside {lengths[0]}..{lengths[-1]}", f"crossover {text}",
                      point is not None)
    meter.close()
    print(f"\n== Goals ({args.threads} torch thread(s)) ==\n" + goals.report(), flush=True)
    print(f"at end: {load_line()}")
    progress("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
