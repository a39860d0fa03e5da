"""Sparse execution of pruned Linear layers: :class:`SparseLinear` and the measured choice of where it pays.

Unstructured pruning (``PruneConfig``, ``LotteryTicketConfig``) leaves zeros in dense weight tensors, which dense
kernels multiply all the same: the MACs, latency and energy are the dense model's. :class:`SparseLinear` keeps a
Linear layer's weight in a compressed sparse layout and runs PyTorch's sparse matmul (``torch.addmm`` with a
sparse first operand: Intel MKL's sparse BLAS on an x86 CPU build):

* **CSR** (compressed sparse rows: one value and one column index per non-zero weight) for unstructured zeros;
* **BSR** (blocks of ``r x c`` weights, each stored whole) where the zeros come in blocks: it is considered only
  when at least half of every stored block is non-zero (:func:`sparse_candidates`), which unstructured magnitude
  pruning almost never gives.

Whether a sparse kernel is faster depends on the sparsity, the layer's shape, the batch and the CPU, so it is
never assumed: :func:`use_sparse_kernels` times each pruned Linear layer dense and in each sparse candidate
layout side by side (interleaved repeats at the given batch and the current thread count; the speed-up is the
median of the per-round ratios) and swaps in a :class:`SparseLinear` only where it measured at least ``margin``
faster. Every decision, with its
times, goes into the details. On the 2-vCPU AMD EPYC VM this was written on (``python benchmarks/sparsity.py``,
one thread), CSR paid on a 4096 x 4096 layer from 70-80% sparsity at batch 32 and 90% at batch 1, on a
1024 x 1024 one from 80% at batch 32 and 95% at batch 1; it never paid at 50%.

MACs: ``torch.utils.flop_counter`` counts a sparse matmul from its shapes, so ``compare`` reports the dense
model's MACs for a sparse variant (a flag says so); the energy and latency it measures are the sparse kernels'.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from greenmeter._checks import number, whole_number
from greenmeter.compression.registry import WeightCount
from greenmeter.metering.cpu_load import LoadWatch, busy_flag

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["DENSE_KERNELS_FLAG", "SparseLinear", "sparse_candidates", "time_forward", "use_sparse_kernels"]

#: The flag of a pruned model that runs no layer on sparse kernels (the words ``compare`` shows).
DENSE_KERNELS_FLAG = "pruned weights run dense kernels here: MACs and energy are those of the dense model"
#: Layers less sparse than this are kept dense without timing: CSR stores a value and an index per non-zero, so
#: above half density it holds more bytes than the dense weight (and it measured slower well above that here).
MIN_SPARSITY_TIMED = 0.5
#: BSR block sizes tried, largest first; the first that divides both sides and leaves blocks at least
#: ``MIN_BLOCK_FILL`` full is a candidate.
BSR_BLOCK_SIZES = (32, 16, 8, 4)
MIN_BLOCK_FILL = 0.5
#: The most calls one timed sample of :func:`use_sparse_kernels` averages over.
MAX_CALLS = 100
#: Timing shorter than this (seconds) is not judged for other processes' load: the machine's busy-time counter
#: ticks in hundredths of a second.
MIN_WATCHED_S = 0.5

#: ``measure(layer, x) -> seconds`` for one forward pass of ``layer`` on ``x``.
Measure = Callable[[nn.Module, "Tensor"], float]


def _quietly(make: Callable[[], Tensor]) -> Tensor:
    """``make()`` without PyTorch's once-per-process "sparse support is in beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Sparse \w+ tensor support is in beta")
        return make()


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored in a sparse layout (CSR or BSR) and run by a sparse matmul.

    ``y = x W^T + b`` is computed as ``(b + W x^T)^T`` with ``torch.addmm`` on the sparse ``W``. Buffers saved
    in the state dict (plain dense tensors, so ``state_dict``/``torch.save`` round-trip as for any module):
    ``crow_indices`` (int32, one per row, or block row, plus one), ``col_indices`` (int32, one per stored value
    or block), ``values`` (float: ``[nnz]`` for CSR, ``[blocks, r, c]`` for BSR; the layout follows from its
    shape, so a state dict says which it holds) and ``bias`` (if any). Loading a state dict takes its sizes.
    Indices are int32: MKL's sparse BLAS takes them as they are, where int64 indices would be copied on every call.

    Gradients flow to the input, not to the weights (an inference layer).

    Attributes:
        in_features: inputs per row.
        out_features: outputs per row.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, layout: str = "csr",
                 blocksize: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if layout not in ("csr", "bsr"):
            raise ValueError(f"SparseLinear layout must be 'csr' or 'bsr', got {layout!r}")
        r, c = blocksize if layout == "bsr" else (1, 1)
        rows = out_features // r
        self.register_buffer("crow_indices", torch.zeros(rows + 1, dtype=torch.int32))
        self.register_buffer("col_indices", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("values", torch.zeros(0) if layout == "csr" else torch.zeros(0, r, c))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @property
    def layout(self) -> str:
        """``"csr"`` or ``"bsr"``."""
        return "csr" if self.values.dim() == 1 else "bsr"

    @property
    def blocksize(self) -> tuple[int, int]:
        """The ``(rows, columns)`` of a stored block; ``(1, 1)`` for CSR."""
        return (1, 1) if self.values.dim() == 1 else (int(self.values.shape[1]), int(self.values.shape[2]))

    @property
    def nnz(self) -> int:
        """Weights stored (non-zeros for CSR; whole blocks for BSR, so zeros inside a block count)."""
        return self.values.numel()

    @classmethod
    def from_linear(cls, linear: nn.Linear, layout: str = "csr", blocksize: tuple[int, int] | None = None
                    ) -> SparseLinear:
        """A sparse copy of ``linear`` (which is not changed): its exact-zero weights are not stored.

        Args:
            linear: the layer to convert.
            layout: ``"csr"`` or ``"bsr"``.
            blocksize: the BSR block ``(rows, columns)``; must divide the weight's shape. Ignored for CSR.

        Returns:
            The new layer, on ``linear``'s device, with its weight's dtype.

        Raises:
            ValueError: an unknown layout, or a BSR block size that does not divide the weight.
        """
        if layout == "bsr" and (blocksize is None or linear.out_features % blocksize[0]
                                or linear.in_features % blocksize[1]):
            raise ValueError(f"SparseLinear BSR blocks {blocksize} must divide the weight "
                             f"{linear.out_features} x {linear.in_features}")
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, layout,
                  blocksize if layout == "bsr" else (1, 1))  # type: ignore[arg-type]
        weight = linear.weight.detach()
        sparse = _quietly(lambda: weight.to_sparse_csr() if layout == "csr" else weight.to_sparse_bsr(blocksize))
        out.crow_indices = sparse.crow_indices().to(torch.int32)
        out.col_indices = sparse.col_indices().to(torch.int32)
        out.values = sparse.values().clone()
        if linear.bias is not None:
            out.bias = linear.bias.detach().clone()
        return out

    def sparse_weight(self) -> Tensor:
        """The weight ``[out_features, in_features]`` as a sparse tensor over this layer's buffers (no copy)."""
        make = torch.sparse_csr_tensor if self.values.dim() == 1 else torch.sparse_bsr_tensor
        size = (self.out_features, self.in_features)
        return _quietly(lambda: make(self.crow_indices, self.col_indices, self.values, size,
                                     check_invariants=False))

    def dense_weight(self) -> Tensor:
        """The weight ``[out_features, in_features]`` as a dense tensor (zeros filled in)."""
        return self.sparse_weight().to_dense()

    def to_linear(self) -> nn.Linear:
        """A dense ``nn.Linear`` with the same weight and bias (for checking, or to prune or quantize further)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        # the number of stored values (and the layout) is the saved layer's: take its sizes before copying
        for name in ("crow_indices", "col_indices", "values"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor):
                mine = getattr(self, name)
                setattr(self, name, torch.empty(saved.shape, dtype=mine.dtype, device=mine.device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).t().to(self.values.dtype).contiguous()
        weight = self.sparse_weight()
        out = torch.mm(weight, rows) if self.bias is None else torch.addmm(self.bias.unsqueeze(1), weight, rows)
        return out.t().to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        block = f", blocksize={self.blocksize}" if self.layout == "bsr" else ""
        density = self.nnz / (self.in_features * self.out_features or 1)
        return (f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}{block}, "
                f"density={density:.3f}, bias={self.bias is not None}")


def count_sparse_weights(module: SparseLinear) -> WeightCount:
    """The facts hook: ``out_features * in_features`` weights, the non-zero ones among them, and the bias."""
    nonzero = int(torch.count_nonzero(module.values))
    return WeightCount(module.out_features * module.in_features, nonzero,
                       () if module.bias is None else (module.bias,))


# ------------------------------------------------------------------------------------------ choosing


def sparse_candidates(linear: nn.Linear) -> dict[str, SparseLinear]:
    """The sparse layouts worth timing for ``linear``: ``"csr"`` always; ``"bsr RxC"`` with the largest block
    of :data:`BSR_BLOCK_SIZES` that divides both sides and whose stored blocks are at least half non-zero."""
    found = {"csr": SparseLinear.from_linear(linear, "csr")}
    weight = linear.weight.detach()
    nonzero = int(torch.count_nonzero(weight))
    out_f, in_f = weight.shape
    for size in BSR_BLOCK_SIZES:
        if out_f % size or in_f % size or not nonzero:
            continue
        blocks = weight.reshape(out_f // size, size, in_f // size, size).ne(0).any(dim=(1, 3))
        if nonzero >= MIN_BLOCK_FILL * int(blocks.sum()) * size * size:
            found[f"bsr {size}x{size}"] = SparseLinear.from_linear(linear, "bsr", (size, size))
            break
    return found


def time_forward(layer: nn.Module, x: Tensor) -> float:
    """Seconds one no-grad forward pass of ``layer`` on ``x`` takes (wall clock, ``time.perf_counter``; a CUDA
    input's device is synchronised at both edges)."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        sync()
        start = time.perf_counter()
        layer(x)
        sync()
        return time.perf_counter() - start


def _decide(linear: nn.Linear, batch: int, repeats: int, margin: float, measure: Measure, seed: int,
            min_sample_s: float) -> tuple[dict[str, Any], SparseLinear | None]:
    """Time ``linear`` dense and in each sparse candidate, interleaved; the decision and the layer to use."""
    weight = linear.weight.detach()
    sparsity = 1 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1)
    decision: dict[str, Any] = {"sparsity": round(sparsity, 4)}
    if sparsity < MIN_SPARSITY_TIMED:
        return {**decision, "path": "dense", "reason": f"sparsity below {MIN_SPARSITY_TIMED}: not timed"}, None
    candidates: dict[str, nn.Module] = {"dense": linear, **sparse_candidates(linear)}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, linear.in_features, generator=gen).to(weight.device, weight.dtype)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    calls = {}  # per sample: enough calls to last about min_sample_s (a short call alone is mostly jitter)
    total = 0.0
    for name, layer in candidates.items():  # warm-up, not counted
        one = float(measure(layer, x))
        total += one
        calls[name] = max(1, min(MAX_CALLS, math.ceil(min_sample_s / one))) if one > 0 else MAX_CALLS
    for _ in range(repeats):
        for name, layer in candidates.items():
            sample = sum(float(measure(layer, x)) for _ in range(calls[name]))
            total += sample
            times[name].append(sample / calls[name])
    median = {name: statistics.median(ts) for name, ts in times.items()}
    # paired: each round's dense time over the sparse time next to it, so that load drifting between rounds
    # (other processes on a shared machine) moves both sides of a ratio alike
    speedups = {name: statistics.median(d / t if t > 0 else float("inf") for d, t in zip(times["dense"], ts))
                for name, ts in times.items() if name != "dense"}
    best = max(speedups, key=speedups.__getitem__)
    speedup = speedups[best]
    decision.update({"times_ms": {n: round(t * 1e3, 4) for n, t in median.items()}, "best_sparse": best,
                     "speedup": round(speedup, 3), "timed_s": round(total, 4)})
    if speedup >= 1 / (1 - margin):
        chosen = candidates[best].train(linear.training)  # the model keeps its train/eval modes
        return {**decision, "path": best}, chosen  # type: ignore[return-value]
    return {**decision, "path": "dense",
            "reason": f"{best} measured {speedup:.2f}x the dense speed, not {1 / (1 - margin):.2f}x or more"}, None


