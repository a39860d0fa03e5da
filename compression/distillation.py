"""Knowledge distillation: the Hinton loss, hint (feature) distillation, and thinner- and shallower-student makers.

The model given to ``compress`` is the **student**; the teacher travels in the config::

    student = make_student(teacher, width=0.45)
    small = compress(student, DistillConfig(teacher=teacher,
                     train_fn=lambda m, loss: train_classifier(m, data, loss_fn=loss)))

Training runs either in the user's ``train_fn(student, loss_fn)`` (``loss_fn(student, x, y)`` is the
distillation loss, so it plugs into any loop that takes a loss function; ``x`` is the batch's inputs, a tensor,
a tuple or a dict, and teacher and student are called on it as ``compare`` calls a model) or in a plain Adam
loop over ``data``. The teacher runs in eval mode without gradients; its weights and mode are left as they were.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenmeter._checks import fraction, number, text, whole_number
from greenmeter._errors import CompressionError, ConfigError, UnsupportedModelError
from greenmeter.compression._core import compress
from greenmeter.compression.registry import RecipeSpec, recipe_number, register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from greenmeter.comparison.recipes import RecipeContext

__all__ = ["DistillConfig", "hinton_loss", "make_shallow_student", "make_student"]


def hinton_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
    temperature: float = 4.0, alpha: float = 0.9,
) -> torch.Tensor:
    """The Hinton et al. (2015) distillation loss, a scalar tensor.

    ``alpha * T**2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, targets)``,
    the KL divergence averaged over the batch (``batchmean``). The ``T**2`` factor keeps the soft term's
    gradients on the same scale as the hard term's whatever the temperature.

    Args:
        student_logits: ``[N, C]`` raw scores of the student.
        teacher_logits: ``[N, C]`` raw scores of the teacher (treated as constants).
        targets: ``[N]`` class indices.
        temperature: softening temperature ``T > 0``.
        alpha: weight of the soft (teacher) term in ``[0, 1]``.
    """
    from torch.nn import functional as F

    temperature = number("temperature", temperature, low=0, low_open=True)
    alpha = fraction("alpha", alpha)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=1),
        reduction="batchmean", log_target=True,
    )
    hard = F.cross_entropy(student_logits, targets)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


# ---------------------------------------------------------------------------------------- student

_SHAPELESS = (
    "ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "ELU", "Tanh", "Sigmoid", "Hardswish", "Mish", "Identity",
    "Dropout", "Dropout2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
)


def make_student(model: nn.Module, width: float, seed: int | None = 0) -> nn.Module:
    """A thinner, freshly initialised copy of an ``nn.Sequential`` model; ``model`` is not changed.

    Every hidden channel and feature count is multiplied by ``width`` (rounded, at least 1); the input
    channels/features and the last layer's output size are kept. The ``in_features`` of a Linear after a
    ``Flatten`` is rescaled by the ratio of new to old channels (the spatial size is unchanged). Parameters
    shrink by about ``width**2``.

    Args:
        model: an ``nn.Sequential`` of Conv2d, BatchNorm1d/2d, Linear, Flatten, activations, dropout and
            pooling layers.
        width: the multiplier, ``> 0``.
        seed: seed for the new weights (``None`` keeps the global RNG state).

    Raises:
        ConfigError: ``width`` is not positive.
        UnsupportedModelError: the model is not an ``nn.Sequential`` or holds another kind of layer.
    """
    import copy

    import torch
    from torch import nn

    number("make_student: width", width, low=0, low_open=True)
    if not isinstance(model, nn.Sequential):
        raise UnsupportedModelError(f"make_student needs an nn.Sequential model, not {type(model).__name__}")
    layers = list(model.named_children())
    weighted = [i for i, (_, m) in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not weighted:
        raise UnsupportedModelError("make_student: the model has no Conv2d or Linear layer to make thinner")
    last = weighted[-1]
    ref = next(model.parameters())
    if seed is not None:
        torch.manual_seed(seed)

    def scaled(n: int) -> int:
        return max(1, round(n * width))

    old_c: int | None = None  # current channel/feature count in the teacher and in the student
    new_c: int | None = None
    flat_from: tuple[int, int] | None = None  # (old, new) channels at the last Flatten
    out = []
    for i, (name, m) in enumerate(layers):
        kind = type(m).__name__
        if isinstance(m, nn.Conv2d):
            c_in = m.in_channels if new_c is None else new_c
            if old_c is not None and old_c != m.in_channels:
                raise UnsupportedModelError(f"make_student: layer {name} (Conv2d) expects {m.in_channels} channels, gets {old_c}")
            c_out = m.out_channels if i == last else scaled(m.out_channels)
            if m.groups == 1:
                groups = 1
            elif m.groups == m.in_channels == m.out_channels:  # depthwise stays depthwise
                c_out = groups = c_in
            else:
                raise UnsupportedModelError(f"make_student: layer {name} (Conv2d with groups={m.groups}) is not supported")
            new = nn.Conv2d(c_in, c_out, m.kernel_size, m.stride, m.padding, m.dilation, groups, m.bias is not None,
                            m.padding_mode)
            old_c, new_c = m.out_channels, c_out
        elif isinstance(m, nn.Linear):
            if flat_from is not None:
                f_old, f_new = flat_from
                if m.in_features % f_old:
                    raise UnsupportedModelError(
                        f"make_student: layer {name} (Linear) has {m.in_features} inputs, not a multiple of the "
                        f"{f_old} channels before Flatten")
                f_in = m.in_features // f_old * f_new
                flat_from = None
            else:
                f_in = m.in_features if new_c is None else new_c
            f_out = m.out_features if i == last else scaled(m.out_features)
            new = nn.Linear(f_in, f_out, bias=m.bias is not None)
            old_c, new_c = m.out_features, f_out
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            feats = m.num_features if new_c is None else new_c
            extra = {"bias": False} if m.affine and getattr(m, "bias", True) is None else {}  # torch >= 2.12
            new = type(m)(feats, m.eps, m.momentum, m.affine, m.track_running_stats, **extra)
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1:
                raise UnsupportedModelError(f"make_student: layer {name} (Flatten with start_dim={m.start_dim}) is not supported")
            if old_c is not None:
                flat_from = (old_c, new_c)  # type: ignore[assignment]
            new = copy.deepcopy(m)
        elif kind in _SHAPELESS:
            new = copy.deepcopy(m)
        else:
            raise UnsupportedModelError(f"make_student does not support layer {name} ({kind})")
        out.append((name, new))
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(out)).to(device=ref.device, dtype=ref.dtype)


def _block_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's longest ``nn.ModuleList`` of two or more blocks of one class (ties: the most parameters)."""
    from torch import nn

    stacks = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(b) for b in m}) == 1]
    if not stacks:
        raise UnsupportedModelError(
            f"distillation makes a student thinner (an nn.Sequential of Conv2d and Linear layers, make_student) or "
            f"shallower (a model with an nn.ModuleList of repeated blocks, such as a transformer's layers, "
            f"make_shallow_student); {type(model).__name__} is neither: pass a student of your own to "
            "compress(student, DistillConfig(teacher=...))")
    return max(stacks, key=lambda s: (len(s[1]), sum(p.numel() for p in s[1].parameters())))


