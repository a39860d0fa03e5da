"""Threshold calibration and accuracy/cost reports for early-exit models (see ``early_exit``).

Both work from per-exit logits computed once, so scanning many thresholds costs one forward pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from greenmeter._errors import CompressionError, ConfigError
from greenmeter.compression.early_exit import MultiExitModel, check_threshold, confidence

__all__ = ["ESTIMATES", "calibrate_threshold", "exit_report", "fit_temperature"]


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
