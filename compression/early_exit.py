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

import itertools
import math
from collections.abc import Callable, Sequence
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

__all__ = ["EarlyExitConfig", "MultiExitModel"]  # calibrate_threshold and exit_report: see the package's __all__

CRITERIA = ("max_softmax", "entropy")


def check_threshold(threshold: Any, criterion: Any, owner: str) -> None:
    """Check an exit criterion (one of ``CRITERIA``) and its confidence threshold, a number in (0, 1]."""
    choice(f"{owner}: criterion", criterion, CRITERIA)
    number(f"{owner}: threshold", threshold, low=0, high=1, low_open=True,
           note=f"for {criterion}; 1.0 = never exit early")


def confidence(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per-sample confidence in [0, 1]: max softmax probability, or 1 - entropy / ln(classes)."""
    probs = logits.float().softmax(dim=1)
    if criterion == "max_softmax":
        return probs.max(dim=1).values
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


def _make_head(features: torch.Tensor, classes: int, index: int) -> nn.Module:
    if features.dim() == 4:
        # A 4x4 average pool keeps coarse layout, which the shallow exits need (a global pool loses it).
        pool = (min(4, features.shape[2]), min(4, features.shape[3]))
        return nn.Sequential(nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(features.shape[1] * pool[0] * pool[1], classes))
    if features.dim() == 2:
        return nn.Linear(features.shape[1], classes)
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
        was = backbone.training
        backbone.eval()
        try:
            block_macs, features = [], []
            h = example_input[:1]
            for block in self.blocks:
                macs, h = _count_macs(block, h)
                block_macs.append(macs)
                features.append(h)
            if h.dim() != 2:
                raise UnsupportedModelError(f"early exit: the backbone's output has shape {tuple(h.shape[1:])}, not [classes]")
            device = next(backbone.parameters()).device
            self.heads = nn.ModuleList(
                _make_head(f, h.shape[1], cut).to(device) for f, cut in zip(features, cuts))
            head_macs = [_count_macs(head, f)[0] for head, f in zip(self.heads, features)]
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
        return self.forward_all(x) if self.training else self.infer(x)[0]

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
        n = x.shape[0]
        last = self.num_exits - 1
        h = x
        if threshold >= 1.0:  # nobody can exit early: the backbone alone, heads skipped
            for block in self.blocks:
                h = block(h)
            return h, torch.full((n,), last, dtype=torch.long, device=x.device)
        if n == 1:  # one sample: no bookkeeping of who is still running
            for k, block in enumerate(self.blocks):
                h = block(h)
                if k == last:
                    break
                out = self.heads[k](h)
                if bool(confidence(out, criterion) > threshold):
                    return out, torch.full((1,), k, dtype=torch.long, device=x.device)
            return h, torch.full((1,), last, dtype=torch.long, device=x.device)
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
            ``loss_fn(model, x, y) -> Tensor`` (e.g. ``greenmeter.demo.digits.train_classifier``). Give this or
            ``data``, not both.
        data: an iterable of ``(x, y)`` batches (re-iterated per epoch) or a callable returning one, for
            the built-in Adam loop.
        epochs, lr: of the built-in loop.
        exit_weights: weight of each exit's cross-entropy in the joint loss (one per exit, the final exit
            included); equal weights by default.
        freeze_backbone: train only the heads (the final exit stays exactly the original model); with
            ``False`` the backbone is trained too.
        threshold: exit confidence threshold in (0, 1] used by the returned model in eval mode.
        criterion: ``"max_softmax"`` or ``"entropy"``.
        seed: seed of the heads' initial weights and of the built-in loop.
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

    def __post_init__(self) -> None:
        if not isinstance(self.example_input, torch.Tensor) or self.example_input.dim() < 2 or len(self.example_input) < 1:
            raise ConfigError("EarlyExitConfig.example_input must be a tensor batch [N, ...] with N >= 1")
        _check_exits(self.exits_after, None)
        check_training_source(self.train_fn, self.data, self.epochs, self.lr, "EarlyExitConfig")
        check_threshold(self.threshold, self.criterion, "EarlyExitConfig")
        if self.exit_weights is not None:
            weights = list(self.exit_weights)
            if len(weights) != len(self.exits_after) + 1:
                raise ConfigError(
                    f"EarlyExitConfig.exit_weights needs {len(self.exits_after) + 1} weights (one per exit, the final "
                    f"exit included), got {len(weights)}")
            if any(not w >= 0 for w in weights) or not any(w > 0 for w in weights):
                raise ConfigError(f"EarlyExitConfig.exit_weights must be >= 0 and not all zero, got {weights}")


def _joint_loss(weights: Sequence[float]) -> Callable[..., torch.Tensor]:
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outs = model.forward_all(x)  # type: ignore[operator]
        return sum(w * F.cross_entropy(o, y) for w, o in zip(weights, outs) if w)  # type: ignore[return-value]

    return loss_fn


# ------------------------------------------------------------------------------------------ calibration and reports

def _all_exit_logits(model: Any, x: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
    if not isinstance(model, MultiExitModel):
        raise ConfigError(f"expected a MultiExitModel (from compress(..., EarlyExitConfig(...))), not {type(model).__name__}")
    if model.training:
        raise CompressionError("this needs the model in eval mode (batch norm, dropout): call model.eval() first")
    parts: list[list[torch.Tensor]] = [[] for _ in range(model.num_exits)]
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            for k, out in enumerate(model.forward_all(x[start:start + batch_size])):
                parts[k].append(out)
    return [torch.cat(p) for p in parts]


def _simulate(outs: list[torch.Tensor], threshold: float, criterion: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and exits that ``infer`` would give, from precomputed per-exit logits."""
    last = len(outs) - 1
    exit_index = torch.full((len(outs[0]),), last, dtype=torch.long)
    if threshold < 1.0:
        for k in range(last - 1, -1, -1):  # backwards, so the earliest confident exit wins
            exit_index[confidence(outs[k], criterion) > threshold] = k
    preds = torch.stack([o.argmax(dim=1) for o in outs], dim=1)
    return preds.gather(1, exit_index[:, None]).squeeze(1), exit_index


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
    outs = _all_exit_logits(model, x_val)
    y = y_val.to(outs[-1].device)
    final_right = (outs[-1].argmax(dim=1) == y).float()
    target = float(final_right.mean()) - max_drop
    p_right = None  # per sample and exit, the probability that the exit is right: temperature-scaled max softmax
    if estimate == "confidence":
        p_right = torch.stack([torch.softmax(o / fit_temperature(o, y), dim=1).amax(dim=1) for o in outs[:-1]]
                              + [final_right], dim=1)
    confs = torch.cat([confidence(o, criterion) for o in outs[:-1]]).unique()
    if len(confs) > 2000:  # large validation sets: an evenly spaced subset of the distinct confidences
        confs = confs[torch.linspace(0, len(confs) - 1, 2000).long()]
    candidates = sorted({1.0, *(c for c in confs.tolist() if c > 0.0)}, reverse=True)
    best = 1.0
    for t in candidates:
        preds, exits = _simulate(outs, t, criterion)  # type: ignore[arg-type]
        if float((preds == y).float().mean()) < target - 1e-9:
            break
        if p_right is not None and float(p_right.gather(1, exits[:, None]).mean()) < target - 1e-9:
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


# ------------------------------------------------------------------------------------------ recipe and facts

_EXIT_HELP = ("T, the exit confidence threshold in (0, 1] (default 0.9), or 'auto' to calibrate it on val_data "
              "(accuracy within 0.5 points of the final exit)")


def _is_follower(module: nn.Module) -> bool:
    """A layer that belongs with the one before it (norm, activation, dropout): no exit goes in between."""
    kind = type(module).__name__
    return type(module).__module__ == "torch.nn.modules.activation" or kind.startswith(
        ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "Dropout", "LocalResponseNorm"))


