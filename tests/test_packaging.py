"""The package as users get it: a built wheel in a fresh venv, the import contract, the console script."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_with_its_subpackages_and_templates(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # --no-isolation: build with the setuptools already here, so the test makes no network call.
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    wheels = list(dist.glob("greenmeter-*.whl"))
    assert len(wheels) == 1
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheels[0])],
        check=True, capture_output=True, text=True,
    )
    probe = (
        "import greenmeter, greenmeter.compression, greenmeter.reports_templates as rt, sys, pathlib;"
        "files = [greenmeter.__file__, greenmeter.compression.__file__, rt.__file__];"
        "assert all(pathlib.Path(f).is_relative_to(pathlib.Path(sys.prefix)) for f in files), files;"
        "text = rt.read_template('base.html.j2');"
        "assert '{% block content %}' in text, text[:80];"
        "assert all(rt.read_template(n) for n in ('report.html.j2', 'report.md.j2', 'report.css', 'sort.js'));"
        "print(greenmeter.__version__)"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path)
    from greenmeter import __version__

    assert out.stdout.strip() == __version__
    script = env_dir / "bin" / "greenmeter"
    assert script.exists()
    version = subprocess.run([str(script), "--version"], check=True, capture_output=True, text=True)
    assert version.stdout.strip() == f"greenmeter {__version__}"


def test_import_loads_no_heavy_dependency_and_touches_no_hardware() -> None:
    code = (
        "import sys, greenmeter;"
        "heavy = [m for m in ('torch', 'pandas', 'pynvml', 'codecarbon', 'jinja2', 'psutil', 'matplotlib') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_first_window_spawns_no_child_process() -> None:
    code = (
        "import sys\n"
        "spawned = []\n"
        "def hook(event, args):\n"
        "    if event in ('subprocess.Popen', 'os.fork', 'os.forkpty', 'os.posix_spawn', 'os.system', 'os.exec'):\n"
        "        spawned.append(event)\n"
        "sys.addaudithook(hook)\n"
        "import greenmeter\n"
        "with greenmeter.measure('first') as m:\n"
        "    sum(range(10000))\n"
        "assert m.measurement.status == 'ok'\n"
        "print(spawned)\n"
    )
    env = dict(os.environ, GREENMETER_SYSFS_ROOT=str(ROOT / "tests" / "no-such-sysfs"))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "[]"
