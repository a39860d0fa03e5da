"""Every test runs with greenmeter's default paths inside a temporary folder: no test touches the user's files.

``XDG_DATA_HOME`` (where the default run store lives) points into a fresh temporary folder for each
test and ``GREENMETER_STORE`` is unset (a developer's own setting must not reach the tests), so the
default store of every test, and of the processes it starts, lies in that folder. At the end of the session the
user's own stores (the default one, and ``$GREENMETER_STORE`` when set) are checked: if any test created or
changed one, the session fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from greenmeter.store.database import default_store_path


def _state(path: Path) -> tuple[object, ...]:
    """What a test could change about a store: whether it (or its WAL) exists, its size and modification time."""
    out: list[object] = []
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            st = p.stat()
        except FileNotFoundError:
            out.append(None)
        else:
            out.append((st.st_size, st.st_mtime_ns))
    return tuple(out)


# read before any test changes the environment: the default store, and a store the developer set
USER_STORE = default_store_path()
_USER_STORES = [USER_STORE] + ([Path(os.environ["GREENMETER_STORE"])] if os.environ.get("GREENMETER_STORE") else [])
_USER_STORES_BEFORE = [_state(p) for p in _USER_STORES]


@pytest.fixture(autouse=True)
def _default_paths_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the XDG data folder, and so the default store, into a temporary folder of the test's own."""
    base = tmp_path_factory.mktemp("default-paths")
    monkeypatch.delenv("GREENMETER_STORE", raising=False)
    for name in [n for n in os.environ if n.startswith("SLURM")]:  # a CI job inside SLURM must not set ranks
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "xdg-data"))
    return base


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    changed = [(p, before, _state(p)) for p, before in zip(_USER_STORES, _USER_STORES_BEFORE) if _state(p) != before]
    if changed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for path, before, after in changed:
            message = (f"a test created or changed the user's run store {path} (before: {before}, after: {after}); "
                       "every test must use tmp_path")
            if reporter is not None:
                reporter.write_line(f"ERROR: {message}", red=True)
            else:  # pragma: no cover - the terminal reporter is always there in a normal run
                print(f"ERROR: {message}")
