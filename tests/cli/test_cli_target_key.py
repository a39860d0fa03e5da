"""``--target-key KEY`` on ``greenmeter compare`` and ``greenmeter optimize``: the option beats the file's key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greenmeter.cli.main import main  # noqa: E402

# A model and dict batches whose targets sit under "y", not the file's "labels"; the module lies next to the
# TOML file, whose folder greenmeter searches first.
MODULE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def make():
    torch.manual_seed(0)
    return Net()


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    return [{"x": x[i:i + 16], "y": y[i:i + 16]} for i in range(0, 64, 16)]
'''

CONFIG = """
name = "target-key"

[model]
factory = "{module}:make"

[data]
eval = "{module}:data"
batch_size = 16
target_key = "labels"

[compare]
baseline = "float"
recipes = ["prune:0.5"]
repeats = 2
warmup = 0
min_repeat_s = 0.01

[optimize]
recipes = ["prune:0.5"]
probes = []
final_repeats = 2
finalists = 1
max_drop = 1.0
"""


def _config(tmp_path: Path, module: str) -> Path:
    (tmp_path / f"{module}.py").write_text(MODULE)
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(module=module))
    return path


def test_compare_target_key_overrides_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, "gm_target_key_compare")
    assert main(["compare", str(config), "--no-store", "--quiet"]) == 1  # the file's "labels" is not in the batches
    assert "no 'labels'" in capsys.readouterr().err
    out = tmp_path / "cmp.json"
    code = main(["compare", str(config), "--no-store", "--quiet", "--target-key", "y", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert [v["name"] for v in data["variants"]] == ["float", "prune:0.5"]
    assert all(v["status"] == "ok" for v in data["variants"])
    assert data["samples_per_pass"] == 64  # every batch read, the targets under "y"
    assert data["variants"][0]["macs_per_sample"] == 6 * 16 + 16 * 3


def test_optimize_target_key_overrides_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, "gm_target_key_optimize")
    assert main(["optimize", str(config), "--no-store", "--quiet"]) == 1
    assert "no 'labels'" in capsys.readouterr().err
    out = tmp_path / "opt.json"
    code = main(["optimize", str(config), "--no-store", "--quiet", "--target-key", "y", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert [c["spec"] for c in data["candidates"]] == ["prune:0.5"]
    assert data["comparison"]["samples_per_pass"] == 64


@pytest.mark.parametrize("verb", ["compare", "optimize"])
def test_an_empty_target_key_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([verb, str(tmp_path / "c.toml"), "--target-key", ""])
    assert exit_.value.code == 2
    assert "--target-key must be a non-empty string" in capsys.readouterr().err
