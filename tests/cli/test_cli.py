"""The command line: ``greenmeter info`` in text and JSON, on faked and on this machine's hardware."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from greenmeter import __version__
from greenmeter.cli.main import main
from tests.fakes.powercap import FakePowercap


def test_info_reports_a_usable_rapl_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    FakePowercap(tmp_path).add_package(0, subzones=("core", "dram"))
    assert main(["info", "--sysfs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[usable] rapl" in out
    assert "rapl:package-0 (package, in total): measured: RAPL powercap" in out
    assert "rapl:package-0/core (core, not in total (inside another domain))" in out
    assert "CPU energy will be measured by RAPL." in out


def test_info_json_says_why_rapl_is_unusable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json", "--sysfs-root", str(tmp_path / "none")]) == 0
    payload = json.loads(capsys.readouterr().out)
    sources = {s["backend"]: s for s in payload["sources"]}
    assert set(sources) == {"rapl", "nvml", "cpu-estimate", "ram-estimate"}
    assert sources["rapl"]["available"] is False
    assert "no RAPL interface" in sources["rapl"]["reason"] and "modprobe" in sources["rapl"]["reason"]
    cpu = sources["cpu-estimate"]
    assert cpu["available"] is True
    (domain,) = cpu["domains"]
    assert domain["provenance"]["kind"] == "estimated"
    assert domain["provenance"]["constants"]["p_max_w_per_vcpu"] > 0
    assert payload["host"]["greenmeter"] == __version__


def test_info_text_names_the_estimate_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--sysfs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[not usable] rapl" in out and "why: no RAPL interface" in out
    assert "CPU energy will be ESTIMATED (cpu-estimate)" in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "info" in capsys.readouterr().out


def test_console_script_runs() -> None:
    exe = shutil.which("greenmeter")
    if exe is None:
        pytest.skip("the greenmeter console script is not installed in this environment")
    out = subprocess.run([exe, "info"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(f"greenmeter {__version__} on ")
    assert "[usable] cpu-estimate" in out.stdout or "[usable] rapl" in out.stdout
