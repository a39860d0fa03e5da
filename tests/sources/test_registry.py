"""greenmeter.sources.registry and the metadata sources carry: registration, options, the automatic choice.

Sources are registered in process with fake classes defined in each test (and unregistered after it);
hardware is faked at the boundary (an empty or fake powercap tree in ``tmp_path``). The entry-point test
builds a tiny installed distribution in ``tmp_path`` and runs Python in a subprocess with it on the path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from greenmeter import ConfigError
from greenmeter.cli.main import main
from greenmeter.sources.base import Backend, Domain, ProbeResult, Provenance, Reading, SourceInfo
from greenmeter.sources.nvml import NvmlBackend
from greenmeter.sources.rapl import RaplBackend
from greenmeter.sources.registry import (
    create_backend,
    find_source,
    register_source,
    source_class,
    source_info,
    source_names,
    unregister_source,
)
from greenmeter.sources.select import create_configured, describe_choice, probe_sources, select_backends
from tests.fakes.powercap import FakePowercap

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILT_INS = ("rapl", "nvml", "cpu-estimate", "ram-estimate")

Register = Callable[[type[Backend]], type[Backend]]


@pytest.fixture
def register() -> Iterator[Register]:
    """Register source classes for one test; they are unregistered afterwards."""
    added: list[str] = []

    def add(cls: type[Backend]) -> type[Backend]:
        register_source(cls)
        added.append(cls.info.name)
        return cls

    yield add
    for name in added:
        unregister_source(name)


def _domain(key: str, kind: str, measured: bool = True) -> Domain:
    provenance = Provenance("measured" if measured else "estimated", f"test source {key}", "test counter")
    return Domain(key, kind, True, provenance, 0.0)


def _wattmeter_class(selection: str = "usable", kind: str = "cpu") -> type[Backend]:
    """A counter with one in-total domain of ``kind`` whose cumulative joules a test sets."""

    class Wattmeter(Backend):
        info = SourceInfo(name="test-wattmeter", label="Wattmeter", kind="counter", domains=(kind,),
                          selection=selection)  # type: ignore[arg-type]

        def __init__(self) -> None:
            self.energy_j = 0.0

        def probe(self) -> ProbeResult:
            return ProbeResult(self.name, True, domains=(_domain(f"test-wattmeter:{kind}", kind),))

        def read(self) -> Reading:
            return Reading(time.monotonic(), {f"test-wattmeter:{kind}": self.energy_j})

    return Wattmeter


# Registration ----------------------------------------------------------------------------------
def test_built_ins_come_first_and_carry_their_metadata() -> None:
    assert source_names()[:4] == BUILT_INS
    rapl, nvml = source_info("rapl"), source_info("nvml")
    assert (rapl.label, rapl.kind, rapl.selection, rapl.hardware) == ("RAPL", "counter", "usable", "cpu")
    assert dict(rapl.options) == {"sysfs_root": "sysfs_root", "use_psys": "use_psys"}
    assert rapl.covers("ram") and not rapl.covers("gpu")
    assert (nvml.per_device, dict(nvml.options), nvml.hardware) == (True, {"gpus": "devices"}, "gpu")
    assert [source_info(n).selection for n in ("cpu-estimate", "ram-estimate")] == ["stand-in", "stand-in"]
    assert source_class("rapl") is RaplBackend and RaplBackend.name == "rapl"
    assert not any(source_info(n).per_device for n in ("rapl", "cpu-estimate", "ram-estimate"))


def test_a_registered_source_is_created_by_name(register: Register) -> None:
    cls = register(_wattmeter_class())
    assert source_names()[-1] == "test-wattmeter" and find_source("test-wattmeter") is cls
    backend = create_backend("test-wattmeter")
    assert isinstance(backend, cls) and backend.name == "test-wattmeter"
    assert register_source(cls) is cls  # the same class again changes nothing
    assert source_names().count("test-wattmeter") == 1


def test_duplicate_names_are_refused(register: Register) -> None:
    class FakeRapl(Backend):
        info = SourceInfo(name="rapl", kind="counter", domains=("package",))

    with pytest.raises(ConfigError, match=r"'rapl' is already taken by greenmeter\.sources\.rapl:RaplBackend"):
        register_source(FakeRapl)
    register(_wattmeter_class())
    with pytest.raises(ConfigError, match="'test-wattmeter' is already taken by .*Wattmeter; .* another name"):
        register_source(_wattmeter_class())
    assert source_names().count("test-wattmeter") == 1 and source_class("rapl") is RaplBackend


def test_what_is_not_a_source_class_is_refused() -> None:
    class NoInfo(Backend):
        name = "no-info"

    with pytest.raises(ConfigError, match="has no info of its own"):
        register_source(NoInfo)
    with pytest.raises(ConfigError, match="must be a greenmeter.sources.base.Backend subclass"):
        register_source(object)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="built in and cannot be unregistered"):
        unregister_source("nvml")
    with pytest.raises(TypeError, match="differs from its info.name"):
        class Renamed(Backend):  # noqa: F841 - defining it is the test
            name = "one"
            info = SourceInfo(name="two", kind="counter", domains=("gpu",))


def test_an_unknown_name_lists_the_known_ones(register: Register) -> None:
    register(_wattmeter_class())
    with pytest.raises(ConfigError, match="unknown energy backend 'tpu'; choose from rapl, nvml, cpu-estimate, "
                                          "ram-estimate, test-wattmeter"):
        create_backend("tpu")
    assert find_source("tpu") is None


@pytest.mark.parametrize(("fields", "message"), [
    ({"name": "Bad Name"}, "SourceInfo.name must be lower case"),
    ({"kind": "guess"}, "kind of 'x' must be one of counter, estimate"),
    ({"domains": ()}, "must name at least one domain kind"),
    ({"options": {"devices": "devices"}}, "unknown meter option.s. devices; choose from mode, sysfs_root"),
    ({"per_device": True}, "per_device, so its options must take 'gpus'"),
    ({"selection": "always"}, "selection of 'x' must be one of usable, stand-in, named"),
])
def test_source_info_rejects_what_would_break_the_registry(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SourceInfo(**{"name": "x", "kind": "counter", "domains": ("gpu",), **fields})


def test_the_gpu_model_comes_from_the_source_class() -> None:
    stored = Provenance("measured", "NVML GPU 3 NVIDIA H200 (GPU-5e3a)", "total energy counter")
    assert NvmlBackend.device_name(stored) == "NVIDIA H200"
    assert NvmlBackend.device_name(Provenance("measured", "something else", "x")) is None
    assert RaplBackend.device_name(stored) is None  # the default: the source names no device


# Options -----------------------------------------------------------------------------------------
def test_meter_options_reach_only_the_sources_that_declare_them(register: Register, tmp_path: Path) -> None:
    created: list[dict[str, Any]] = []

    class Recorder(Backend):
        info = SourceInfo(name="test-recorder", kind="estimate", domains=("ram",),
                          options={"gpus": "devices", "mode": "scope"})

        def __init__(self, **options: Any) -> None:
            created.append(options)

        def probe(self) -> ProbeResult:
            return ProbeResult(self.name, True, domains=(_domain("test-recorder:ram", "ram", measured=False),))

        def read(self) -> Reading:
            return Reading(time.monotonic(), {"test-recorder:ram": 0.0})

    register(Recorder)
    options = {"mode": "machine", "sysfs_root": str(tmp_path), "use_psys": True, "gpus": [1]}
    create_configured("test-recorder", **options)
    rapl = create_configured("rapl", **options)
    cpu = create_configured("cpu-estimate", **options)
    assert created == [{"devices": [1], "scope": "machine"}]
    assert (rapl.sysfs_root, rapl.use_psys) == (tmp_path, True)  # type: ignore[attr-defined]
    assert cpu.mode == "machine"  # type: ignore[attr-defined]
    create_configured("test-recorder")  # no meter option given: the constructor's defaults
    assert created[-1] == {}
    with pytest.raises(ConfigError, match="unknown meter option.s. devices; choose from mode, sysfs_root"):
        create_configured("nvml", devices=[0])


# The automatic choice ----------------------------------------------------------------------------
def test_info_lists_a_registered_source(register: Register, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    register(_wattmeter_class(selection="named"))
    assert [probe.backend for _, probe in probe_sources(sysfs_root=str(tmp_path))] == [*BUILT_INS, "test-wattmeter"]
    assert main(["info", "--json", "--sysfs-root", str(tmp_path)]) == 0
    sources = {s["backend"]: s for s in json.loads(capsys.readouterr().out)["sources"]}
    assert sources["test-wattmeter"]["available"] is True
    assert [d["key"] for d in sources["test-wattmeter"]["domains"]] == ["test-wattmeter:cpu"]
    assert main(["info", "--sysfs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[usable] test-wattmeter" in out
    # a "named" source never joins the automatic choice, so the CPU is still estimated
    assert "CPU energy will be ESTIMATED (cpu-estimate): no usable RAPL counter; see 'why' above for the fix." in out


def test_a_usable_counter_from_the_registry_replaces_the_cpu_estimate(register: Register, tmp_path: Path) -> None:
    register(_wattmeter_class(selection="usable"))
    backends, probes, notes = select_backends(None, sysfs_root=str(tmp_path / "none"))
    assert [b.name for b in backends] == ["test-wattmeter", "ram-estimate"]  # RAPL and NVML unusable here
    assert [p.backend for p in probes] == ["rapl", "nvml", "test-wattmeter", "ram-estimate"]
    assert notes == ("RAM energy is estimated (ram-estimate), not measured: no usable RAPL DRAM counter",)
    lines = describe_choice(probe_sources(sysfs_root=str(tmp_path / "none")))
    assert lines == ["CPU energy will be measured by Wattmeter."]


def test_the_built_in_choice_and_its_notes(tmp_path: Path) -> None:
    backends, probes, notes = select_backends(None, sysfs_root=str(tmp_path / "none"))
    assert [b.name for b in backends] == ["cpu-estimate", "ram-estimate"]
    assert [p.backend for p in probes] == list(BUILT_INS)
    assert notes[0].startswith("CPU energy is estimated, not measured: RAPL is unusable (no RAPL interface at ")
    assert notes[1] == "RAM energy is estimated (ram-estimate), not measured: no usable RAPL DRAM counter"
    FakePowercap(tmp_path).add_package(0, subzones=("core",))  # no DRAM counter: only the RAM estimate stands in
    backends, _, notes = select_backends(None, sysfs_root=str(tmp_path))
    assert [b.name for b in backends] == ["rapl", "ram-estimate"]
    assert notes == ("RAM energy is estimated (ram-estimate), not measured: no usable RAPL DRAM counter",)
    assert describe_choice(probe_sources(sysfs_root=str(tmp_path))) == ["CPU energy will be measured by RAPL."]


def test_a_stand_in_from_the_registry_says_its_own_note(register: Register, tmp_path: Path) -> None:
    class FanEstimate(Backend):
        info = SourceInfo(name="test-fan", kind="estimate", domains=("fan",), selection="stand-in")

        def probe(self) -> ProbeResult:
            return ProbeResult(self.name, True, domains=(_domain("test-fan:fan", "fan", measured=False),))

        def read(self) -> Reading:
            return Reading(time.monotonic(), {"test-fan:fan": 0.0})

    register(FanEstimate)
    backends, _, notes = select_backends(None, sysfs_root=str(tmp_path / "none"))
    assert [b.name for b in backends] == ["cpu-estimate", "ram-estimate", "test-fan"]
    assert notes[-1] == ("FAN energy is estimated (test-fan), not measured: no source for FAN energy counters "
                         "is installed")


# Plug-ins ----------------------------------------------------------------------------------------
def _installed(site: Path, entry: str, module: str | None = None) -> None:
    """A distribution ``brokenmeter`` 1.0 in ``site`` declaring one ``greenmeter.sources`` entry point."""
    dist = site / "brokenmeter-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenmeter\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[greenmeter.sources]\n{entry}\n")
    if module is not None:
        (site / "brokenmeter.py").write_text(module)


PLUGIN_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import greenmeter                                   # entry points are not read at import,
    lazy = ("greenmeter.sources.rapl", "greenmeter.sources.nvml", "greenmeter.sources.cpu_estimate",
            "greenmeter.sources.ram_estimate", "pynvml")
    print([m for m in lazy if m in sys.modules])        # nor is any source module imported
    from greenmeter.sources.registry import source_names
    for attempt in range(2):                            # the same error on every use, never skipped
        try:
            source_names()
        except greenmeter.ConfigError as err:
            print(err)
""")