def use_sparse_kernels(
    model: nn.Module, batch_size: int = 1, *, layers: Iterable[str] | None = None, repeats: int = 7,
    margin: float = 0.1, measure: Measure | None = None, seed: int = 0, min_sample_s: float = 0.005,
) -> tuple[nn.Module, dict[str, Any]]:
    """Run each Linear layer on a sparse kernel where that measured faster here, in place.

    Each candidate ``nn.Linear`` (at least :data:`MIN_SPARSITY_TIMED` sparse; a layer inside
    ``nn.MultiheadAttention`` is left alone, as attention reads its weight directly) is timed on a random input of
    ``batch_size`` rows at the current ``torch.get_num_threads()``: one warm-up call each, then ``repeats``
    rounds that time the dense layer and every layout of :func:`sparse_candidates` in turn, each sample the
    mean of enough calls to last about ``min_sample_s`` (judged from the warm-up call; at most 100). A layout's
    speed-up is the median over the rounds of dense time / its time (paired within a round, so that load
    drifting between rounds moves both alike). The layer is replaced by the layout with the highest speed-up when that
    is at least ``1 / (1 - margin)`` (its time at most ``1 - margin`` of the dense time); otherwise it stays
    dense. The decision holds for the conditions it was timed in: on a machine whose cores other processes
    share, multi-threaded sparse kernels can stall where dense ones do not. A Linear used in two places is
    decided once and stays shared.

    Args:
        model: the model; its Linear layers are replaced in place (a bare Linear is returned replaced).
        batch_size: rows per call to time at: the batch size, times the sequence length for a model that applies
            its Linear layers to every token.
        layers: qualified names (``model.named_modules()``) of the Linear layers to consider; ``None``: every one.
        repeats: timed rounds per layer (the median is used), >= 1.
        margin: how much faster the sparse kernel must be, a fraction in [0, 1): 0.1 means at least 10% less time.
        measure: ``measure(layer, x) -> seconds`` for one forward pass; :func:`time_forward` by default (tests
            pass their own).
        seed: seed of the random timing input.
        min_sample_s: seconds one timed sample should last, >= 0 (0: one call per sample).

    Returns:
        ``(model, details)``: ``details`` holds ``sparse_layers`` (names now sparse, with their layout),
        ``sparse_decisions`` (per layer considered: its sparsity, median ``times_ms`` of each path, the best
        sparse layout and its ``speedup``, ``timed_s`` (seconds of timed calls), the chosen ``path`` and why it
        stayed dense), ``sparse_batch``, ``sparse_threads``, ``sparse_timing_other_cores`` (the cores other
        processes kept busy meanwhile; ``None`` when the timed calls took under half a second in all) and
        ``flags`` (see :func:`dense_kernel_details`; plus a warning when other processes kept over a quarter of
        a core busy, as ``compare`` says of its figures).

    Raises:
        ConfigError: a bad ``batch_size``, ``repeats``, ``margin`` or ``min_sample_s``.
    """
    whole_number("batch_size", batch_size, minimum=1)
    whole_number("repeats", repeats, minimum=1)
    margin = number("margin", margin, low=0.0, high=1.0, high_open=True, note="0.1: at least 10% less time")
    min_sample_s = number("min_sample_s", min_sample_s, low=0.0, unit="seconds")
    timer = time_forward if measure is None else measure
    wanted = None if layers is None else set(layers)
    holder = nn.Sequential(model)  # so that a bare Linear root is replaced too
    watch = LoadWatch()
    decided: dict[int, tuple[str, SparseLinear | None]] = {}
    decisions: dict[str, dict[str, Any]] = {}
    for parent_name, parent in list(holder.named_modules()):
        if isinstance(parent, nn.MultiheadAttention):
            continue
        for child_name, child in list(parent._modules.items()):  # named_children() names a shared one once
            full = f"{parent_name}.{child_name}".split(".", 1)[1] if parent_name else "(model)"
            if type(child) is not nn.Linear or (id(child) not in decided and wanted is not None
                                                  and full not in wanted):
                continue  # a shared layer is judged where it is first met (named_modules() names it there)
            if id(child) not in decided:
                decision, sparse = _decide(child, batch_size, repeats, margin, timer, seed, min_sample_s)
                decisions[full] = decision
                decided[id(child)] = (full, sparse)
            if decided[id(child)][1] is not None:
                setattr(parent, child_name, decided[id(child)][1])
    sparse_layers = {name: decisions[name]["path"] for name, s in decided.values() if s is not None}
    details = dense_kernel_details("auto", batch_size) if not sparse_layers else {
        "sparse_execution": "auto", "sparse_batch": batch_size, "sparse_threads": torch.get_num_threads(),
        "flags": [_sparse_flag(sparse_layers, len(decisions), batch_size)],
    }
    details.update({"sparse_layers": sparse_layers, "sparse_decisions": decisions})
    timed_s = sum(d.get("timed_s", 0.0) for d in decisions.values())
    other = watch.other_cores() if timed_s >= MIN_WATCHED_S else None
    details["sparse_timing_other_cores"] = None if other is None else round(other, 2)
    busy = busy_flag(other, "the timing of sparse against dense kernels", torch.get_num_threads(),
                     remedy="the choice of kernels may not hold on a quiet machine; compress again on a quiet one, "
                            "or with fewer torch threads (torch.set_num_threads)")
    if busy is not None:
        details["flags"].append(busy)
    return holder[0], details


