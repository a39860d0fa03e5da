"""Metrics over every batch: functions on joined outputs, batch metric objects (the torchmetrics protocol)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from greenmeter._errors import ConfigError  # noqa: E402
from greenmeter.comparison.metrics import (  # noqa: E402
    accuracy_metric,
    check_metric,
    is_batch_metric,
    joined,
    metric_name,
    metric_value,
)


class TokenAccuracy:
    """Per-token accuracy over the real tokens (label -100 is padding), accumulated batch by batch: what a
    torchmetrics ``Metric`` does, without torchmetrics."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.right, self.total, self.updates = 0, 0, 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        real = targets != -100
        self.right += int((outputs.argmax(-1)[real] == targets[real]).sum())
        self.total += int(real.sum())
        self.updates += 1

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.right / self.total)


def _ragged() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-token logits of two batches padded to different lengths (4 and 6 tokens), and their token labels."""
    outs = [torch.zeros(2, 4, 3), torch.zeros(2, 6, 3)]
    outs[0][..., 1] = 1.0  # predicts class 1 everywhere
    outs[1][..., 2] = 1.0  # predicts class 2 everywhere
    targets = [torch.tensor([[1, 1, 0, -100], [1, -100, -100, -100]]),
               torch.tensor([[2, 2, 2, 2, 2, 0], [2, 1, -100, -100, -100, -100]])]
    return outs, targets


def test_a_batch_metric_is_reset_fed_each_batch_and_computed() -> None:
    metric = TokenAccuracy()
    metric.right = 99  # left over from another use: reset first
    outs, targets = _ragged()
    value = metric_value(metric, outs, targets)
    assert metric.updates == 2
    assert float(value) == pytest.approx(9 / 12)  # batch 0: 3 of 4 real tokens right; batch 1: 6 of 8
    assert is_batch_metric(metric) and not is_batch_metric(accuracy_metric)


def test_a_function_metric_on_outputs_of_different_shapes_is_told_to_pass_a_batch_metric() -> None:
    outs, targets = _ragged()
    with pytest.raises(ConfigError) as err:
        metric_value(lambda o, t: 0.0, outs, targets)
    message = str(err.value)
    assert "the outputs differ in shape between batches ((2, 4, 3) in batch 0, (2, 6, 3) in batch 1)" in message
    assert "reset(), update(outputs, targets) and compute()" in message


def test_a_function_metric_sees_every_batch_joined() -> None:
    outs = [torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    targets = [torch.tensor([1, 1]), torch.tensor([1])]
    assert metric_value(None, outs, targets) == pytest.approx(2 / 3)
    assert joined([[1, 2], (3,)], "targets") == [1, 2, 3]
    with pytest.raises(ConfigError, match="the targets of the batches \\(dict\\) cannot be joined"):
        joined([{"a": 1}], "targets")


def test_a_metric_that_is_neither_is_refused_and_names_come_from_the_metric() -> None:
    with pytest.raises(ConfigError, match="metric must be a function metric\\(outputs, targets\\) -> float, or an "
                                          "object with reset\\(\\)"):
        check_metric(42)
    check_metric(TokenAccuracy())
    assert metric_name(TokenAccuracy(), None) == "TokenAccuracy"
    assert metric_name(accuracy_metric, None) == "accuracy_metric"
    assert metric_name(None, None) == "accuracy" and metric_name(None, "top-1") == "top-1"