@pytest.mark.parametrize(("entry", "module", "message"), [
    ("broken = brokenmeter:Meter", "import no_such_vendor_library\n",
     "the greenmeter.sources plug-in 'broken' (brokenmeter:Meter) from brokenmeter could not be loaded: "
     "ModuleNotFoundError"),
    ("broken = brokenmeter:Meter", "Meter = 42\n",
     "the greenmeter.sources plug-in 'broken' (brokenmeter:Meter) from brokenmeter is not usable: an energy source "
     "must be a greenmeter.sources.base.Backend subclass"),
    ("other-name = brokenmeter:Meter", textwrap.dedent("""
        from greenmeter.sources.base import Backend, SourceInfo
        class Meter(Backend):
            info = SourceInfo(name="broken", kind="counter", domains=("gpu",))
     """), "is not usable: the entry point is called 'other-name' but its class's info.name is 'broken'"),
])
def test_a_plugin_that_fails_is_a_config_error_naming_its_package(
    tmp_path: Path, entry: str, module: str, message: str,
) -> None:
    _installed(tmp_path, entry, module)
    out = subprocess.run([sys.executable, "-c", PLUGIN_SCRIPT, str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()
    assert len(out) == 3 and out[0] == "[]" and out[1] == out[2]
    assert message in out[1] and out[1].endswith("upgrade or uninstall brokenmeter")
