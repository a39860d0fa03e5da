"""No test touches the user's files: the default store of every test lies in a temporary folder (tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from greenmeter.store.database import Store, default_store_path
from tests.conftest import USER_STORE

HERE = Path(__file__).resolve().parent


def test_the_default_store_of_a_test_is_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    basetemp = tmp_path_factory.getbasetemp().resolve()
    with Store() as store:  # no path and no GREENMETER_STORE: $XDG_DATA_HOME/greenmeter/runs.db, in basetemp
        assert Path(store.path).resolve().is_relative_to(basetemp)
    assert default_store_path().resolve().is_relative_to(basetemp)
    assert not USER_STORE.resolve().is_relative_to(basetemp)


def test_a_test_that_writes_the_users_default_store_fails_the_session(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(HERE / "conftest.py", suite / "conftest.py")
    (suite / "test_leak.py").write_text(
        "from greenmeter.store.database import Store\n"
        "from conftest import USER_STORE\n\n"
        "def test_leaks():\n"
        "    with Store(USER_STORE) as store:\n"
        "        store.start_run(name='leak', kind='api')\n"
    )
    home = tmp_path / "user-data"
    env = {**os.environ, "XDG_DATA_HOME": str(home)}
    env.pop("GREENMETER_STORE", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(suite),
                           str(suite)], capture_output=True, text=True, env=env, cwd=suite, timeout=300, check=False)
    assert (home / "greenmeter" / "runs.db").exists()  # the inner test really wrote the "user's" store
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout and "changed the user's run store" in done.stdout
