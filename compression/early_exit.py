"""Dynamic inference with early exits: a multi-exit model, its training, threshold calibration, reports.

``compress(backbone, EarlyExitConfig(exits_after=[2, 5], example_input=x[:1], ...))`` cuts an
``nn.Sequential`` backbone after the given layer indices, attaches a small classifier head at each cut
and trains the heads with a joint loss (the backbone frozen by default, so the last exit is exactly the
backbone). In eval mode a sample leaves at the first head whose confidence exceeds the threshold::

    model = compress(cnn, EarlyExitConfig(exits_after=[2, 5], example_input=x[:1], train_fn=...))
    model.threshold = calibrate_threshold(model, x_val, y_val, max_drop=0.005)
    logits, exit_index = model.infer(x)            # model(x) in eval mode returns the logits only
    print(exit_report(model, x, y))

Confidence is the largest softmax probability (``criterion="max_softmax"``) or one minus the entropy
normalised by ``ln(classes)`` (``criterion="entropy"``); both lie in [0, 1]. A sample exits when its
confidence is strictly greater than the threshold, so ``threshold=1.0`` switches early exits off.

:func:`calibrate_threshold` and :func:`exit_report` work from per-exit logits computed once, so scanning
many thresholds costs one forward pass. The ``early-exit`` recipe places the exits with
:func:`exit_positions`.

Cost is counted in multiply-accumulates (MACs) of Conv and Linear layers only (batch norm, activations
and pooling are not counted), measured once per block and per head with forward hooks on a single
example sample. A sample that leaves at exit ``k`` costs blocks ``0..k`` plus heads ``0..k``; one that
reaches the end also paid for every head it passed. At ``threshold=1.0`` the heads are skipped.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from greenmeter._checks import choice, number
from greenmeter._errors import CompressionError, ConfigError, UnsupportedModelError
from greenmeter.compression._core import compress
from greenmeter.compression.distillation import check_training_source, fit
from greenmeter.compression.registry import DataMacs, FactsHooks, RecipeSpec, recipe_number, register_method

if TYPE_CHECKING:
    from greenmeter.comparison.recipes import RecipeContext

__all__ = ["EarlyExitConfig", "ExitCosts", "ExitHead", "MultiExitModel", "choose_exits", "measure_exit_costs"]
# calibrate_threshold and exit_report: see the package's __all__

CRITERIA = ("max_softmax", "entropy")


def check_threshold(threshold: Any, criterion: Any, owner: str) -> None:
    """Check an exit criterion (one of ``CRITERIA``) and its confidence threshold, a number in (0, 1]."""
    choice(f"{owner}: criterion", criterion, CRITERIA)
    number(f"{owner}: threshold", threshold, low=0, high=1, low_open=True,
           note=f"for {criterion}; 1.0 = never exit early")


def confidence(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per-sample confidence in [0, 1]: max softmax probability, or 1 - entropy / ln(classes)."""
    probs = (logits if logits.dtype == torch.float32 else logits.float()).softmax(dim=1)
    if criterion == "max_softmax":
        return probs.amax(dim=1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
    return 1.0 - entropy / math.log(logits.shape[1])


def _count_macs(module: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """MACs of the Conv/Linear layers in ``module`` for the single sample ``x`` (forward hooks), and its output."""
    total = 0

    def hook(m: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        per_out = m.weight[0].numel() if isinstance(m, nn.modules.conv._ConvNd) else m.in_features  # type: ignore[union-attr]
        total += int(out.numel() // out.shape[0]) * int(per_out)

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    try:
        with torch.no_grad():
            out = module(x)
    finally:
        for h in handles:
            h.remove()
    return total, out


class ExitHead(nn.Module):
    """An exit's classifier: ``[C, H, W]`` features average-pooled to at most 4x4 (a coarse layout, which the
    shallow exits need; a global pool loses it) and flattened, then one Linear layer; ``[F]`` features go to the
    Linear layer as they are.

    In inference (eval mode, no gradients) the pool is folded into the Linear layer: average pooling is linear,
    so ``fc(pool(x))`` is one Linear layer on the flattened features, whose weight is ``fc``'s spread over each
    pooling window (computed once, and again when ``fc``'s weight changes). The result is the same up to float
    rounding; it does more MACs (``C * H * W`` inputs instead of ``C * 16``) in one call instead of three: at
    batch 1 each call's overhead costs more than the work (``python benchmarks/early_exit.py`` times a head both
    ways). Training, and any call with gradients, runs the pool.

    The folded weight is made when the head is put in eval mode (so it is not counted as the first call's work),
    and again when ``fc``'s weight or the features' shape changes.

    Args:
        pool: the pooled ``(H, W)``, or ``None`` for ``[F]`` features.
        fc: the Linear layer.
        features: the ``[C, H, W]`` shape of the features it takes (for the folded weight made in ``eval()``).
    """

    def __init__(self, pool: tuple[int, int] | None, fc: nn.Linear, features: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.pool = pool
        self.fc = fc
        self.features = features
        self._folded: tuple[Any, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> ExitHead:
        super().train(mode)
        if not mode and self.pool is not None and self.features is not None:
            self.folded_weight(self.features)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is None:
            return self.fc(x)
        if self.training or torch.is_grad_enabled():
            return self.fc(F.adaptive_avg_pool2d(x, self.pool).flatten(1))
        return F.linear(x.flatten(1), self.folded_weight(tuple(x.shape[1:])), self.fc.bias)

    def folded_weight(self, features: tuple[int, ...]) -> torch.Tensor:
        """The weight of the pool and ``fc`` as one Linear layer on flattened ``[C, H, W]`` features."""
        w = self.fc.weight
        key = (features, id(w), w._version, w.dtype, w.device)  # no data_ptr(): export traces with fake tensors
        if self._folded is None or self._folded[0] != key:
            c, h, wd = features
            with torch.no_grad():
                basis = torch.eye(h * wd, dtype=w.dtype, device=w.device).reshape(h * wd, 1, h, wd)
                pool = F.adaptive_avg_pool2d(basis, self.pool).reshape(h * wd, -1)  # [H*W, pooled]: the pool's matrix
                folded = (w.reshape(w.shape[0], c, -1) @ pool.T).reshape(w.shape[0], c * h * wd)
            self._folded = (key, folded)
        return self._folded[1]

    def eval_macs(self, features: tuple[int, ...]) -> int:
        """MACs per sample in inference, on features of shape ``features`` (the folded Linear layer's)."""
        return self.fc.out_features * math.prod(features)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: the default is the instance's own __dict__
        state["_folded"] = None  # a cache: made again on the first call
        return state

    def extra_repr(self) -> str:
        return f"pool={self.pool}"


def _make_head(features: torch.Tensor, classes: int, index: int) -> nn.Module:
    if features.dim() == 4:
        pool = (min(4, features.shape[2]), min(4, features.shape[3]))
        return ExitHead(pool, nn.Linear(features.shape[1] * pool[0] * pool[1], classes), tuple(features.shape[1:]))
    if features.dim() == 2:
        return ExitHead(None, nn.Linear(features.shape[1], classes))
    raise UnsupportedModelError(
        f"early exit: the features after layer {index} have shape {tuple(features.shape[1:])}; heads need "
        "[C, H, W] or [F] features")


class MultiExitModel(nn.Module):
    """An ``nn.Sequential`` backbone cut into blocks, with a classifier head after every block but the last.

    Args:
        backbone: the ``nn.Sequential`` to cut (its layers are shared, not copied).
        exits_after: increasing layer indices in ``backbone`` after which a head is attached; the last
            exit is the backbone's own output.
        example_input: a batch (one sample is enough) of typical inputs, used to size the heads and count
            MACs.
        threshold: confidence above which a sample exits, in (0, 1].
        criterion: ``"max_softmax"`` or ``"entropy"``.

    In training mode ``forward`` returns the list of every exit's logits (for a joint loss); in eval mode
    it runs early-exit inference and returns the logits only. ``infer`` also returns the exits.

    Attributes:
        exit_macs: MACs per sample for a sample leaving at each exit (heads it passed included).
        full_macs: MACs per sample of the backbone alone (what the original model costs).
    """

    def __init__(self, backbone: nn.Module, exits_after: Sequence[int], example_input: torch.Tensor,
                 threshold: float = 0.9, criterion: str = "max_softmax") -> None:
        super().__init__()
        if not isinstance(backbone, nn.Sequential):
            raise UnsupportedModelError(f"early exit needs an nn.Sequential backbone, not {type(backbone).__name__}")
        cuts = _check_exits(exits_after, len(backbone))
        check_threshold(threshold, criterion, "MultiExitModel")
        bounds = [0, *(i + 1 for i in cuts), len(backbone)]
        self.blocks = nn.ModuleList(backbone[a:b] for a, b in itertools.pairwise(bounds))
        self.exits_after = tuple(cuts)
        self._threshold, self.criterion = float(threshold), criterion
        self.backbone_frozen = False
        self.example_input = example_input[:1].detach().clone()  # to size heads again (with_exits), not state
        was = backbone.training
        backbone.eval()
        try:
            block_macs, features = [], []
            h = _on_device_of(backbone, example_input[:1])
            for block in self.blocks:
                macs, h = _count_macs(block, h)
                block_macs.append(macs)
                features.append(h)
            if h.dim() != 2:
                raise UnsupportedModelError(f"early exit: the backbone's output has shape {tuple(h.shape[1:])}, not [classes]")
            self.heads = nn.ModuleList(
                _make_head(f, h.shape[1], cut).to(h.device) for f, cut in zip(features, cuts))
            head_macs = [head.eval_macs(tuple(f.shape[1:])) for head, f in zip(self.heads, features)]
        finally:
            backbone.train(was)
        self.train(was)
        self.block_macs, self.head_macs = tuple(block_macs), tuple(head_macs)
        self.exit_macs = tuple(sum(block_macs[:k + 1]) + sum(head_macs[:k + 1]) for k in range(len(block_macs)))
        self.full_macs = sum(block_macs)

    @property
    def num_exits(self) -> int:
        return len(self.blocks)

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        check_threshold(value, self.criterion, "MultiExitModel.threshold")
        self._threshold = float(value)

    def freeze_backbone(self) -> None:
        """Stop the backbone's weights and batch-norm statistics from changing (in place)."""
        for p in self.blocks.parameters():
            p.requires_grad_(False)
        self.backbone_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> MultiExitModel:
        super().train(mode)
        if self.backbone_frozen:
            self.blocks.eval()
        return self

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for every sample (the full backbone and all heads run)."""
        outs = []
        for k, block in enumerate(self.blocks):
            x = block(x)
            outs.append(self.heads[k](x) if k < len(self.heads) else x)
        return outs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        # eval: the model's own threshold, checked when it was set, so no per-call checks or exit bookkeeping
        return self.forward_all(x) if self.training else self._route(x, self._threshold, self.criterion, False)[0]

    def infer(self, x: torch.Tensor, threshold: float | None = None,
              criterion: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched early-exit inference: only the samples still running go through each next block.

        Returns:
            ``(logits [N, classes], exit_index [N] int64)``; the logits come from each sample's exit.

        Raises:
            CompressionError: the model is in training mode (call ``.eval()`` first).
        """
        threshold = self._threshold if threshold is None else threshold
        criterion = self.criterion if criterion is None else criterion
        check_threshold(threshold, criterion, "MultiExitModel.infer")
        if self.training:
            raise CompressionError("MultiExitModel.infer needs eval mode (batch norm, dropout): call model.eval() first")
        return self._route(x, threshold, criterion, True)  # type: ignore[return-value]

    def _route(self, x: torch.Tensor, threshold: float, criterion: str,
               exits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``infer`` without its checks; the exit indices only when ``exits`` (the eval ``forward`` needs none)."""
        n = x.shape[0]
        last = self.num_exits - 1
        h = x
        if threshold >= 1.0:  # nobody can exit early: the backbone alone, heads skipped
            for block in self.blocks:
                h = block(h)
            return h, torch.full((n,), last, dtype=torch.long, device=x.device) if exits else None
        if n == 1:  # one sample: no bookkeeping of who is still running, one host sync per exit passed
            for k, block in enumerate(self.blocks):
                h = block(h)
                if k == last:
                    break
                out = self.heads[k](h)
                if bool(confidence(out, criterion) > threshold):  # as the batched rule compares, in float32
                    return out, torch.full((1,), k, dtype=torch.long, device=x.device) if exits else None
            return h, torch.full((1,), last, dtype=torch.long, device=x.device) if exits else None
        exit_index = torch.full((n,), last, dtype=torch.long, device=x.device)
        logits: torch.Tensor | None = None
        alive = torch.arange(n, device=x.device)
        for k, block in enumerate(self.blocks):
            h = block(h)
            if k == last:
                out, done = h, None
            else:
                out = self.heads[k](h)
                done = confidence(out, criterion) > threshold
                n_done = int(done.sum())
                if n_done == 0:
                    continue
                if n_done < len(alive):
                    if logits is None:
                        logits = out.new_empty((n, out.shape[1]))
                    leaving = alive[done]
                    logits[leaving] = out[done]
                    exit_index[leaving] = k
                    keep = (~done).nonzero().squeeze(1)
                    alive, h = alive[keep], h.index_select(0, keep)
                    continue
            # everyone still running leaves here
            if logits is None:  # ... and that is every sample
                return out, exit_index.fill_(k)
            logits[alive] = out
            exit_index[alive] = k
            break
        return logits, exit_index  # type: ignore[return-value]

    def sample_macs(self, exit_index: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """MACs executed for each sample given where it exited (heads skipped at ``threshold=1.0``)."""
        threshold = self._threshold if threshold is None else threshold
        if threshold >= 1.0:
            return torch.full(exit_index.shape, self.full_macs, dtype=torch.long)
        table = torch.tensor(self.exit_macs, dtype=torch.long)
        return table[exit_index.cpu()]

    def with_exits(self, exits_after: Sequence[int]) -> MultiExitModel:
        """A model with exits at ``exits_after``, a subset of this one's, sharing its layers and a copy of the
        heads kept (the backbone's layers are shared, not copied); threshold and criterion as here."""
        missing = [c for c in exits_after if c not in self.exits_after]
        if missing:
            raise ConfigError(f"with_exits: {missing} are not exits of this model (it has exits after "
                              f"{list(self.exits_after)})")
        backbone = nn.Sequential(*(layer for block in self.blocks for layer in block))
        new = MultiExitModel(backbone, exits_after, self.example_input, self._threshold, self.criterion)
        for j, cut in enumerate(new.exits_after):
            new.heads[j].load_state_dict(self.heads[self.exits_after.index(cut)].state_dict())
        if self.backbone_frozen:
            new.freeze_backbone()
        return new.train(self.training)

    def extra_repr(self) -> str:
        return f"exits_after={self.exits_after}, threshold={self._threshold}, criterion={self.criterion!r}"


def _check_exits(exits_after: Sequence[int], layers: int | None) -> list[int]:
    """Validate exit positions (``layers=None``: the model's length is not known yet)."""
    cuts = list(exits_after) if isinstance(exits_after, Sequence) else []
    if not cuts:
        raise ConfigError("early exit: exits_after must name at least one layer index")
    for i in cuts:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ConfigError(f"early exit: exits_after holds {i!r}; layer indices must be integers")
        if i < 0 or (layers is not None and i >= layers - 1):
            raise ConfigError(
                f"early exit: exit index {i} is out of range; the backbone has {layers} layers, so an exit can follow "
                f"layers 0..{layers - 2} (the last layer's output is the final exit)")
    if any(b <= a for a, b in itertools.pairwise(cuts)):
        raise ConfigError(f"early exit: exits_after must be strictly increasing, got {cuts}")
    return cuts


# ------------------------------------------------------------------------------------------ config

@dataclass(frozen=True)
class EarlyExitConfig:
    """Attach exits to an ``nn.Sequential`` model and train their heads with a joint loss.

    Args:
        exits_after: increasing layer indices after which a head is attached.
        example_input: a typical input batch (one sample is enough) to size heads and count MACs.
        train_fn: ``train_fn(model, loss_fn)`` trains the multi-exit model in place with
            ``loss_fn(model, x, y) -> Tensor``, ``x`` a batch's inputs and ``y`` its targets (e.g.
            ``greenmeter.demo.digits.train_classifier``). Give this or ``data``, not both.
        data: an iterable of batches (re-iterated per epoch) or a callable returning one, for the built-in Adam
            loop: ``(inputs, targets)`` pairs, or dicts with the targets under ``"labels"``, read as for
            ``DistillConfig.data``.
        epochs: epochs of the built-in loop.
        lr: learning rate of the built-in loop.
        exit_weights: weight of each exit's cross-entropy in the joint loss (one per exit, the final exit
            included); equal weights by default.
        freeze_backbone: train only the heads (the final exit stays exactly the original model); with
            ``False`` the backbone is trained too.
        threshold: exit confidence threshold in (0, 1] used by the returned model in eval mode.
        criterion: ``"max_softmax"`` or ``"entropy"``.
        seed: seed of the heads' initial weights and of the built-in loop.
        self_distill: weight of self-distillation (>= 0; 0 = none): each early exit also learns the final
            exit's outputs softened at temperature :data:`SELF_DISTILL_TEMPERATURE` (KL divergence, scaled by T²),
            as in Zhang et al., "Be Your Own Teacher" (ICCV 2019). With ``freeze_backbone=False`` this is joint
            training with self-distillation; with the backbone frozen, the heads learn from the backbone's own
            soft outputs.
    """

    exits_after: Sequence[int]
    example_input: torch.Tensor
    train_fn: Callable[[nn.Module, Callable[..., Any]], Any] | None = None
    data: Any = None
    epochs: int = 10
    lr: float = 3e-3
    exit_weights: Sequence[float] | None = None
    freeze_backbone: bool = True
    threshold: float = 0.9
    criterion: str = "max_softmax"
    seed: int = 0
    self_distill: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.example_input, torch.Tensor) or self.example_input.dim() < 2 or len(self.example_input) < 1:
            raise ConfigError("EarlyExitConfig.example_input must be a tensor batch [N, ...] with N >= 1")
        _check_exits(self.exits_after, None)
        check_training_source(self.train_fn, self.data, self.epochs, self.lr, "EarlyExitConfig")
        check_threshold(self.threshold, self.criterion, "EarlyExitConfig")
        number("EarlyExitConfig.self_distill", self.self_distill, low=0, note="0 = no self-distillation")
        if self.exit_weights is not None:
            weights = list(self.exit_weights)
            if len(weights) != len(self.exits_after) + 1:
                raise ConfigError(
                    f"EarlyExitConfig.exit_weights needs {len(self.exits_after) + 1} weights (one per exit, the final "
                    f"exit included), got {len(weights)}")
            if any(not w >= 0 for w in weights) or not any(w > 0 for w in weights):
                raise ConfigError(f"EarlyExitConfig.exit_weights must be >= 0 and not all zero, got {weights}")


#: The temperature of self-distillation (``EarlyExitConfig.self_distill``).
SELF_DISTILL_TEMPERATURE = 3.0


def _joint_loss(weights: Sequence[float], self_distill: float = 0.0) -> Callable[..., torch.Tensor]:
    """The weighted sum of every exit's cross-entropy (BranchyNet), plus, with ``self_distill``, each early exit's
    KL divergence to the final exit's softened outputs (the final exit is the teacher; no gradient flows to it)."""
    t = SELF_DISTILL_TEMPERATURE

    def loss_fn(model: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
        from greenmeter.comparison.batches import call_model

        outs = call_model(model.forward_all, x)  # x: a batch's inputs, a tensor or a tuple (forward_all(*x))
        loss = sum(w * F.cross_entropy(o, y) for w, o in zip(weights, outs) if w)
        if self_distill:
            soft = F.softmax(outs[-1].detach() / t, dim=1)
            loss = loss + self_distill * t * t * sum(
                F.kl_div(F.log_softmax(o / t, dim=1), soft, reduction="batchmean") for o in outs[:-1])
        return loss  # type: ignore[return-value]

    return loss_fn


# ------------------------------------------------------------------------------------------ calibration and reports

def _all_exit_logits(model: Any, x: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
    if not isinstance(model, MultiExitModel):
        raise ConfigError(f"expected a MultiExitModel (from compress(..., EarlyExitConfig(...))), not {type(model).__name__}")
    if model.training:
        raise CompressionError("this needs the model in eval mode (batch norm, dropout): call model.eval() first")
    parts: list[list[torch.Tensor]] = [[] for _ in range(model.num_exits)]
    x = _on_device_of(model, x)
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            for k, out in enumerate(model.forward_all(x[start:start + batch_size])):
                parts[k].append(out)
    return [torch.cat(p) for p in parts]


def _confidences(outs: list[torch.Tensor], criterion: str) -> torch.Tensor:
    """``[N, exits - 1]``: each sample's confidence at each early exit."""
    return torch.stack([confidence(o, criterion) for o in outs[:-1]], dim=1)


def _exits(conf: torch.Tensor, threshold: float) -> torch.Tensor:
    """Each sample's exit: the first whose confidence ``conf[:, k]`` is above ``threshold`` (compared in the
    confidences' dtype, as ``infer`` compares), else the last."""
    last = conf.shape[1]
    if threshold >= 1.0 or last == 0:
        return torch.full((conf.shape[0],), last, dtype=torch.long)
    above = conf > threshold
    return torch.where(above.any(dim=1), above.to(torch.uint8).argmax(dim=1), torch.tensor(last))


#: Ways ``calibrate_threshold`` judges a threshold (see its docstring).
ESTIMATES = ("confidence", "empirical")


def calibrate_threshold(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor, max_drop: float = 0.005,
                        criterion: str | None = None, estimate: str = "confidence") -> float:
    """The cheapest threshold whose accuracy drop from the final exit's stays within ``max_drop``.

    Candidate thresholds are the confidences the heads produce on ``x_val`` (every distinct exit
    behaviour) plus 1.0. Going down from 1.0, thresholds are accepted while the drop stays within
    ``max_drop`` (a fraction, 0.005 = 0.5 percentage points) of the final exit's accuracy on the same data;
    the lowest accepted one is returned (the fewest MACs). Stopping at the first violation, rather than
    taking any lower threshold that happens to pass, avoids lucky thresholds below a failing one. The model
    is not changed: set ``model.threshold`` to the result.

    Args:
        estimate: how the drop at a threshold is judged. ``"empirical"``: the validation accuracy of
            early-exit inference (0/1 per sample). On a small validation set that is noisy: a few hundred
            samples cannot show a 0.5 pp drop, so thresholds far too low pass. ``"confidence"`` (default):
            the empirical check and, as well, the expected accuracy, where each sample that leaves early
            counts the probability that its exit is right: that exit's max softmax after temperature
            scaling fitted on ``(x_val, y_val)`` (Guo et al., "On Calibration of Modern Neural Networks",
            ICML 2017). Every low-confidence exit then costs something, even when it happened to be right.

    Raises:
        CompressionError: the model is in training mode.
        ConfigError: a negative ``max_drop``, an unknown ``criterion`` or ``estimate``.
    """
    criterion = model.criterion if criterion is None else criterion  # type: ignore[union-attr, assignment]
    check_threshold(1.0, criterion, "calibrate_threshold")
    if not max_drop >= 0:
        raise ConfigError(f"calibrate_threshold: max_drop must be >= 0, got {max_drop}")
    if estimate not in ESTIMATES:
        raise ConfigError(f"calibrate_threshold: estimate must be one of {', '.join(ESTIMATES)}, not {estimate!r}")
    return _calibrated(_all_exit_logits(model, x_val), y_val, max_drop, criterion, estimate)


@dataclass(frozen=True)
class _Scores:
    """Per sample and exit (the final exit last): confidence at the early exits, right or wrong, and with the
    ``"confidence"`` estimate the probability that the exit is right (temperature-scaled max softmax)."""

    conf: torch.Tensor  # [N, exits - 1]
    right: torch.Tensor  # [N, exits], float 0/1
    p_right: torch.Tensor | None  # [N, exits]

    def only(self, early: Sequence[int]) -> _Scores:
        """The scores of a model keeping only the early exits ``early`` (indices) and the final one."""
        cols = [*early, self.right.shape[1] - 1]
        return _Scores(self.conf[:, list(early)], self.right[:, cols],
                       None if self.p_right is None else self.p_right[:, cols])


def _scores(outs: list[torch.Tensor], y_val: torch.Tensor, criterion: str, estimate: str) -> _Scores:
    y = y_val.to(outs[-1].device)
    right = torch.stack([(o.argmax(dim=1) == y).float() for o in outs], dim=1)
    p_right = None
    if estimate == "confidence":
        p_right = torch.stack([torch.softmax(o / fit_temperature(o, y), dim=1).amax(dim=1) for o in outs[:-1]]
                              + [right[:, -1]], dim=1)
    return _Scores(_confidences(outs, criterion), right, p_right)


def _calibrated(outs: list[torch.Tensor], y_val: torch.Tensor, max_drop: float, criterion: str, estimate: str) -> float:
    """:func:`calibrate_threshold` from the per-exit logits ``outs`` (the last is the final exit's)."""
    return _threshold_for(_scores(outs, y_val, criterion, estimate), max_drop)


def _threshold_for(scores: _Scores, max_drop: float) -> float:
    """:func:`calibrate_threshold`'s rule on precomputed scores."""
    target = float(scores.right[:, -1].mean()) - max_drop
    confs = scores.conf.reshape(-1).unique()
    if len(confs) > 2000:  # large validation sets: an evenly spaced subset of the distinct confidences
        confs = confs[torch.linspace(0, len(confs) - 1, 2000).long()]
    candidates = sorted({1.0, *(c for c in confs.tolist() if c > 0.0)}, reverse=True)
    best = 1.0
    for t in candidates:
        exits = _exits(scores.conf, t)[:, None]
        if float(scores.right.gather(1, exits).mean()) < target - 1e-9:
            break
        if scores.p_right is not None and float(scores.p_right.gather(1, exits).mean()) < target - 1e-9:
            break
        best = t
    return float(best)


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature T that minimises the cross-entropy of ``softmax(logits / T)`` on labels ``y``.

    Fitted by L-BFGS on log T, kept within [0.01, 100]; 1.0 if the fit does not converge to a finite value.
    """
    logits = logits.detach().float().clone()  # inference tensors cannot take part in autograd
    y = y.to(logits.device)
    with torch.enable_grad():
        log_t = torch.zeros(1, device=logits.device, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(logits / log_t.clamp(-4.6, 4.6).exp(), y)
            loss.backward()
            return loss

        opt.step(closure)
    value = float(log_t.detach().clamp(-4.6, 4.6).exp())
    return value if math.isfinite(value) else 1.0


def exit_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threshold: float | None = None) -> dict[str, Any]:
    """Accuracy and cost of early-exit inference on ``(x, y)`` at ``threshold`` (default: the model's).

    Returns:
        A dict: ``accuracy`` (in [0, 1]), ``final_exit_accuracy``, ``exit_histogram`` (samples per exit,
        summing to N), ``avg_macs`` (executed MACs per sample), ``full_macs`` (the backbone alone),
        ``mac_saving`` (``full_macs / avg_macs``), ``threshold``, ``criterion``, ``n``.

    Raises:
        CompressionError: the model is in training mode.
    """
    if not isinstance(model, MultiExitModel):
        raise ConfigError(f"exit_report needs a MultiExitModel, not {type(model).__name__}")
    threshold = model.threshold if threshold is None else threshold
    check_threshold(threshold, model.criterion, "exit_report")
    if model.training:
        raise CompressionError("exit_report needs the model in eval mode (batch norm, dropout): call model.eval() first")
    preds, exits = [], []
    x = _on_device_of(model, x)
    with torch.inference_mode():
        for start in range(0, len(x), 256):
            logits, ex = model.infer(x[start:start + 256], threshold)
            preds.append(logits.argmax(dim=1))
            exits.append(ex)
        final = [model.forward_all(x[s:s + 256])[-1].argmax(dim=1) for s in range(0, len(x), 256)]
    pred, exit_index = torch.cat(preds), torch.cat(exits)
    y = y.to(pred.device)
    avg_macs = float(model.sample_macs(exit_index, threshold).double().mean())
    return {
        "n": len(x),
        "threshold": float(threshold),
        "criterion": model.criterion,
        "accuracy": float((pred == y).float().mean()),
        "final_exit_accuracy": float((torch.cat(final) == y).float().mean()),
        "exit_histogram": torch.bincount(exit_index.cpu(), minlength=model.num_exits).tolist(),
        "avg_macs": avg_macs,
        "full_macs": model.full_macs,
        "mac_saving": model.full_macs / avg_macs,
    }


# ------------------------------------------------------------------------------------------ exits chosen by measured cost

@dataclass(frozen=True)
class ExitCosts:
    """Measured seconds per call of each backbone layer and of each head, at one batch size, on this machine.

    Attributes:
        layer_s: seconds of each layer of the backbone (``nn.Sequential`` order), on its real input.
        head_s: seconds of each exit's head with its confidence check, by the layer index it follows.
        batch_size: the batch size they were measured at.
        source: how they were measured, in words.
    """

    layer_s: tuple[float, ...]
    head_s: Mapping[int, float]
    batch_size: int
    source: str

    def exit_s(self, exits_after: Sequence[int]) -> list[float]:
        """Seconds for a sample leaving at each exit of a model with exits at ``exits_after`` (the final exit
        last): the layers up to the exit and every head it passed."""
        out, heads = [], 0.0
        for cut in exits_after:
            heads += self.head_s[cut]
            out.append(sum(self.layer_s[:cut + 1]) + heads)
        return [*out, sum(self.layer_s) + heads]


def _seconds(call: Callable[[], Any], rounds: int, sync: Callable[[], None] = lambda: None) -> float:
    """The least mean seconds per call over ``rounds`` timed rounds (the least is the run the machine disturbed
    least); each round has enough calls to last about 2 ms. ``sync`` waits for queued work (a GPU's) before each
    reading of the clock."""
    import time

    call()
    sync()
    start = time.perf_counter()
    call()
    sync()
    reps = max(1, min(1000, int(0.002 / max(time.perf_counter() - start, 1e-7))))
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            call()
        sync()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def _on_device_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the device ``model`` runs on, as ``compare`` finds and moves it
    (:func:`greenmeter.comparison.batches.model_device`, :func:`~greenmeter.comparison.batches.to_device`)."""
    from greenmeter.comparison.batches import model_device, to_device

    return to_device(x, model_device(model))


def measure_exit_costs(model: MultiExitModel, example_input: torch.Tensor, batch_size: int = 1,
                       rounds: int = 7) -> ExitCosts:
    """Time every backbone layer and every head of ``model`` at ``batch_size`` on this machine (in eval mode,
    without gradients, at the current thread count), on the example input repeated to the batch size.

    Wall-clock seconds, the least of ``rounds`` rounds. Per-call costs that MACs do not count (framework
    dispatch, memory traffic, the confidence check and its host synchronisation) are in them: at batch 1 they
    are most of the cost of a small model. Does not change ``model`` (its mode is restored).
    """
    if not isinstance(model, MultiExitModel):
        raise ConfigError(f"measure_exit_costs needs a MultiExitModel, not {type(model).__name__}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ConfigError(f"measure_exit_costs: batch_size must be >= 1, got {batch_size}")
    from greenmeter.comparison.batches import device_sync, model_device

    x = _on_device_of(model, example_input[:1].expand(batch_size, *example_input.shape[1:]).contiguous())
    sync = device_sync(model_device(model)) or (lambda: None)
    was = model.training
    model.eval()
    layer_s, head_s = [], {}
    try:
        with torch.inference_mode():
            h = x
            index = 0
            for k, block in enumerate(model.blocks):
                for layer in block:
                    layer_s.append(_seconds(lambda layer=layer, h=h: layer(h), rounds, sync))
                    h = layer(h)
                    index += 1
                if k < len(model.heads):
                    head = model.heads[k]
                    head_s[index - 1] = _seconds(
                        lambda head=head, h=h: bool((confidence(head(h), model.criterion) > model.threshold).all()),
                        rounds, sync)
    finally:
        model.train(was)
    return ExitCosts(tuple(layer_s), head_s, batch_size,
                     f"wall-clock seconds per call at batch {batch_size}, {torch.get_num_threads()} thread(s), the "
                     f"least of {rounds} rounds, measured on this machine")


def choose_exits(model: MultiExitModel, x_val: torch.Tensor, y_val: torch.Tensor, costs: ExitCosts,
                 max_drop: float = 0.005, estimate: str = "confidence") -> tuple[MultiExitModel, dict[str, Any]]:
    """The subset of ``model``'s exits, and its threshold, with the least expected cost per sample.

    For every non-empty subset of the exits, the threshold is calibrated on ``(x_val, y_val)`` as by
    :func:`calibrate_threshold` (within ``max_drop`` of the final exit's accuracy), the validation samples are
    routed, and the expected seconds per sample come from ``costs`` (:meth:`ExitCosts.exit_s`: the layers up to
    each sample's exit and the heads it passed). The cheapest subset wins (ties: fewer exits, then earlier).

    Returns:
        The chosen model (:meth:`MultiExitModel.with_exits`, its threshold set) and what was compared:
        ``exits_after``, ``threshold``, ``expected_s``, ``backbone_s`` (the backbone alone), ``cost_ratio``
        (expected over backbone), ``exit_histogram`` (validation samples per exit), and ``subsets`` (each
        subset's exits, threshold and cost ratio).

    Raises:
        CompressionError: the model is in training mode.
    """
    if estimate not in ESTIMATES:
        raise ConfigError(f"choose_exits: estimate must be one of {', '.join(ESTIMATES)}, not {estimate!r}")
    scores = _scores(_all_exit_logits(model, x_val), y_val, model.criterion, estimate)  # once, for every subset
    backbone_s = sum(costs.layer_s)
    tried = []
    for r in range(1, len(model.exits_after) + 1):
        for subset in itertools.combinations(range(len(model.exits_after)), r):
            cuts = [model.exits_after[i] for i in subset]
            kept = scores.only(subset)
            threshold = _threshold_for(kept, max_drop)
            exits = _exits(kept.conf, threshold)
            per_exit = costs.exit_s(cuts) if threshold < 1.0 else [backbone_s] * (len(cuts) + 1)
            expected = float(torch.tensor(per_exit, dtype=torch.float64)[exits].mean())
            histogram = torch.bincount(exits, minlength=len(cuts) + 1).tolist()
            tried.append((expected, len(cuts), cuts, threshold, histogram))
    expected, _, cuts, threshold, histogram = min(tried, key=lambda t: (t[0], t[1], t[2]))
    chosen = model.with_exits(cuts)
    chosen.threshold = threshold
    return chosen, {
        "exits_after": cuts, "threshold": threshold, "expected_s": expected, "backbone_s": backbone_s,
        "cost_ratio": expected / backbone_s if backbone_s else None, "exit_histogram": histogram,
        "subsets": [{"exits_after": c, "threshold": t, "cost_ratio": e / backbone_s if backbone_s else None}
                    for e, _, c, t, _ in sorted(tried, key=lambda t: (t[0], t[1], t[2]))],
        "cost_source": costs.source,
    }


# ------------------------------------------------------------------------------------------ recipe and facts

#: How many places ``early-exit:auto`` trains heads at before it keeps the cheapest subset.
AUTO_CANDIDATES = 5

_EXIT_HELP = ("T, the exit confidence threshold in (0, 1] (default 0.9), or 'auto' to calibrate it on val_data "
              "(accuracy within 0.5 points of the final exit)")


def _is_follower(module: nn.Module) -> bool:
    """A layer that belongs with the one before it (norm, activation, dropout): no exit goes in between."""
    kind = type(module).__name__
    return type(module).__module__ == "torch.nn.modules.activation" or kind.startswith(
        ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "Dropout", "LocalResponseNorm"))


def exit_positions(model: nn.Module, example_input: torch.Tensor, candidates: int = 0) -> list[int]:
    """Layer indices after which ``early-exit`` attaches heads: two cuts nearest 1/3 and 2/3 of the backbone's MACs.

    A cut may follow any layer of the ``nn.Sequential`` except the last, where the next layer is not a norm,
    activation or dropout layer (they belong to the layer before) and the features are ``[C, H, W]`` or
    ``[F]``. Of the possible pairs, the one whose cumulative MAC shares are closest (summed distance) to 1/3
    and 2/3 wins; MACs (Conv and Linear layers) are counted on one example sample, and a model without any
    uses the layer count. A model with a single possible cut gets one. Does not change ``model``.

    With ``candidates > 0``, every possible cut instead, or ``candidates`` of them nearest evenly spaced shares
    of the MACs when there are more: the places :func:`choose_exits` chooses from by measured cost.

    Raises:
        UnsupportedModelError: the model is not an ``nn.Sequential`` of at least two layers, or has no such cut.
    """
    if not isinstance(model, nn.Sequential) or len(model) < 2:
        what = f"a {len(model)}-layer nn.Sequential" if isinstance(model, nn.Sequential) else type(model).__name__
        raise UnsupportedModelError(f"recipe 'early-exit' cuts an nn.Sequential backbone of at least two layers "
                                    f"into blocks, and the model is {what}; build exits with EarlyExitConfig instead")
    macs = 0
    cumulative, dims = [], []

    def count(m: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        nonlocal macs
        conv = isinstance(m, nn.modules.conv._ConvNd)
        per_out = m.weight[0].numel() if conv else m.in_features  # type: ignore[union-attr, index]
        macs += int(out.numel() // out.shape[0]) * int(per_out)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        h = _on_device_of(model, example_input[:1])
        with torch.no_grad():
            for layer in model:
                h = layer(h)
                cumulative.append(macs)
                dims.append(h.dim() if isinstance(h, torch.Tensor) else 0)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.train(training)
    n = len(model)
    cuts = [i for i in range(n - 1) if dims[i] in (2, 4) and not _is_follower(model[i + 1])]
    if not cuts:
        raise UnsupportedModelError(
            f"recipe 'early-exit' found no place for an exit in this {n}-layer nn.Sequential: an exit needs [C, H, W] "
            "or [F] features after a layer that is not followed by its norm, activation or dropout layer")
    total = cumulative[-1]

    def share(i: int) -> float:
        return cumulative[i] / total if total else (i + 1) / n

    if candidates:  # every possible cut, at most ``candidates`` of them, spread evenly over the compute
        if len(cuts) <= candidates:
            return cuts
        marks = [(k + 1) / (candidates + 1) for k in range(candidates)]
        return sorted({min(cuts, key=lambda c: (abs(share(c) - m), c)) for m in marks})
    if len(cuts) == 1:
        return cuts
    pairs = itertools.combinations(cuts, 2)
    return list(min(pairs, key=lambda p: (abs(share(p[0]) - 1 / 3) + abs(share(p[1]) - 2 / 3), p)))


def _early_exit_arg(arg: str | None) -> float | str:
    """The recipe's argument: ``"auto"``, or the threshold in (0, 1] (0.9 when absent)."""
    if arg is not None and arg.lower() == "auto":
        return "auto"
    return recipe_number("early-exit", arg, 0.9, _EXIT_HELP, lambda v: 0 < v <= 1)


def _early_exit_recipe(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    value = _early_exit_arg(arg)
    auto = value == "auto"
    if auto and ctx.val_data is None:
        raise ConfigError("recipe 'early-exit:auto' calibrates the threshold on held-out data: give val_data "
                          "in the RecipeContext, or a threshold such as 'early-exit:0.9'")
    threshold = 0.9 if auto else float(value)
    # auto: heads at up to AUTO_CANDIDATES places, then the subset cheapest in measured time at batch 1
    exits = exit_positions(model, ctx.example_input, candidates=AUTO_CANDIDATES if auto else 0)
    train = ctx.trainer("early-exit", ctx.train_epochs)  # the heads are new: trained from scratch
    config = EarlyExitConfig(exits_after=exits, example_input=ctx.example_input[:1], threshold=threshold,
                             train_fn=lambda m, loss: train(m, loss), seed=ctx.seed)
    variant = compress(model, config)
    details: dict[str, Any] = {}
    if auto:
        variant.eval()
        costs = measure_exit_costs(variant, ctx.example_input, batch_size=1)
        info = variant.compression_info
        variant, choice_info = choose_exits(variant, *ctx.val_data, costs)  # type: ignore[misc]
        variant.compression_info = dataclasses.replace(info, details={  # the kept exits' figures, not the candidates'
            **info.details, "exits_after": list(variant.exits_after), "exit_macs": list(variant.exit_macs),
            "head_parameters": sum(p.numel() for p in variant.heads.parameters()), "threshold": variant.threshold})
        details = {"candidate_exits": exits, "chosen_by": "least expected time per sample at batch 1, measured here",
                   "expected_time_ratio": choice_info["cost_ratio"], "validation_exit_histogram":
                   choice_info["exit_histogram"], "cost_source": choice_info["cost_source"]}
        exits = choice_info["exits_after"]
    return variant, {"exits_after": exits, "threshold": variant.threshold, "calibrated": auto, **details,
                     **ctx.trainer_details(ctx.train_epochs)}


def _data_macs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DataMacs:
    """MACs per sample of early-exit inference on the evaluation data: they depend on where samples leave."""
    report = exit_report(model, x, y)
    return DataMacs(report["avg_macs"], "per-exit MAC counts averaged over the exits taken on the evaluation data",
                    f"exit histogram {report['exit_histogram']}")


# ------------------------------------------------------------------------------------------ method

@register_method("early_exit", EarlyExitConfig, facts=FactsHooks(data_macs=_data_macs, model_types=(MultiExitModel,)),
                 recipe=RecipeSpec(
    "early-exit", _early_exit_recipe, trains=True, arg_help=_EXIT_HELP, parse_arg=_early_exit_arg,
    description="early exits (heads trained, backbone frozen): after about 1/3 and 2/3 of the MACs, or with 'auto' "
                "the exits and threshold of least measured time at batch 1 within 0.5 pp on val_data"))
def _early_exit(model: nn.Module, config: EarlyExitConfig) -> tuple[nn.Module, dict[str, Any]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        multi = MultiExitModel(model, config.exits_after, config.example_input, config.threshold, config.criterion)
    if config.freeze_backbone:
        multi.freeze_backbone()
    weights = list(config.exit_weights) if config.exit_weights is not None else [1.0] * multi.num_exits
    loss_fn = _joint_loss(weights, config.self_distill)
    if config.train_fn is None:
        params = [p for p in multi.parameters() if p.requires_grad]
        history = fit(multi, loss_fn, params, config.data, config.epochs, config.lr, config.seed)
    else:
        config.train_fn(multi, loss_fn)
        history = []
    multi.eval()
    details = {
        "exits_after": list(multi.exits_after),
        "exit_weights": weights,
        "freeze_backbone": config.freeze_backbone,
        "self_distill": config.self_distill,
        "trainer": "built-in" if config.train_fn is None else "train_fn",
        "epoch_losses": history,
        "final_loss": history[-1] if history else None,
        "head_parameters": sum(p.numel() for p in multi.heads.parameters()),
        "exit_macs": list(multi.exit_macs),
        "full_macs": multi.full_macs,
        "threshold": multi.threshold,
        "criterion": multi.criterion,
    }
    return multi, details
