"""Devices: each variant runs where its parameters are, the data may stay on the CPU, and a GPU step ends when its
work is done. The moves are checked here against PyTorch's ``meta`` device (a second device every build has); the
runs on a real GPU are in tests/comparison/test_compare_gpu.py, which skips without one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from greenmeter._errors import ConfigError  # noqa: E402
from greenmeter.comparison.batches import call_model, check_device, device_sync, model_device, to_device  # noqa: E402
from greenmeter.comparison.compare import MIXED_DEVICES, compare, mixed_devices  # noqa: E402
from greenmeter.comparison.config import load_compare_config  # noqa: E402

HERE = "tests.comparison.test_devices"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA says")


class _Seen(torch.nn.Module):
    """Records the device of each input it is called with; its one parameter is on ``device``."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3, device=device))
        self.seen: list[tuple[str, ...]] = []

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.seen.append(tuple(str(t.device) for t in (x, mask) if t is not None))
        return x.float().sum(dim=1, keepdim=True)


def test_to_device_moves_every_tensor_of_a_tensor_a_tuple_a_list_and_a_dict_and_keeps_the_rest() -> None:
    x, mask = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long)
    assert to_device(x, "meta").device.type == "meta"
    moved = to_device((x, mask), "meta")
    assert isinstance(moved, tuple) and [t.device.type for t in moved] == ["meta", "meta"]
    assert [t.device.type for t in to_device([x, mask], "meta")] == ["meta", "meta"]
    as_dict = to_device({"input_ids": mask, "length": 7}, "meta")
    assert as_dict["input_ids"].device.type == "meta" and as_dict["length"] == 7


def test_to_device_gives_back_the_same_objects_where_the_tensors_are_there_already() -> None:
    x, mask = torch.ones(2, 3), torch.ones(2, 3)
    pair, mapping = (x, mask), {"x": x}
    assert to_device(x, "cpu") is x
    assert to_device(pair, torch.device("cpu")) is pair
    assert to_device(mapping, "cpu") is mapping
    assert to_device(pair, None) is pair


def test_model_device_is_the_first_parameter_then_buffer_then_cpu_for_int8_modules_else_unknown() -> None:
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    buffered = torch.nn.Module()
    buffered.register_buffer("scale", torch.ones(1, device="meta"))
    assert model_device(buffered) == torch.device("meta")
    int8 = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 4)), {torch.nn.Linear},
                                                  dtype=torch.qint8)
    assert not list(int8.parameters()) and not list(int8.buffers())
    assert model_device(int8) == torch.device("cpu")  # int8 kernels are CPU kernels
    assert model_device(torch.nn.ReLU()) is None
    assert model_device(lambda x: x) is None


def test_call_model_puts_the_inputs_on_the_models_device_unless_told_not_to() -> None:
    model = _Seen("meta")
    x, mask = torch.ones(2, 3), torch.ones(2, 3)
    out = call_model(model, {"x": x, "mask": mask})
    assert model.seen == [("meta", "meta")] and out.device.type == "meta"
    call_model(model, (x,), move=False)
    assert model.seen[-1] == ("cpu",)


def test_device_sync_waits_for_a_cuda_device_and_for_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    assert device_sync(None) is None
    assert device_sync(torch.device("cpu")) is None
    assert device_sync(torch.device("meta")) is None
    sync = device_sync(torch.device("cuda", 1))
    assert sync is not None
    sync()
    assert calls == [torch.device("cuda", 1)]


def test_mixed_devices_names_each_variant_and_its_device_only_when_they_differ() -> None:
    def entry(name: str, device: str | None, error: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(name=name, error=error, facts={"device": device})

    assert mixed_devices([entry("float", "cpu"), entry("int8", "cpu")]) is None
    assert mixed_devices([entry("float", "cuda:0"), entry("int8", "cpu", error="making it: boom")]) is None
    assert mixed_devices([entry("float", "cuda:0"), entry("none", None)]) is None
    flag = mixed_devices([entry("float", "cuda:0"), entry("int8", "cpu"), entry("pruned", "cuda:0")])
    assert flag == MIXED_DEVICES.format(devices="float on cuda:0, int8 on cpu, pruned on cuda:0")


def test_a_comparison_on_the_cpu_records_each_variants_device_and_no_mixed_flag() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))
    result = compare({"float": model, "int8": "int8-dynamic"}, data, repeats=2, min_repeat_s=0.05,
                     progress=False)
    assert [v.details["device"] for v in result.variants] == ["cpu", "cpu"]
    assert "moved_from" not in result.variants[1].details
    assert not any("different devices" in f for f in result.flags)


@NO_CUDA
@pytest.mark.parametrize(("value", "said"), [
    ("cuda", "torch sees no CUDA device here"),
    ("cuda:3", "torch sees no CUDA device here"),
    ("gpu0", "must be a device such as 'cpu', 'cuda' or 'cuda:1', not 'gpu0'"),
    ("", "must be a non-empty string"),
    (0, "must be a non-empty string"),
])
def test_check_device_refuses_a_device_this_machine_has_not_with_what_to_do(value: object, said: str) -> None:
    with pytest.raises(ConfigError, match="^--device") as err:
        check_device("--device", value)
    assert said in str(err.value)


def test_check_device_takes_the_cpu() -> None:
    assert check_device("--device", "cpu") == "cpu"


def make_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


@pytest.fixture()
def _sys_path_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def _config(tmp_path: Path, device: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[model]\nfactory = "{HERE}:make_tiny"\ndevice = "{device}"\n[data]\neval = "{HERE}:tiny_data"\n'
                    '[compare]\nrecipes = ["prune:0.5"]\n', encoding="utf-8")
    return path


@pytest.mark.usefixtures("_sys_path_restored")
def test_the_config_puts_the_baseline_on_model_device(tmp_path: Path) -> None:
    config = load_compare_config(_config(tmp_path, "cpu"))
    assert config.device == "cpu"
    model = config.build()["variants"]["baseline"]
    assert model_device(model) == torch.device("cpu")


@NO_CUDA
@pytest.mark.usefixtures("_sys_path_restored")
def test_a_model_device_this_machine_has_not_is_refused_when_the_file_is_loaded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.toml: model\.device is 'cuda', but torch sees no CUDA device here"):
        load_compare_config(_config(tmp_path, "cuda"))


@pytest.mark.usefixtures("_sys_path_restored")
def test_compare_device_on_the_command_line_beats_the_files(tmp_path: Path) -> None:
    from greenmeter.cli.main import main

    path = _config(tmp_path, "meta")  # a model on meta cannot run: the option replaces the file's device
    path.write_text(path.read_text(encoding="utf-8") + "repeats = 2\nwarmup = 0\nmin_repeat_s = 0.01\n",
                    encoding="utf-8")
    out = tmp_path / "c.json"
    assert main(["compare", str(path), "--device", "cpu", "--no-store", "--quiet", "--json", str(out)]) == 0
    variants = json.loads(out.read_text(encoding="utf-8"))["variants"]
    assert [v["details"]["device"] for v in variants] == ["cpu", "cpu"]


@NO_CUDA
@pytest.mark.parametrize("verb", ["compare", "optimize"])
def test_a_device_this_machine_has_not_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        verb: str) -> None:
    from greenmeter.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main([verb, str(tmp_path / "c.toml"), "--device", "cuda:1"])
    assert exit_.value.code == 2
    assert "--device is 'cuda:1', but torch sees no CUDA device here" in capsys.readouterr().err
