"""The training frameworks the integration tests drive, found or skipped by one rule."""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import pytest


def framework(module: str) -> ModuleType:
    """The framework, or a skip; in CI, which installs the test extras, a missing framework is a failure."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def lightning() -> ModuleType:
    """``lightning.pytorch`` where installed (the callback prefers it), else ``pytorch_lightning``.

    The test extras install ``pytorch-lightning`` only, so CI takes the second.
    """
    return framework("pytorch_lightning" if importlib.util.find_spec("lightning") is None else "lightning.pytorch")