def _sparse_flag(sparse_layers: Mapping[str, str], considered: int, batch: int) -> str:
    names = ", ".join(list(sparse_layers)[:3]) + (", ..." if len(sparse_layers) > 3 else "")
    return (f"sparse kernels run {len(sparse_layers)} of {considered} pruned Linear layers ({names}), measured "
            f"faster at batch {batch} on {torch.get_num_threads()} threads; other layers run dense, and MACs are "
            "counted as for the dense model")


def dense_kernel_details(mode: str, batch_size: int | None = None) -> dict[str, Any]:
    """The details of a pruned model that runs no layer on sparse kernels: the mode and :data:`DENSE_KERNELS_FLAG`.

    Args:
        mode: ``"off"`` (sparse execution not asked for) or ``"auto"`` (asked for, and no layer measured faster).
        batch_size: the batch the layers were timed at (``"auto"``).

    Returns:
        ``sparse_execution``, ``sparse_layers`` (empty) and ``flags``, for a method's details.
    """
    why = ('sparse execution off; with sparse_execution="auto" pruned Linear layers run sparse kernels where those '
           "measure faster" if mode == "off"
           else f"no sparse kernel measured faster at batch {batch_size} on {torch.get_num_threads()} threads")
    details: dict[str, Any] = {"sparse_execution": mode, "sparse_layers": {},
                               "flags": [f"{DENSE_KERNELS_FLAG} ({why})"]}
    if mode != "off":
        details.update({"sparse_batch": batch_size, "sparse_threads": torch.get_num_threads()})
    return details
