"""Train a small transformer with softmax attention and with linear attention, then compare them.

What it shows:

* ``greenmeter.nn.LinearAttention`` dropped into ``nn.TransformerEncoderLayer`` in place of its
  ``nn.MultiheadAttention`` (``LinearAttention.from_multihead`` copies the weights, so both models start
  from the same parameters and differ only in the attention function);
* a task made in code, so nothing is downloaded: **sorting**. Each input is a sequence of ``--seq-len``
  tokens drawn uniformly from ``--vocab`` symbols; the target at position ``i`` is the ``i``-th smallest
  token. A model must count the tokens of the whole sequence to get it right, so attention matters;
* the training of each model measured in a meter window, handed to ``greenmeter.compare`` as the
  variant's making cost (``greenmeter.Variant(model=..., making=...)``);
* ``greenmeter.compare`` with a user metric (per-token accuracy over ``[N, L, vocab]`` logits), accuracy
  and energy per sequence side by side, and the self-contained HTML report.

Which attention costs less depends on the length: below the crossover that ``benchmarks/attention.py``
measures (about 120 tokens for this non-causal attention on the 2-vCPU development VM, see
``docs/architectures.md``) softmax attention's fused kernel wins; beyond it linear attention does.
``--quick`` runs short sequences (32 tokens), the default run 256.

The figure to beat is the **position-only baseline**: the accuracy of always predicting, at each
position, the token most often found there in the training targets. It uses no information about the
sequence at hand (on sorted uniform tokens it is far above 1/vocab); a model that beats it by a wide
margin has learned to read the input.

Run it::

    python examples/attention_compare.py --quick        # length 32, 150 steps each: under a minute
    python examples/attention_compare.py --seq-len 512 --vocab 64 --steps 400 --out ./out

It writes ``OUT/attention_report.html``, ``OUT/attention_comparison.json`` and ``OUT/attention_figures.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

import greenmeter
from greenmeter.nn import LinearAttention

DEFAULT_OUT = "./greenmeter-example-out"


def log(message: str) -> None:
    """A progress line on standard error."""
    print(f"[attention] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short sequences, few steps and repeats, as CI runs it")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 256; 32 with --quick)")
    parser.add_argument("--vocab", type=int, default=None, help="distinct tokens (default 32; 8 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default 300; 150 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default 32; 64 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="measured repeats (default 5; 3 with --quick)")
    parser.add_argument("--test-size", type=int, default=512, help="test sequences (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def sorting_task(n: int, seq_len: int, vocab: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences of uniform random tokens ``[n, seq_len]`` (int64) and their sorted versions (the targets)."""
    x = torch.randint(0, vocab, (n, seq_len), generator=generator)
    return x, x.sort(dim=1).values


class SortingTransformer(nn.Module):
    """Token and learned position embeddings, a pre-norm transformer encoder, a per-position classifier.

    Maps ``[N, L]`` token ids to ``[N, L, vocab]`` logits. ``attention`` is ``"softmax"`` (torch's
    ``nn.MultiheadAttention``) or ``"linear"`` (:class:`LinearAttention`, the same initial weights).
    """

    def __init__(self, attention: str, vocab: int, seq_len: int, embed: int = 64, heads: int = 4,
                 layers: int = 2) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, embed)
        self.positions = nn.Parameter(torch.randn(seq_len, embed) * 0.02)
        layer = nn.TransformerEncoderLayer(embed, heads, dim_feedforward=2 * embed, dropout=0.0, batch_first=True,
                                           norm_first=True)
        if attention == "linear":
            layer.self_attn = LinearAttention.from_multihead(layer.self_attn)
        # nested tensors are a softmax-only fast path; the layer is copied num_layers times
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed)
        self.head = nn.Linear(embed, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.tokens(tokens) + self.positions)))


def per_token_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of positions whose arg-max logit is the target token; outputs ``[N, L, vocab]``, targets ``[N, L]``."""
    return float((outputs.argmax(dim=-1) == targets).float().mean())


def position_baseline(train_targets: torch.Tensor, test_targets: torch.Tensor, vocab: int) -> float:
    """Accuracy on the test targets of predicting each position's most frequent training target."""
    mode = torch.stack([torch.bincount(col, minlength=vocab).argmax() for col in train_targets.T])
    return float((test_targets == mode).float().mean())