def make_shallow_student(model: nn.Module, depth: float) -> tuple[nn.Module, dict[str, Any]]:
    """A shallower copy of ``model``, initialised from it; ``model`` is not changed.

    The model's stack of repeated blocks (its longest ``nn.ModuleList`` of two or more blocks of one class: an
    ``nn.TransformerEncoder``'s ``layers``, a Hugging Face encoder's ``encoder.layer``) keeps ``max(1, round(n x
    depth))`` of its ``n`` blocks, evenly spaced and ending with the last (6 blocks at 0.5 keep blocks 1, 3 and
    5), each a copy of the teacher's, as DistilBERT's student starts from every other layer of BERT. A layer count
    stored beside the stack (``num_layers`` of ``nn.TransformerEncoder``; ``num_hidden_layers``, ``num_layers``
    or ``n_layer`` of a ``config``) is set to the new count, and a block's ``layer_idx`` (by which a Hugging Face
    decoder's key-value cache finds its layer) to its new position.

    Args:
        model: the teacher.
        depth: the fraction of blocks kept, in ``(0, 1]``.

    Returns:
        The student and what was done: ``{"stack": name, "blocks": n, "kept_blocks": [indices]}``.

    Raises:
        ConfigError: ``depth`` is not in ``(0, 1]``.
        UnsupportedModelError: the model has no stack of two or more repeated blocks.
    """
    import copy

    from torch import nn

    fraction("make_shallow_student: depth", depth, low_open=True)
    name, stack = _block_stack(model)
    n = len(stack)
    k = max(1, round(n * depth))
    kept = sorted({round((i + 1) * n / k) - 1 for i in range(k)})
    student = copy.deepcopy(model)
    parent_name, _, attr = name.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    blocks = nn.ModuleList([getattr(parent, attr)[i] for i in kept])
    setattr(parent, attr, blocks)
    for position, block in enumerate(blocks):  # a decoder's key-value cache is indexed by its blocks' layer_idx
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position
    for module in student.modules():
        if isinstance(getattr(module, "num_layers", None), int) and module.num_layers == n:
            module.num_layers = len(kept)
        config = getattr(module, "config", None)
        for key in ("num_hidden_layers", "num_layers", "n_layer"):
            if config is not None and isinstance(getattr(config, key, None), int) and getattr(config, key) == n:
                setattr(config, key, len(kept))
    return student, {"stack": name, "blocks": n, "kept_blocks": kept}


