"""``%load_ext greenmeter`` and ``%%greenmeter`` in a real Jupyter kernel: a notebook executed with nbclient and an
ipykernel kernel running this interpreter, offline, with every Jupyter, IPython and greenmeter path in tmp_path."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

KERNEL = "greenmeter-test"


def _kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel spec that runs this interpreter, and Jupyter's and IPython's own folders, all in tmp_path."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "greenmeter test", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "jupyter-config"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("GREENMETER_STORE", str(tmp_path / "default.db"))
    monkeypatch.setenv("MPLBACKEND", "Agg")


def _outputs(cell: Any, output_type: str) -> list[Any]:
    return [o for o in cell.outputs if o.output_type == output_type]


def _stream(cell: Any, name: str) -> str:
    return "".join(o.text for o in _outputs(cell, "stream") if o.name == name)


def test_a_notebook_measures_a_cell_and_shows_records_with_their_bands(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel_env(tmp_path, monkeypatch)
    store = tmp_path / "runs.db"
    cells = [
        "%load_ext greenmeter",
        f"%%greenmeter --name loop --samples 1000 --store {store} --as loop_m\n"
        "total = 0\nfor i in range(300000):\n    total += i",
        "from greenmeter.store.database import Store\n"
        f"with Store({str(store)!r}, readonly=True) as s:\n    run = s.last_run()\n"
        "print(loop_m is _greenmeter, _greenmeter.name, _greenmeter.samples, total, _greenmeter.energy_j > 0,\n"
        "      run.name, run.status, run.windows_count)",
        "import torch\nfrom torch import nn\nimport greenmeter\n"
        "torch.manual_seed(0)\nx = torch.randn(64, 8)\ny = (x[:, 0] > 0).long()\n"
        "model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n"
        "c = greenmeter.compare({'float': model, 'pruned <b>': 'prune:0.5'}, (x, y), repeats=3, min_repeat_s=0.05,\n"
        "                       meter=greenmeter.Meter(['cpu-estimate', 'ram-estimate'], sync=None))\n"
        "c",
        "%%greenmeter --name boom --quiet\nraise ValueError('boom in the cell')",
        "%%greenmeter --samples many\npass",
        "print(_greenmeter.name, _greenmeter.status, _greenmeter.error)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    for cell in nb.cells[4:6]:
        cell.metadata["tags"] = ["raises-exception"]  # nbclient goes on past these cells' errors
    nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=120, resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    load, magic, reader, compared, raising, refused, after = nb.cells

    assert not load.outputs  # %load_ext says nothing when it works
    # the magic's cell shows its measurement as HTML (and short Markdown), with the band and the provenance
    shown = _outputs(magic, "execute_result")
    assert len(shown) == 1
    html, md = shown[0].data["text/html"], shown[0].data["text/markdown"]
    assert "greenmeter: loop (ok)" in html and "1000 samples" in html and "<th>band</th>" in html
    assert "estimated" in html and "cpu-estimate:cpu" in html and "band " in md
    # the next cell reads the result: the same object under _greenmeter and --as, the cell's own variables, the store
    assert _stream(reader, "stdout").split() == ["True", "loop", "1000", str(sum(range(300000))), "True", "loop",
                                                 "ok", "1"]
    # a comparison's own view: the band of each variant's energy, the ratio's band, the chart; names escaped
    result = _outputs(compared, "execute_result")[0].data["text/html"]
    assert "band mJ/sample" in result and "energy vs baseline [band]" in result and "<svg" in result
    assert "pruned &lt;b&gt;" in result and "pruned <b>" not in result
    # compare's progress bar rendered in the cell: a widget with ipywidgets, else tqdm's text bar on stderr
    widgets = [o for o in _outputs(compared, "display_data") if "application/vnd.jupyter.widget-view+json" in o.data]
    if not widgets:
        bar = _stream(compared, "stderr")
        assert "100%|" in bar and " 9/9 [" in bar and "\r" in bar  # redrawn in place, to the end
    # an exception in the cell is the cell's error, unchanged, and its measurement is kept, marked failed
    error = _outputs(raising, "error")
    assert [(e.ename, e.evalue) for e in error] == [("ValueError", "boom in the cell")]
    assert [(e.ename, e.evalue) for e in _outputs(refused, "error")] == [
        ("ConfigError", "--samples must be a whole number >= 1, not 'many'")]
    assert _stream(after, "stdout") == "boom failed ValueError: boom in the cell\n"


def test_import_greenmeter_loads_no_ipython_and_the_extension_hook_is_there() -> None:
    import subprocess

    code = ("import sys, greenmeter; print(callable(greenmeter.load_ipython_extension), "
            "sorted(m for m in ('IPython', 'tqdm', 'torch', 'greenmeter.integrations.notebook') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "True []\n"
