"""Shared fixtures for the comparison tests: the digits split, one trained baseline and a one-epoch trainer."""

from __future__ import annotations

from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from greenmeter.demo.digits import DigitsData, load_digits_data, make_digits_cnn, train_classifier  # noqa: E402


@pytest.fixture(scope="session")
def digits() -> DigitsData:
    return load_digits_data()


@pytest.fixture(scope="session")
def trained(digits: DigitsData) -> torch.nn.Module:
    """The digits CNN trained 4 epochs (seed 0). Shared by the session: tests must not change it (the functions
    under test never change their baseline, and tests check that)."""
    torch.set_num_threads(2)
    return train_classifier(make_digits_cnn(seed=0), digits, epochs=4, seed=0)


@pytest.fixture(scope="session")
def one_epoch_trainer(digits: DigitsData) -> Callable[..., None]:
    """A ``train_fn`` for recipes: one epoch on the digits training images, whatever ``epochs`` they ask for."""

    def train(model: torch.nn.Module, loss_fn=None, epochs=None) -> None:  # noqa: ANN001
        train_classifier(model, digits, epochs=1, loss_fn=loss_fn)

    return train