# ----------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class DistillConfig:
    """Train the model given to ``compress`` (the student) from ``teacher``.

    Args:
        teacher: the trained teacher module (left unchanged; run in eval mode without gradients).
        train_fn: ``train_fn(student, loss_fn)`` trains the student in place with
            ``loss_fn(student, x, y) -> Tensor``, ``x`` the batch's inputs (a tensor, a tuple or a dict) and
            ``y`` its targets (e.g. ``greenmeter.demo.digits.train_classifier(m, data, loss_fn=loss_fn)``). Give
            this or ``data``, not both.
        data: an iterable of batches (re-iterated each epoch) or a callable returning a fresh iterable per
            epoch, for the built-in Adam loop (cosine learning-rate decay): ``(inputs, targets)`` pairs, the
            inputs a tensor or a tuple of tensors (``model(*inputs)``), or dicts with the targets under
            ``target_key`` (``model(**rest)``).
        epochs: epochs of the built-in loop (ignored with ``train_fn``).
        lr: Adam learning rate of the built-in loop and of the hint regressors.
        temperature: softening temperature of the Hinton loss, ``> 0``.
        alpha: weight of the soft (teacher) term, in ``[0, 1]``.
        hints: student module name -> teacher module name (names as in ``named_modules()``): the
            student's output there is regressed onto the teacher's (mean squared error), through a learned
            1x1 convolution (4-D features) or Linear layer (2-D features) when the widths differ.
        hint_weight: weight of the summed hint losses, ``>= 0``.
        seed: seed of the built-in loop and of the hint regressors' initial weights.
        target_key: the key of the targets in dict batches of ``data``.
    """

    teacher: nn.Module
    train_fn: Callable[[nn.Module, Callable[..., Any]], Any] | None = None
    data: Iterable[Any] | Callable[[], Iterable[Any]] | None = None
    epochs: int = 20
    lr: float = 3e-3
    temperature: float = 4.0
    alpha: float = 0.9
    hints: Mapping[str, str] | None = None
    hint_weight: float = 1.0
    seed: int = 0
    target_key: str = "labels"

    def __post_init__(self) -> None:
        from torch import nn

        text("DistillConfig.target_key", self.target_key)
        if not isinstance(self.teacher, nn.Module):
            raise ConfigError(f"DistillConfig.teacher must be a torch.nn.Module, not {type(self.teacher).__name__}")
        check_training_source(self.train_fn, self.data, self.epochs, self.lr, "DistillConfig")
        number("DistillConfig.temperature", self.temperature, low=0, low_open=True)
        fraction("DistillConfig.alpha", self.alpha)
        number("DistillConfig.hint_weight", self.hint_weight, low=0)
        if self.hints is not None:
            if not isinstance(self.hints, Mapping) or not self.hints:
                raise ConfigError("DistillConfig.hints must be a non-empty mapping of student -> teacher module names")
            teacher_names = dict(self.teacher.named_modules())
            for s_name, t_name in self.hints.items():
                if t_name not in teacher_names or t_name == "":
                    raise ConfigError(f"DistillConfig.hints: the teacher has no module named {t_name!r} (hint for {s_name!r})")