def exit_positions(model: nn.Module, example_input: torch.Tensor) -> list[int]:
    """Layer indices after which ``early-exit`` attaches heads: two cuts nearest 1/3 and 2/3 of the backbone's MACs.

    A cut may follow any layer of the ``nn.Sequential`` except the last, where the next layer is not a norm,
    activation or dropout layer (they belong to the layer before) and the features are ``[C, H, W]`` or
    ``[F]``. Of the possible pairs, the one whose cumulative MAC shares are closest (summed distance) to 1/3
    and 2/3 wins; MACs (Conv and Linear layers) are counted on one example sample, and a model without any
    uses the layer count. A model with a single possible cut gets one. Does not change ``model``.

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
        h = example_input[:1]
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
    exits = exit_positions(model, ctx.example_input)
    train = ctx.trainer("early-exit")
    config = EarlyExitConfig(exits_after=exits, example_input=ctx.example_input[:1], threshold=threshold,
                             train_fn=lambda m, loss: train(m, loss), seed=ctx.seed)
    variant = compress(model, config)
    if auto:
        variant.eval()
        variant.threshold = calibrate_threshold(variant, *ctx.val_data)  # type: ignore[misc]
    return variant, {"exits_after": exits, "threshold": variant.threshold, "calibrated": auto,
                     **ctx.trainer_details()}


def _data_macs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DataMacs:
    """MACs per sample of early-exit inference on the evaluation data: they depend on where samples leave."""
    report = exit_report(model, x, y)
    return DataMacs(report["avg_macs"], "per-exit MAC counts averaged over the exits taken on the evaluation data",
                    f"exit histogram {report['exit_histogram']}")


# ------------------------------------------------------------------------------------------ method

@register_method("early_exit", EarlyExitConfig, facts=FactsHooks(data_macs=_data_macs, model_types=(MultiExitModel,)),
                 recipe=RecipeSpec(
    "early-exit", _early_exit_recipe, trains=True, arg_help=_EXIT_HELP, parse_arg=_early_exit_arg,
    description="early exits after about 1/3 and 2/3 of the compute (heads trained, backbone frozen)"))
def _early_exit(model: nn.Module, config: EarlyExitConfig) -> tuple[nn.Module, dict[str, Any]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        multi = MultiExitModel(model, config.exits_after, config.example_input, config.threshold, config.criterion)
    if config.freeze_backbone:
        multi.freeze_backbone()
    weights = list(config.exit_weights) if config.exit_weights is not None else [1.0] * multi.num_exits
    loss_fn = _joint_loss(weights)
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
