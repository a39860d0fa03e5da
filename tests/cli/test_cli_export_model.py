"""``greenmeter export-model CONFIG --variant SPEC --out PATH``: an ONNX file out, checked and measured beside PyTorch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")

from greenmeter.cli.main import main  # noqa: E402
from greenmeter.store.database import Store  # noqa: E402

CONFIG = """
name = "digits-export"

[model]
factory = "greenmeter.demo.digits:trained_digits_cnn"
kwargs = { epochs = 1 }

[data]
eval = "greenmeter.demo.digits:eval_data"
train = "greenmeter.demo.digits:train_data"

[training]
function = "greenmeter.demo.digits:train_fn"

[compare]
baseline = "float"
repeats = 2
min_repeat_s = 0.05

[compare.variants]
slim = "channels:0.5"
"""


def test_export_model_writes_onnx_and_compares_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    out, db = tmp_path / "slim.onnx", tmp_path / "runs.db"
    code = main(["export-model", str(config), "--variant", "slim", "--out", str(out), "--quiet", "--store", str(db)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.is_file() and f"wrote {out}" in captured.out
    assert "slim-onnx" in captured.out  # both in one table
    # stored like compare's comparison, its id printed, so `greenmeter report ID` renders it
    found = re.search(r"stored in (.+) as comparison ([0-9a-f]{12}); render it with `greenmeter report \2`",
                      captured.out)
    assert found is not None and found[1] == str(db), captured.out
    with Store(db) as store:
        (row,) = store.list_comparisons()
        assert row[0].startswith(found[2]) and row[1] == "export-model slim"
        stored = store.get_comparison(row[0])
    torch_variant, onnx_variant = stored.variant("slim"), stored.variant("slim-onnx")
    # the ONNX graph's own facts: the PyTorch variant's MACs, its weights less the folded batch norms
    assert onnx_variant.macs_per_sample == torch_variant.macs_per_sample > 0
    assert onnx_variant.macs_method == "onnx graph shapes"
    assert 0 < onnx_variant.params_total < torch_variant.params_total
    html = tmp_path / "report.html"
    assert main(["report", found[2], "--store", str(db), "-o", str(html)]) == 0
    assert "slim-onnx" in html.read_text()


# A model of two inputs and dict batches whose targets sit under "y": exported with named inputs and a dynamic
# sequence, compared under ONNX Runtime batch by batch.
PAIR_MODULE = '''
import torch
from torch import nn


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(30, 8), nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1).float()
        return self.head(h.sum(1))


def make():
    torch.manual_seed(0)
    return Pair()


def data():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 30, (8, n), generator=g), "attention_mask": torch.ones(8, n, dtype=torch.long),
             "y": torch.randint(0, 2, (8,), generator=g)} for n in (5, 11, 7)]
'''

PAIR_CONFIG = """
[model]
factory = "gm_export_pair:make"

[data]
eval = "gm_export_pair:data"

[compare]
baseline = "float"
recipes = ["prune:0.5"]
repeats = 2
warmup = 0
min_repeat_s = 0.01
"""


def test_export_model_of_dict_batches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gm_export_pair.py").write_text(PAIR_MODULE)
    config = tmp_path / "pair.toml"
    config.write_text(PAIR_CONFIG)
    out = tmp_path / "pair.onnx"
    code = main(["export-model", str(config), "--variant", "float", "--out", str(out), "--quiet", "--no-store",
                 "--target-key", "y"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "float-onnx" in captured.out and "stored in" not in captured.out
    import onnx

    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]


def test_export_model_int8_dynamic_says_what_to_choose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    code = main(["export-model", str(config), "--variant", "int8-dynamic", "--out", str(tmp_path / "q.onnx"),
                 "--no-compare"])
    err = capsys.readouterr().err
    assert code == 1
    assert "'dynamic_int8' method (recipe 'int8-dynamic')" in err and "quantize='dynamic'" in err
    assert not (tmp_path / "q.onnx").exists()