def check_training_source(train_fn: Any, data: Any, epochs: Any, lr: Any, owner: str) -> None:
    """Validate the ``train_fn``/``data``/``epochs``/``lr`` fields shared by the training configs."""
    if (train_fn is None) == (data is None):
        raise ConfigError(f"{owner} needs exactly one of train_fn (your training loop) or data (batches for the built-in loop)")
    if train_fn is not None and not callable(train_fn):
        raise ConfigError(f"{owner}.train_fn must be callable as train_fn(model, loss_fn)")
    whole_number(f"{owner}.epochs", epochs, minimum=1)
    number(f"{owner}.lr", lr, low=0, low_open=True)
    if data is not None and not callable(data):
        if not isinstance(data, Iterable):
            raise ConfigError(f"{owner}.data must be an iterable of batches ((inputs, targets) pairs or dicts) or a "
                              "callable returning one")
        if iter(data) is data and epochs > 1:
            raise ConfigError(
                f"{owner}.data is a one-shot iterator but epochs={epochs}; pass a list of batches or a callable "
                "returning a fresh iterable per epoch"
            )


def fit(model: nn.Module, loss_fn: Callable[..., torch.Tensor], params: list[torch.nn.Parameter],
        data: Any, epochs: int, lr: float, seed: int, target_key: str | None = None) -> list[float]:
    """The built-in loop: Adam with cosine decay over ``data`` for ``epochs``; returns each epoch's mean loss.

    Trains ``model`` in place and leaves it in eval mode. Each batch is read as ``compare`` reads one
    (:func:`greenmeter.comparison.batches.read_batch`), its tensors put on the model's device
    (:func:`greenmeter.comparison.batches.model_device`), and handed to ``loss_fn(model, inputs, targets)``.

    Args:
        model: the module trained (its mode is set to train for the loop, eval after).
        loss_fn: ``loss_fn(model, x, y) -> scalar tensor``, ``x`` the batch's inputs (a tensor, a tuple or a
            dict: call the model with :func:`greenmeter.comparison.batches.call_model`), ``y`` its targets.
        params: the parameters Adam updates.
        data: re-iterable batches, or a callable returning a fresh iterable per epoch: ``(inputs, targets)``
            pairs, or mappings with the targets under ``target_key`` and the model's keyword inputs as the rest.
        epochs: passes over ``data``.
        lr: Adam's initial learning rate.
        seed: the seed set before training.
        target_key: the key of the targets in mapping batches; ``None``: ``"labels"``
            (:data:`greenmeter.comparison.batches.DEFAULT_TARGET_KEY`).

    Returns:
        Each epoch's mean loss over its steps.

    Raises:
        ConfigError: a batch it cannot read, naming its structure and the option that fixes it (``target_key``);
            an epoch with no batches.
    """
    import torch

    from greenmeter.comparison.batches import DEFAULT_TARGET_KEY, model_device, read_batch, to_device

    target_key = DEFAULT_TARGET_KEY if target_key is None else target_key
    device = model_device(model)

    torch.manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    history = []
    for epoch in range(epochs):
        model.train()
        total, steps = 0.0, 0
        for index, item in enumerate(data() if callable(data) else data):
            xb, yb = read_batch(item, index, target_key)
            xb, yb = to_device(xb, device), to_device(yb, device)  # data may stay on the CPU for a model on a GPU
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, xb, yb)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        if steps == 0:
            raise ConfigError(f"data yielded no batches in epoch {epoch}")
        sched.step()
        history.append(total / steps)
    model.eval()
    return history


