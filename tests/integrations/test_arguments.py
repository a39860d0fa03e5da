"""The training callbacks refuse bad arguments when they are made, not when the training starts."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from greenmeter import ConfigError
from greenmeter.integrations import TrainingRecorder


@pytest.mark.parametrize("bad", [3, 1.5, b"runs.db", ["runs.db"]])
def test_a_bad_store_is_refused_by_the_recorder_at_once(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        TrainingRecorder(store=bad)  # type: ignore[arg-type]
    assert str(info.value) == ("store must be a greenmeter.Store, a path, True (the default store) or None, "
                               f"not {type(bad).__name__}")


def test_a_path_store_is_accepted_and_nothing_is_opened_before_the_training(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    recorder = TrainingRecorder(store=path)
    assert recorder.meter is None and not path.exists()


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "2"])
def test_lightning_log_every_n_steps_must_be_a_whole_number_of_at_least_one(bad: object) -> None:
    if importlib.util.find_spec("lightning") is None and importlib.util.find_spec("pytorch_lightning") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the test extras install Lightning in CI")
        pytest.skip("Lightning is not installed")
    from greenmeter.integrations.lightning import GreenmeterCallback

    with pytest.raises(ConfigError) as info:
        GreenmeterCallback(log_every_n_steps=bad)  # type: ignore[arg-type]
    assert str(info.value) == f"log_every_n_steps must be a whole number >= 1 or None, not {bad!r}"
    assert GreenmeterCallback(log_every_n_steps=None).log_every_n_steps is None
    assert GreenmeterCallback(log_every_n_steps=3).log_every_n_steps == 3
