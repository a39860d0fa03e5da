"""A third-party package extends greenmeter through entry points, with no change to greenmeter's files.

The test builds a tiny wheel in ``tmp_path`` that declares one energy source (``greenmeter.sources``),
one compression method with its recipe (``greenmeter.methods``) and one output format
(``greenmeter.formats``), installs it with pip into a directory of its own (``--target``, offline), and
runs the ``greenmeter`` command line in fresh processes with that directory on ``PYTHONPATH``:
``greenmeter info`` lists the source, ``greenmeter compare`` builds a variant through the method's recipe,
and ``greenmeter report --format NAME`` writes the plug-in's format.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

SOURCE = '''
"""A constant-power meter: 7 W on one domain, as a counter would report it."""
import time

from greenmeter.sources.base import Backend, Domain, ProbeResult, Provenance, Reading, SourceInfo

PROV = Provenance("measured", "demo wall meter", "constant 7 W, for the plug-in test")


class WallMeter(Backend):
    info = SourceInfo(name="wall-meter", kind="counter", domains=("psys",), label="Wall meter")
    name = "wall-meter"

    def __init__(self):
        self.t0 = time.monotonic()

    def probe(self):
        return ProbeResult(self.name, True, domains=(Domain("wall-meter:plug", "psys", True, PROV, 0.0),))

    def read(self):
        now = time.monotonic()
        return Reading(now, {"wall-meter:plug": 7.0 * (now - self.t0)})

    def close(self):
        pass
'''

METHOD = '''
"""Weight rounding: every parameter rounded to D decimals (recipe "round:D")."""
from dataclasses import dataclass

import torch

from greenmeter.compression import register_method
from greenmeter.compression.registry import RecipeSpec, recipe_number


@dataclass(frozen=True)
class RoundConfig:
    decimals: int = 2


def _build(baseline, arg, ctx):
    decimals = int(recipe_number("round", arg, 2, "D, the decimals kept, a whole number 0-6 (default 2)",
                                 lambda v: v == int(v) and 0 <= v <= 6))
    with torch.no_grad():
        for p in baseline.parameters():
            p.copy_(torch.round(p, decimals=decimals))
    return baseline, {"decimals": decimals}


@register_method("round", RoundConfig, recipe=RecipeSpec(
    "round", _build, trains=False, description="every weight rounded to D decimals",
    arg_help="D, the decimals kept, a whole number 0-6 (default 2)"))
def _round(model, config):
    return _build(model, str(config.decimals), None)
'''

FORMAT = '''
"""One line per variant: name, energy per sample, recipe; for people who read plain text."""
from greenmeter.output.formats import Format


def render(view, record):
    lines = [f"plain summary of {record['comparison']['name']}"]
    for v in record["comparison"]["variants"]:
        energy = v.get("energy_per_sample_j") or {}
        lines.append(f"{v['name']}\\t{energy.get('mean')}\\t{v.get('recipe')}")
    return "\\n".join(lines) + "\\n"


PLAIN = Format("plain", ".plain", "one line per variant, plain text", comparison=render)
'''

ENTRY_POINTS = """[greenmeter.sources]
wall-meter = gm_demo_plugin.source:WallMeter

[greenmeter.methods]
round = gm_demo_plugin.method

[greenmeter.formats]
plain = gm_demo_plugin.fmt:PLAIN
"""

CONFIG = """
name = "plugin-compare"

[model]
factory = "greenmeter.demo.digits:trained_digits_cnn"
kwargs = { epochs = 1 }

[data]
eval = "greenmeter.demo.digits:eval_data"