# ------------------------------------------------------------------------------------------ hints

class _HintTaps:
    """Forward hooks that keep the latest output of named modules (removed by ``close``)."""

    def __init__(self, model: nn.Module, names: Iterable[str], who: str) -> None:
        modules = dict(model.named_modules())
        self.out: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in names:
            if name not in modules or name == "":
                raise ConfigError(f"DistillConfig.hints: the {who} has no module named {name!r}")
            self._handles.append(modules[name].register_forward_hook(self._keeper(name)))

    def _keeper(self, name: str) -> Callable[..., None]:
        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            self.out[name] = output
        return keep

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _make_regressor(s_name: str, t_name: str, s_feat: torch.Tensor, t_feat: torch.Tensor) -> nn.Module:
    from torch import nn

    if s_feat.dim() != t_feat.dim() or s_feat.dim() not in (2, 4) or s_feat.shape[2:] != t_feat.shape[2:]:
        raise UnsupportedModelError(
            f"distillation hint {s_name!r} -> {t_name!r}: feature shapes {tuple(s_feat.shape[1:])} and "
            f"{tuple(t_feat.shape[1:])} cannot be matched (needs 2-D or 4-D features with equal spatial sizes)"
        )
    if s_feat.shape[1] == t_feat.shape[1]:
        return nn.Identity()
    if s_feat.dim() == 4:
        return nn.Conv2d(s_feat.shape[1], t_feat.shape[1], kernel_size=1)
    return nn.Linear(s_feat.shape[1], t_feat.shape[1])


class _DistillLoss:
    """``loss_fn(student, x, y)``: Hinton loss plus weighted hint losses; records per-step values.

    ``x`` is a batch's inputs (a tensor, a tuple or a dict); teacher and student are called on it with
    :func:`~greenmeter.comparison.batches.call_model` and their outputs reduced to logits with
    :func:`~greenmeter.comparison.batches.default_output` (a Hugging Face ``ModelOutput`` gives its ``.logits``).

    Hint regressors are sized from the first batch's features and trained by their own Adam, stepped at
    the start of the next call (after the caller's backward), so a user's optimiser over the student's
    parameters alone is enough.
    """

    def __init__(self, config: DistillConfig, s_taps: _HintTaps | None, t_taps: _HintTaps | None) -> None:
        self.config, self.s_taps, self.t_taps = config, s_taps, t_taps
        self.regressors: dict[str, nn.Module] = {}
        self.losses: list[float] = []
        self.hint_losses: list[float] = []
        self._reg_opt: torch.optim.Optimizer | None = None

    def _build_regressors(self, device: torch.device) -> None:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            for s_name, t_name in self.config.hints.items():  # type: ignore[union-attr]
                reg = _make_regressor(s_name, t_name, self.s_taps.out[s_name], self.t_taps.out[t_name])  # type: ignore[union-attr]
                self.regressors[s_name] = reg.to(device)
        params = [p for r in self.regressors.values() for p in r.parameters()]
        self._reg_opt = torch.optim.Adam(params, lr=self.config.lr) if params else None

    def step_regressors(self) -> None:
        """Apply the gradients the last backward left on the regressors (a no-op when there are none)."""
        if self._reg_opt is not None:
            params = [p for g in self._reg_opt.param_groups for p in g["params"]]
            if any(p.grad is not None for p in params):
                self._reg_opt.step()
                self._reg_opt.zero_grad(set_to_none=True)

    def __call__(self, student: nn.Module, x: Any, y: torch.Tensor) -> torch.Tensor:
        import torch
        from torch.nn import functional as F

        from greenmeter.comparison.batches import call_model, default_output

        self.step_regressors()
        with torch.no_grad():
            t_logits = default_output(call_model(self.config.teacher, x))
        s_logits = default_output(call_model(student, x))
        loss = hinton_loss(s_logits, t_logits, y, self.config.temperature, self.config.alpha)
        if self.config.hints:
            if not self.regressors:
                self._build_regressors(s_logits.device)
            hint = sum(
                F.mse_loss(reg(self.s_taps.out[s]), self.t_taps.out[self.config.hints[s]].detach())  # type: ignore[union-attr]
                for s, reg in self.regressors.items()
            )
            self.hint_losses.append(float(hint.detach()))  # type: ignore[union-attr]
            loss = loss + self.config.hint_weight * hint
        self.losses.append(float(loss.detach()))
        return loss


