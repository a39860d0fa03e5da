"""Every test runs with greenmeter's default paths inside a temporary folder: no test touches the user's files.

``XDG_DATA_HOME`` (where the default run store lives) points into a fresh temporary folder for each
test and ``GREENMETER_STORE`` is unset (a developer's own setting must not reach the tests), so the
default store of every test, and of the processes it starts, lies in that folder. At the end of the session the
user's own default store is checked: if any test created or changed it, the session fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _user_default_store() -> Path:
    # the rule of greenmeter.store.database.default_store_path, read from the environment the suite started in
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "greenmeter" / "runs.db"


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


USER_STORE = _user_default_store()
_USER_STORE_BEFORE = _state(USER_STORE)


@pytest.fixture(autouse=True)
def _default_paths_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the XDG data folder, and so the default store, into a temporary folder of the test's own."""
    base = tmp_path_factory.mktemp("default-paths")
    monkeypatch.delenv("GREENMETER_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "xdg-data"))
    return base


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    after = _state(USER_STORE)
    if after != _USER_STORE_BEFORE:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (f"a test created or changed the user's default run store {USER_STORE} "
                   f"(before: {_USER_STORE_BEFORE}, after: {after}); every test must use tmp_path")
        if reporter is not None:
            reporter.write_line(f"ERROR: {message}", red=True)
        else:  # pragma: no cover - the terminal reporter is always there in a normal run
            print(f"ERROR: {message}")