[compare]
baseline = "float"
recipes = ["round:1"]
repeats = 2
min_repeat_s = 0.02
threads = 1
"""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _build_wheel(directory: Path) -> Path:
    """A pure-Python wheel of the package ``gm_demo_plugin``, written by hand (no build backend needed)."""
    files = {
        "gm_demo_plugin/__init__.py": b'"""greenmeter plug-in used by greenmeter\'s tests."""\n',
        "gm_demo_plugin/source.py": SOURCE.encode(),
        "gm_demo_plugin/method.py": METHOD.encode(),
        "gm_demo_plugin/fmt.py": FORMAT.encode(),
        "gm_demo_plugin-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: gm-demo-plugin\nVersion: 0.1\n",
        "gm_demo_plugin-0.1.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: greenmeter-tests\n"
                                               b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
        "gm_demo_plugin-0.1.dist-info/entry_points.txt": ENTRY_POINTS.encode(),
    }
    record = [_record_line(name, data) for name, data in files.items()] + ["gm_demo_plugin-0.1.dist-info/RECORD,,"]
    wheel = directory / "gm_demo_plugin-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("gm_demo_plugin-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose PYTHONPATH holds the installed plug-in (installed by pip, offline)."""
    base = tmp_path_factory.mktemp("plugin")
    wheel = _build_wheel(base)
    site = base / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                           "--disable-pip-version-check", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (site / "gm_demo_plugin-0.1.dist-info" / "entry_points.txt").is_file()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["GREENMETER_STORE"] = str(base / "default-store.db")
    return env


def _greenmeter(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "greenmeter", *args], capture_output=True, text=True,
                          check=False, env=env, cwd=cwd, timeout=600)


def test_info_lists_the_plugin_source(plugin_env: dict[str, str], tmp_path: Path) -> None:
    done = _greenmeter(plugin_env, "info", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    sources = {s["backend"]: s for s in json.loads(done.stdout)["sources"]}
    assert sources["wall-meter"]["available"] is True
    assert [d["key"] for d in sources["wall-meter"]["domains"]] == ["wall-meter:plug"]
    assert sources["wall-meter"]["domains"][0]["provenance"]["source"] == "demo wall meter"
    assert {"cpu-estimate", "ram-estimate", "rapl", "nvml"} <= set(sources)  # the built-ins are still there


def test_compare_builds_the_plugin_recipe_and_report_writes_the_plugin_format(
        plugin_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "compare.toml"
    config.write_text(CONFIG, encoding="utf-8")
    store, out_json = tmp_path / "runs.db", tmp_path / "cmp.json"
    done = _greenmeter(plugin_env, "compare", str(config), "--store", str(store), "--json", str(out_json),
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    variants = {v["name"]: v for v in json.loads(out_json.read_text(encoding="utf-8"))["variants"]}
    assert set(variants) == {"float", "round:1"}
    rounded = variants["round:1"]
    assert rounded["status"] == "ok" and rounded["recipe"] == "round:1"
    # the recipe really ran: the variant was measured on the same data as the baseline
    assert rounded["energy_per_sample_j"]["mean"] > 0 and rounded["metric"] is not None

    out = tmp_path / "summary.plain"
    done = _greenmeter(plugin_env, "report", "--last", "--format", "plain", "-o", str(out), "--store", str(store),
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "plain summary of plugin-compare"
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert set(rows) == {"float", "round:1"}
    assert float(rows["round:1"][1]) == pytest.approx(rounded["energy_per_sample_j"]["mean"])
    assert rows["round:1"][2] == "round:1"


def test_greenmeter_without_the_plugin_does_not_know_its_names(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GREENMETER_STORE"] = str(tmp_path / "store.db")
    done = _greenmeter(env, "report", "--last", "--format", "plain", "--store", str(tmp_path / "s.db"), cwd=tmp_path)
    assert done.returncode != 0
    assert "plain" in done.stderr and "html" in done.stderr  # the unknown format, and the known ones listed


def test_the_quick_look_finds_a_declaring_distribution_and_only_skips_when_there_is_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from greenmeter import plugins

    empty, other, ours, zipped = (tmp_path / n for n in ("empty", "other", "ours", "zipped"))
    for folder in (empty, other, ours, zipped):
        folder.mkdir()
    (other / "tool-1.0.dist-info").mkdir()
    (other / "tool-1.0.dist-info" / "entry_points.txt").write_text("[console_scripts]\ntool = tool:main\n")
    (other / "bare-2.0.dist-info").mkdir()  # no entry_points.txt at all
    (ours / "ext-0.1.dist-info").mkdir()
    (ours / "ext-0.1.dist-info" / "entry_points.txt").write_text("[greenmeter.formats]\ntsv = ext:TSV\n")
    (zipped / "old-1.0-py3.11.egg").write_bytes(b"PK\x05\x06" + b"\0" * 18)

    def declared(*path: Path | str) -> bool:
        monkeypatch.setattr(sys, "path", [str(p) for p in path])
        return plugins._scan_for_declarations()

    assert declared(empty, other, tmp_path / "missing") is False
    assert declared(empty, other, ours) is True
    assert declared(zipped) is True  # an egg it cannot look into: the full lookup decides
    assert declared(str(zipped / "old-1.0-py3.11.egg")) is True  # a zip file on sys.path, likewise