def _window_mean(values: list[float], window: int, last: bool) -> float | None:
    if not values:
        return None
    part = values[-window:] if last else values[:window]
    return sum(part) / len(part)


_DISTILL_HELP = ("W, the student's size relative to the baseline, in (0, 1] (default 0.5): its width for an "
                 "nn.Sequential, else its number of blocks in the model's stack of repeated blocks")


_distill_arg = functools.partial(recipe_number, "distill", default=0.5, expected=_DISTILL_HELP, ok=lambda v: 0 < v <= 1)


def _distill_recipe(model: nn.Module, arg: str | None, ctx: RecipeContext) -> tuple[nn.Module, dict[str, Any]]:
    from torch import nn

    w = _distill_arg(arg)
    # model is build_variant's copy: the teacher stays unchanged. A Sequential gets a thinner, new student; another
    # model a shallower one, initialised from its blocks
    if isinstance(model, nn.Sequential):
        student, shape = make_student(model, w, seed=ctx.seed), {"width": w}
    else:
        student, stack = make_shallow_student(model, w)
        shape = {"depth": w, **stack}
    # in a stacked recipe the teacher is the baseline (ctx.teacher), the student a smaller copy of this step's input
    teacher = model if ctx.teacher is None else ctx.teacher
    train = ctx.trainer("distill", ctx.train_epochs)
    config = DistillConfig(teacher=teacher, train_fn=lambda m, loss: train(m, loss), seed=ctx.seed)
    return compress(student, config), {**shape, **ctx.trainer_details(ctx.train_epochs)}


@register_method("distillation", DistillConfig, recipe=RecipeSpec(
    "distill", _distill_recipe, trains=True, arg_help=_DISTILL_HELP, parse_arg=_distill_arg,
    description="knowledge distillation into a thinner (nn.Sequential) or shallower (a stack of blocks) student"))
def _distill(student: nn.Module, config: DistillConfig) -> tuple[nn.Module, dict[str, Any]]:
    teacher = config.teacher
    teacher_was_training = teacher.training
    s_taps = t_taps = None
    own = config.train_fn is None
    try:
        teacher.eval()
        if config.hints:
            s_taps = _HintTaps(student, config.hints.keys(), "student")
            t_taps = _HintTaps(teacher, config.hints.values(), "teacher")
        loss_fn = _DistillLoss(config, s_taps, t_taps)
        if own:
            history = fit(student, loss_fn, list(student.parameters()), config.data, config.epochs, config.lr,
                          config.seed, config.target_key)
            window = max(1, len(loss_fn.losses) // config.epochs)
        else:
            config.train_fn(student, loss_fn)  # type: ignore[misc]
            history, window = [], max(1, len(loss_fn.losses) // 10)
            student.eval()
        loss_fn.step_regressors()
        if not loss_fn.losses:
            raise CompressionError("distillation: train_fn never called the distillation loss_fn it was given")
    finally:
        teacher.train(teacher_was_training)
        for taps in (s_taps, t_taps):
            if taps is not None:
                taps.close()
    details: dict[str, Any] = {
        "trainer": "built-in" if own else "train_fn",
        "epochs": config.epochs if own else None,
        "steps": len(loss_fn.losses),
        "final_loss": _window_mean(loss_fn.losses, window, last=True),
        "epoch_losses": history,
        "temperature": config.temperature,
        "alpha": config.alpha,
        "hint_layers": [f"{s}->{t}" for s, t in (config.hints or {}).items()],
        "hint_regressors": {s: type(r).__name__ for s, r in loss_fn.regressors.items()},
        "hint_loss_initial": _window_mean(loss_fn.hint_losses, window, last=False),
        "hint_loss_final": _window_mean(loss_fn.hint_losses, window, last=True),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
    }
    return student, details
