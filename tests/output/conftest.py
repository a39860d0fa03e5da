"""Fixtures of the output tests: a copy of the schema-2 store fixture, and the comparison it holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from greenmeter.records.comparison import Comparison
from greenmeter.store.database import Store

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_schema2.db"


@pytest.fixture()
def store_path(tmp_path: Path) -> Path:
    """A private copy of ``tests/fixtures/store_schema2.db`` (a comparison and runs from an older schema)."""
    path = tmp_path / "runs.db"
    shutil.copyfile(FIXTURE, path)
    return path


@pytest.fixture()
def comparison(store_path: Path) -> Comparison:
    """The latest comparison of that store."""
    with Store(store_path) as store:
        found = store.last_comparison()
    assert found is not None
    return found
