"""Sparse execution on a CPU: at which sparsity does a pruned Linear layer run faster on PyTorch's sparse kernels?

1. Sweep: a Linear layer of width 4096 (and 1024) with unstructured zeros (each weight zeroed with probability
   ``s``, as magnitude pruning leaves them) at s = 0.5 ... 0.99, timed dense (``F.linear`` on the dense weight)
   and as greenmeter's ``SparseLinear`` (CSR, int32 indices, ``torch.addmm`` on MKL's sparse BLAS) at batch 1
   and 32, with one torch thread and with torch's default count: the median of interleaved rounds (each round
   runs both in a fresh random order; a round during which other processes used the CPU is dropped and run
   again, see ``_bench_common.measure_latency``), the speed-up (median of the per-round ratios dense / sparse)
   and the break-even: the lowest sparsity from which the sparse layer was at least 1.1x faster at every
   sparsity measured above it.
2. Block-sparse weights (full run only): 16 x 16 blocks zeroed, width 4096, dense vs CSR vs BSR 16 x 16.
3. The automatic choice (``use_sparse_kernels``, as ``PruneConfig(sparse_execution="auto")`` runs it) on every
   layer of the sweep at the default thread count, each checked at once by a second interleaved timing of the
   layer dense and CSR (busy rounds dropped; a layer with no quiet round is not judged). Goals: sparse
   execution is used only where the check measured it faster (speed-up > 1), and never left out where the
   check measured it clearly faster (>= 1.25x).

Run: ``python benchmarks/sparsity.py [--quick]`` (about 1 minute on a quiet 2-vCPU VM, up to 3 where busy rounds
are run again; ``--quick`` about 20 s, figures not representative). The exit code is 0 even when a goal fails (this is a report). No network calls.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch
from _bench_common import Goals, cpu_flags, cpu_name, load_line, measure_latency, progress, table, torch_threads
from torch import nn

from greenmeter.compression.sparse import SparseLinear, use_sparse_kernels

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
QUICK_SPARSITIES = (0.7, 0.9, 0.99)
BATCHES = (1, 32)
PAYS = 1.1  # "pays": at least this much faster (the margin use_sparse_kernels asks for by default)
CLEAR = 1.25  # a speed-up the automatic choice must not miss


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 4096 only, three sparsities, fewer rounds")
    return parser.parse_args(argv)


def pruned_linear(width: int, sparsity: float, seed: int, block: int = 1) -> nn.Linear:
    """A ``width x width`` Linear layer whose weights (or ``block x block`` blocks) are zero with probability
    ``sparsity``."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(width, width).eval()
    keep = torch.rand(width // block, width // block, generator=gen) >= sparsity
    if block > 1:
        keep = keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    with torch.no_grad():
        layer.weight.mul_(keep)
    return layer


def break_even(speedups: dict[float, float]) -> str:
    """The lowest sparsity from which every measured sparsity ran at least ``PAYS`` times faster sparse."""
    found = None
    for s in sorted(speedups, reverse=True):
        if speedups[s] < PAYS:
            break
        found = s
    return f"{found:g}" if found is not None else f"none up to {max(speedups):g}"


def sweep(widths: Sequence[int], sparsities: Sequence[float], threads: Sequence[int], rounds: int,
          min_sample_s: float) -> dict[tuple[int, float, int, int], float]:
    """Speed-ups ``(width, sparsity, batch, threads) -> dense / CSR``; prints one table per width."""
    speed: dict[tuple[int, float, int, int], float] = {}
    for width in widths:
        rows = []
        for s in sparsities:
            dense = pruned_linear(width, s, seed=int(s * 1000) + width)
            sparse = SparseLinear.from_linear(dense)
            real = 1 - sparse.nnz / dense.weight.numel()
            row = [f"{s:g}", f"{real:.3f}"]
            for n in threads:
                for batch in BATCHES:
                    x = torch.randn(batch, width)
                    with torch_threads(n):
                        lat, kept = measure_latency({"dense": lambda: dense(x), "csr": lambda: sparse(x)}, rounds,
                                                    min_sample_s=min_sample_s, warmup=2)
                    speed[width, s, batch, n] = lat["csr"].speedup_over(lat["dense"])
                    busy = "" if kept.kept else "*"
                    row += [f"{lat['dense'].median_s * 1e3:.3f}", f"{lat['csr'].median_s * 1e3:.3f}",
                            f"{speed[width, s, batch, n]:.2f}x{busy}"]
            progress(f"width {width}, sparsity {s:g}: done")
            rows.append(row)
        heads = ["sparsity", "measured"]
        for n in threads:
            for batch in BATCHES:
                heads += [f"t{n} b{batch} dense ms", f"t{n} b{batch} csr ms", f"t{n} b{batch} speed-up"]
        print(f"\n## Linear({width}, {width}), unstructured zeros: dense vs CSR (t: torch threads, b: batch)")
        print(table(heads, rows))
        print("ms: median seconds per forward pass x 1000; speed-up: median of per-round ratios dense / CSR "
              "(> 1: sparse is faster); *: no quiet round (other processes used the CPU throughout).")
        if max(threads) > 1:
            print("With more than one thread, MKL's sparse call was seen to stall at about 8 ms a call after dense "
                  "matmuls on a 2-vCPU VM (not with one thread, nor with OMP_WAIT_POLICY=PASSIVE): a CSR time near "
                  "8 ms in a multi-thread column is that, not the kernel's speed.")
        for n in threads:
            for batch in BATCHES:
                per = {s: speed[width, s, batch, n] for s in sparsities}
                print(f"break-even (CSR >= {PAYS}x faster from this sparsity up): width {width}, batch {batch}, "
                      f"{n} thread{'s' if n > 1 else ''}: {break_even(per)}")
    return speed


def blocks(rounds: int, min_sample_s: float, threads: int) -> None:
    rows = []
    for s in (0.9, 0.99):
        dense = pruned_linear(4096, s, seed=7, block=16)
        csr, bsr = SparseLinear.from_linear(dense), SparseLinear.from_linear(dense, "bsr", (16, 16))
        for batch in BATCHES:
            x = torch.randn(batch, 4096)
            with torch_threads(threads):
                lat, _ = measure_latency({"dense": lambda: dense(x), "csr": lambda: csr(x), "bsr": lambda: bsr(x)},
                                         rounds, min_sample_s=min_sample_s, warmup=2)
            rows.append([f"{s:g}", str(batch)] + [f"{lat[k].median_s * 1e3:.3f}" for k in ("dense", "csr", "bsr")]
                        + [f"{lat[k].speedup_over(lat['dense']):.2f}x" for k in ("csr", "bsr")])
        progress(f"block-sparse, sparsity {s:g}: done")
    print(f"\n## Linear(4096, 4096), zeros in 16 x 16 blocks, {threads} threads: dense vs CSR vs BSR 16x16")
    print(table(["sparsity", "batch", "dense ms", "csr ms", "bsr ms", "csr speed-up", "bsr speed-up"], rows))


def check_choice(widths: Sequence[int], sparsities: Sequence[float], threads: int, rounds: int,
                 min_sample_s: float, goals: Goals) -> None:
    """Run the automatic choice on each sweep layer, then time that layer dense and CSR again at once (interleaved,
    busy rounds dropped) and hold the decision against that timing; a layer with no quiet round is not judged."""
    rows, wrong_pick, missed, unjudged = [], [], [], []
    with torch_threads(threads):
        for width in widths:
            for s in sparsities:
                dense = pruned_linear(width, s, seed=int(s * 1000) + width)
                csr = SparseLinear.from_linear(dense)
                for batch in BATCHES:
                    model, details = use_sparse_kernels(nn.Sequential(dense), batch)
                    decision = details["sparse_decisions"]["0"]
                    x = torch.randn(batch, width)
                    lat, kept = measure_latency({"dense": lambda: dense(x), "csr": lambda: csr(x)}, rounds,
                                                min_sample_s=min_sample_s, warmup=2)
                    check = lat["csr"].speedup_over(lat["dense"])
                    chose = decision["path"] != "dense"
                    auto = decision.get("speedup")
                    where = f"{width}/{s:g}/b{batch}"
                    other = details["sparse_timing_other_cores"]
                    rows.append([str(width), f"{s:g}", str(batch), "not timed" if auto is None else f"{auto:.2f}x",
                                 decision["path"], "-" if other is None else f"{other:.2f}", f"{check:.2f}x",
                                 f"{kept.kept}/{kept.run}"])
                    if kept.kept == 0:
                        unjudged.append(where)
                    elif chose and check <= 1.0:
                        wrong_pick.append(f"{where} (check {check:.2f}x, auto {auto}x)")
                    elif not chose and check >= CLEAR:
                        missed.append(f"{where} (check {check:.2f}x, auto {auto}x)")
            progress(f"automatic choice, width {width}: done")
    print(f"\n## The automatic choice (use_sparse_kernels' defaults: 7 interleaved rounds of samples of ~5 ms, "
          f"sparse if the median paired speed-up is >= 1.11x), "
          f"{threads} thread{'s' if threads > 1 else ''}, then checked by a second interleaved timing right after")
    print(table(["width", "sparsity", "batch", "auto speed-up", "chosen", "others' cores", "check speed-up",
                 "check quiet rounds"], rows))
    print("others' cores: the cores other processes kept busy while the choice timed the layer ('-': under 0.5 s "
          "of timing, not judged); check: a second interleaved timing, rounds with other load dropped.")
    chosen = sum(r[4] != "dense" for r in rows)
    busy = (f"; {len(unjudged)} of {len(rows)} not judged (no quiet round: other processes used the CPU)"
            if unjudged else "")
    judged = len(rows) > len(unjudged)
    goals.add("sparse execution is used only where it measured faster (check speed-up > 1x)",
              f"{chosen} of {len(rows)} layers chosen sparse; chosen where the check measured it slower: "
              f"{', '.join(wrong_pick) or 'none'}{busy}", not wrong_pick if judged else None)
    goals.add(f"sparse execution is not left out where it clearly pays (check speed-up >= {CLEAR}x)",
              f"missed: {', '.join(missed) or 'none'}{busy}", not missed if judged else None)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    default_threads = torch.get_num_threads()
    widths = (4096,) if args.quick else (4096, 1024)
    sparsities = QUICK_SPARSITIES if args.quick else SPARSITIES
    threads = (default_threads,) if args.quick or default_threads == 1 else (1, default_threads)
    rounds, min_sample_s = (3, 0.02) if args.quick else (5, 0.02)
    print(f"command: {' '.join(['python', *sys.argv])}")
    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, MKL "
          f"{'yes' if torch.backends.mkl.is_available() else 'no'}, os.cpu_count() {os.cpu_count()}, torch default "
          f"threads {default_threads}; cpu: {cpu_name()} ({cpu_flags()})")
    print(f"at start: {load_line()}" + ("; QUICK run: figures not representative" if args.quick else ""))
    goals = Goals()
    sweep(widths, sparsities, threads, rounds, min_sample_s)
    if not args.quick:
        blocks(rounds, min_sample_s, default_threads)
    check_choice(widths, sparsities, default_threads, rounds, min_sample_s, goals)
    print(f"\nat end: {load_line()}")
    print(goals.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
