"""NvmlBackend's driver check: without an NVIDIA driver, probe() says so without importing pynvml."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from greenmeter.sources import nvml
from greenmeter.sources.nvml import NvmlBackend


def _pynvml_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take pynvml out of sys.modules for this test (restored afterwards, whatever the test imports)."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    del sys.modules["pynvml"]


def test_no_driver_gives_the_reason_and_leaves_pynvml_unimported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = (str(tmp_path / "dev" / "nvidiactl"), str(tmp_path / "proc" / "driver" / "nvidia"))
    monkeypatch.setattr(nvml, "_DRIVER_PATHS", missing)
    monkeypatch.setattr(sys, "platform", "linux")
    _pynvml_not_imported(monkeypatch)
    result = NvmlBackend().probe()
    assert not result.available and result.domains == ()
    assert result.reason.startswith(f"no NVIDIA driver on this machine (none of {missing[0]}, {missing[1]} exists)")
    assert "nvidia-smi" in result.reason and "--gpus all" in result.reason
    assert "pynvml" not in sys.modules


def test_a_driver_path_lets_probe_import_pynvml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "nvidiactl").touch()
    monkeypatch.setattr(nvml, "_DRIVER_PATHS", (str(tmp_path / "absent"), str(tmp_path / "nvidiactl")))
    monkeypatch.setattr(sys, "platform", "linux")
    # a `pynvml` found on sys.path first, which installs the fake with one GPU when imported
    shim = tmp_path / "modules"
    shim.mkdir()
    (shim / "pynvml.py").write_text(textwrap.dedent("""
        import sys
        from tests.fakes.fake_pynvml import FakeGpu, make_fake_pynvml
        sys.modules[__name__] = make_fake_pynvml(FakeGpu(energy_mj=(1_000, 3_000)))
    """))
    monkeypatch.syspath_prepend(str(shim))
    _pynvml_not_imported(monkeypatch)
    result = NvmlBackend(devices=[0]).probe()
    assert result.available, result.reason
    assert [d.key for d in result.domains] == ["nvml:gpu0"]
    assert type(sys.modules["pynvml"]).__name__ == "FakePynvml"


def test_other_platforms_skip_the_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(nvml, "_DRIVER_PATHS", (str(tmp_path / "absent"),))
    monkeypatch.setattr(sys, "platform", "win32")
    _pynvml_not_imported(monkeypatch)
    assert nvml._no_driver_reason() is None


def test_probe_on_this_machine_without_a_driver_imports_no_pynvml() -> None:
    if any(Path(p).exists() for p in nvml._DRIVER_PATHS):
        pytest.skip("this machine has an NVIDIA driver")
    code = ("import sys; from greenmeter.sources.nvml import NvmlBackend; r = NvmlBackend().probe(); "
            "print(r.available, 'pynvml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