def train(model: nn.Module, args: argparse.Namespace, meter: greenmeter.Meter, name: str) -> greenmeter.Measurement:
    """Train ``model`` in place with AdamW on fresh batches of the task; the measured window is returned."""
    data = torch.Generator().manual_seed(args.seed + 1)  # the same batches for both models
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    with meter.window(f"train:{name}", samples=args.steps * args.batch_size) as w:
        for step in range(args.steps):
            x, y = sorting_task(args.batch_size, args.seq_len, args.vocab, data)
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            meter.step(args.batch_size)
            if (step + 1) % max(1, args.steps // 5) == 0:
                log(f"{name}: step {step + 1}/{args.steps}, loss {loss.item():.3f}")
    model.eval()
    return w.measurement


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.seq_len = args.seq_len or (32 if args.quick else 256)
    args.vocab = args.vocab or (8 if args.quick else 32)
    args.steps = args.steps or (150 if args.quick else 300)
    args.batch_size = args.batch_size or (64 if args.quick else 32)
    repeats = args.repeats or (3 if args.quick else 5)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    data = torch.Generator().manual_seed(args.seed)
    x_test, y_test = sorting_task(args.test_size, args.seq_len, args.vocab, data)
    _, y_ref = sorting_task(4096, args.seq_len, args.vocab, data)
    baseline = position_baseline(y_ref, y_test, args.vocab)
    log(f"sorting {args.seq_len} tokens of {args.vocab} symbols; position-only baseline {baseline:.3f}, "
        f"uniform chance {1 / args.vocab:.3f}; torch threads {torch.get_num_threads()}")

    variants = {}
    meter = greenmeter.Meter(name="attention-example")
    try:
        for name in ("softmax", "linear"):
            torch.manual_seed(args.seed)  # the same initial weights for both
            model = SortingTransformer(name, args.vocab, args.seq_len)
            making = train(model, args, meter, name)
            log(f"{name}: trained in {making.duration_s:.1f} s, {making.energy_j:.1f} J")
            variants[name] = greenmeter.Variant(model=model, making=making)
    finally:
        meter.close()

    result = greenmeter.compare(
        variants, (x_test, y_test), metric=per_token_accuracy, metric_name="per-token accuracy",
        repeats=repeats, batch_size=64, seed=args.seed, name=f"attention-sorting-{args.seq_len}",
        progress=lambda line: log(line),
    )
    print(result.table())
    figures: dict[str, object] = {"seq_len": args.seq_len, "vocab": args.vocab, "steps": args.steps,
                                  "position_baseline": baseline, "chance": 1 / args.vocab, "variants": {}}
    for v in result.variants:
        if not v.ok:
            print(f"{v.name}: FAILED: {v.error}")
            continue
        assert v.energy_per_sample_j is not None and v.latency_sample is not None and v.making is not None
        per_seq = v.energy_per_sample_j.mean
        print(f"{v.name}: per-token accuracy {v.metric:.4f} (position-only baseline {baseline:.4f}), "
              f"{per_seq * 1e3:.4g} mJ/sequence, {per_seq / args.seq_len * 1e6:.4g} uJ/token, "
              f"p50 {v.latency_sample.p50_s * 1e3:.3g} ms/sequence, training {v.making.energy_j:.4g} J")
        figures["variants"][v.name] = {  # type: ignore[index]
            "accuracy": v.metric, "energy_per_sequence_j": per_seq, "energy_per_token_j": per_seq / args.seq_len,
            "latency_p50_s": v.latency_sample.p50_s, "training_energy_j": v.making.energy_j}
    if all(v.ok for v in result.variants):
        soft, lin = (result.variant(n).energy_per_sample_j.mean for n in ("softmax", "linear"))  # type: ignore[union-attr]
        side = "less" if lin < soft else "more"
        print(f"at {args.seq_len} tokens linear attention takes {lin / soft:.2f}x the energy per sequence of softmax "
              f"attention ({side}); see benchmarks/attention.py for the crossover length on this machine")
    for line in dict.fromkeys(line for v in result.variants for line in v.provenance):
        print(f"provenance: {line}")
    for flag in result.flags:
        print(f"note: {flag}")

    report = greenmeter.write_report(greenmeter.comparison_report(result), out / "attention_report.html")
    (out / "attention_comparison.json").write_text(result.to_json() + "\n", encoding="utf-8")
    (out / "attention_figures.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {report}, {out / 'attention_comparison.json'} and {out / 'attention_figures.json'}")
    log(f"done in {time.perf_counter() - started:.1f} s")
    return 1 if any(not v.ok for v in result.variants) else 0


if __name__ == "__main__":
    sys.exit(main())
