"""The bundled task: scikit-learn's digits, a fixed split, the baseline CNN and its training loop.

Tests, benchmarks, examples and ``greenmeter demo`` all use this one definition, so every figure is
about the same model and the same split. Data comes from scikit-learn's bundled copy (no download).

The images are 8x8 grey levels 0..16, scaled to [0, 1]. The split is stratified, 25% test, with
``random_state=0``: 1,347 training and 450 test images (one test image is 0.22 percentage points).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from greenmeter._errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "DigitsData", "accuracy", "batches", "eval_data", "load_digits_data", "make_digits_cnn", "train_classifier",
    "train_data", "train_fn", "trained_digits_cnn",
]


@dataclass(frozen=True)
class DigitsData:
    """The fixed digits split as tensors: images ``[N, 1, 8, 8]`` float32 in [0, 1], labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def validation_split(self, fraction: float = 0.2) -> tuple[DigitsData, DigitsData]:
        """Carve a validation set out of the training data (the last ``fraction``; deterministic).

        Returns ``(train_part, validation)`` where ``validation.x_test``/``y_test`` hold the held-out part.
        """
        n_val = int(len(self.x_train) * fraction)
        cut = len(self.x_train) - n_val
        train = DigitsData(self.x_train[:cut], self.y_train[:cut], self.x_test, self.y_test)
        val = DigitsData(self.x_train[:cut], self.y_train[:cut], self.x_train[cut:], self.y_train[cut:])
        return train, val


def load_digits_data(test_size: float = 0.25, random_state: int = 0) -> DigitsData:
    """Load scikit-learn's digits with the fixed stratified split (needs scikit-learn)."""
    import torch

    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:  # pragma: no cover - scikit-learn is a declared dependency

        raise ConfigError("the digits task needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    x = (bunch.images / 16.0).astype("float32")[:, None, :, :]
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, bunch.target, test_size=test_size, random_state=random_state, stratify=bunch.target
    )
    return DigitsData(
        torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(), torch.from_numpy(x_te), torch.from_numpy(y_te).long()
    )


def make_digits_cnn(width: float = 1.0, hidden: int = 128, seed: int | None = 0) -> nn.Module:
    """The baseline CNN: two conv blocks (conv, batch norm, ReLU), max-pool, a hidden Linear layer.

    Args:
        width: multiplier of the channel counts (32 and 64 at 1.0) and the hidden size.
        hidden: hidden Linear units at ``width=1``.
        seed: seed for the initial weights (``None`` keeps the global RNG state).
    """
    import torch
    from torch import nn

    if seed is not None:
        torch.manual_seed(seed)
    c1, c2, h = max(1, round(32 * width)), max(1, round(64 * width)), max(1, round(hidden * width))
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 4 * 4, h), nn.ReLU(),
        nn.Linear(h, 10),
    )


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int = 0):  # type: ignore[no-untyped-def]
    """Yield ``(x, y)`` mini-batches; shuffled with a fixed generator when asked."""
    import torch

    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def train_classifier(
    model: nn.Module, data: DigitsData, *, epochs: int = 30, lr: float = 3e-3, batch_size: int = 64,
    seed: int = 0, loss_fn: Callable[..., torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy (or ``loss_fn(model, x, y)``); returns it in eval mode.

    Args:
        on_step: called after each optimiser step with the batch size (e.g. ``meter.step``).
    """
    import torch
    from torch.nn import functional as F

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    for epoch in range(epochs):
        model.train()
        for xb, yb in batches(data.x_train, data.y_train, batch_size, shuffle=True, seed=seed * 1000 + epoch):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, xb, yb) if loss_fn is not None else F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(len(xb))
        sched.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1], in eval mode and without gradients (does not change ``model.training``)."""
    import torch

    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out = model(x[start:start + batch_size])
            logits = out[-1] if isinstance(out, (tuple, list)) else out
            correct += int((logits.argmax(dim=1) == y[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)


# -- entry points for `greenmeter compare` configs and the demo: import paths such as
#    "greenmeter.demo.digits:trained_digits_cnn" (each loads the same fixed split)

def eval_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed split's 450 test images and labels, for evaluation."""
    data = load_digits_data()
    return data.x_test, data.y_test


def train_data(batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The 1,347 training images as shuffled mini-batches (fixed order), for recipes that train."""
    data = load_digits_data()
    return list(batches(data.x_train, data.y_train, batch_size, shuffle=True, seed=0))


def trained_digits_cnn(epochs: int = 20, width: float = 1.0, seed: int = 0) -> nn.Module:
    """The baseline CNN trained on the training split (about 99% test accuracy at 20 epochs)."""
    return train_classifier(make_digits_cnn(width, seed=seed), load_digits_data(), epochs=epochs, seed=seed)


def train_fn(model: nn.Module, loss_fn: Callable[..., torch.Tensor] | None = None, epochs: int | None = None) -> None:
    """A trainer for recipes: trains ``model`` in place on the training split (default 5 epochs)."""
    train_classifier(model, load_digits_data(), epochs=5 if epochs is None else epochs, loss_fn=loss_fn)
