"""The metric of a comparison: how a variant's outputs on every batch become one number.

Two kinds of metric are accepted as ``metric=`` (higher is better):

* a function ``metric(outputs, targets) -> float``, given every batch's outputs and targets joined into one
  tensor each (the built-in :func:`accuracy_metric` is one); outputs whose shapes differ between batches (per-token
  outputs of dynamically padded batches) cannot be joined, and such a metric is refused with a message saying so;
* an object with ``reset()``, ``update(outputs, targets)`` and ``compute()`` (the protocol of a torchmetrics
  ``Metric``, recognised by its methods, so torchmetrics is not needed): reset, fed batch by batch, then
  computed (:func:`is_batch_metric`). Its outputs never need to be joined.

:func:`metric_value` evaluates either kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from greenmeter._errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["BATCH_METRIC_METHODS", "Metric", "accuracy_metric", "check_metric", "correct_predictions",
           "is_batch_metric", "joined", "metric_name", "metric_value"]

#: A metric function over all the data, or a batch metric object (see the module docstring).
Metric = Any
#: The methods that make an object a batch metric (the torchmetrics protocol).
BATCH_METRIC_METHODS = ("reset", "update", "compute")


def is_batch_metric(metric: Any) -> bool:
    """Whether ``metric`` is fed batch by batch: it has callable ``reset``, ``update`` and ``compute``."""
    return all(callable(getattr(metric, name, None)) for name in BATCH_METRIC_METHODS)


def check_metric(metric: Any) -> None:
    """Check ``metric=``: ``None``, a function ``metric(outputs, targets)`` or a batch metric object.

    Raises:
        ConfigError: anything else.
    """
    if metric is not None and not callable(metric) and not is_batch_metric(metric):
        raise ConfigError(f"metric must be a function metric(outputs, targets) -> float, or an object with reset(), "
                          f"update(outputs, targets) and compute() (a torchmetrics Metric), not {metric!r}")


def metric_name(metric: Any, given: str | None) -> str:
    """The metric's name in the results: ``given``, else ``"accuracy"`` for the built-in one, else the function's
    (or the batch metric's class) name."""
    if given:
        return given
    if metric is None:
        return "accuracy"
    name = getattr(metric, "__name__", None)
    if not name and is_batch_metric(metric):
        name = type(metric).__name__
    return str(name or "metric")


def correct_predictions(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Whether each sample's top-1 class is its label: a bool tensor (N,) from logits (N, classes) and labels (N,).

    Raises:
        ConfigError: the outputs are not (N, classes) logits.
    """
    if outputs.ndim != 2:
        raise ConfigError(f"the accuracy metric needs (N, classes) logits, got outputs of shape "
                          f"{tuple(outputs.shape)}; pass metric= for other outputs")
    return outputs.argmax(dim=1) == targets.to(outputs.device)


def accuracy_metric(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy, a fraction in [0, 1], of logits ``outputs`` (N, classes) against labels (N,)."""
    return float(correct_predictions(outputs, targets).float().mean())


def joined(parts: Sequence[Any], what: str = "outputs") -> Any:
    """Every batch's ``parts`` as one: tensors concatenated along the first dimension, lists and tuples chained.

    Args:
        parts: one item per batch.
        what: ``"outputs"`` or ``"targets"``, for the message.

    Raises:
        ConfigError: tensors whose shapes differ beyond the first dimension (naming the batches and saying to pass
            a batch metric), or items that are neither tensors nor sequences.
    """
    import torch

    if parts and all(isinstance(p, torch.Tensor) for p in parts):
        shapes = [tuple(p.shape[1:]) for p in parts]
        if any(p.dim() == 0 for p in parts) or len(set(shapes)) > 1:
            odd = next(i for i, p in enumerate(parts) if p.dim() == 0 or tuple(p.shape[1:]) != shapes[0])
            raise ConfigError(
                f"the {what} differ in shape between batches ({tuple(parts[0].shape)} in batch 0, "
                f"{tuple(parts[odd].shape)} in batch {odd}), so a metric(outputs, targets) cannot see them as one "
                "tensor: pass metric= an object with reset(), update(outputs, targets) and compute() (a torchmetrics "
                "Metric), fed batch by batch, or an output_fn= that gives every batch the same shape per sample")
        return torch.cat(list(parts))
    if parts and all(isinstance(p, (list, tuple)) for p in parts):
        return [x for p in parts for x in p]
    kinds = ", ".join(sorted({type(p).__name__ for p in parts})) or "nothing"
    raise ConfigError(f"the {what} of the batches ({kinds}) cannot be joined into one for a metric(outputs, targets): "
                      "give tensors, or pass metric= an object with reset(), update(outputs, targets) and compute()")


def metric_value(metric: Any, outputs: Sequence[Any], targets: Sequence[Any]) -> Any:
    """The metric over every batch: a batch metric reset, updated with each batch's outputs and targets, and
    computed; a function given the joined outputs and targets (:func:`joined`). The value is returned as the
    metric gives it (a float, or a 0-d tensor from a torchmetrics metric).

    Args:
        metric: a function ``metric(outputs, targets)``, a batch metric object, or ``None`` for top-1 accuracy.
        outputs: each batch's output tensor.
        targets: each batch's targets, in the same order.

    Raises:
        ConfigError: a function metric on outputs or targets that cannot be joined.
    """
    if metric is not None and is_batch_metric(metric):
        metric.reset()
        for out, target in zip(outputs, targets):
            metric.update(out, target)
        return metric.compute()
    fn = metric or accuracy_metric
    return fn(joined(outputs, "outputs"), joined(targets, "targets"))
