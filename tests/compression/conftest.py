"""Shared fixtures for the compression tests: the fixed digits split and one trained baseline CNN."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from greenmeter.demo.digits import DigitsData, accuracy, load_digits_data, make_digits_cnn, train_classifier  # noqa: E402


@pytest.fixture(scope="session")
def digits() -> DigitsData:
    return load_digits_data()


@pytest.fixture(scope="session")
def _trained_baseline(digits: DigitsData) -> torch.nn.Module:
    torch.set_num_threads(2)
    model = make_digits_cnn(seed=0)
    train_classifier(model, digits, epochs=20, seed=0)
    assert accuracy(model, digits.x_test, digits.y_test) >= 0.97
    return model


@pytest.fixture
def baseline(_trained_baseline: torch.nn.Module) -> torch.nn.Module:
    """A fresh copy of the trained baseline (accuracy >= 97% on the fixed test split), in eval mode."""
    return copy.deepcopy(_trained_baseline).eval()
