"""examples/attention_compare.py runs in quick mode as a subprocess; what it wrote and printed is checked."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from greenmeter import Comparison

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "attention_compare.py"
TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def test_the_example_documents_itself_and_takes_quick_and_out() -> None:
    source = SCRIPT.read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source))
    assert doc and "--quick" in doc and "position-only baseline" in doc
    assert '"--quick"' in source and '"--out"' in source and "./greenmeter-example-out" in source


def test_quick_run_trains_both_attentions_above_the_position_baseline_and_compares_them(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",  # one thread: a shared 2-core machine stalls a second
               GREENMETER_STORE=str(tmp_path / "store.db"), XDG_DATA_HOME=str(tmp_path / "xdg"),
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"

    result = Comparison.from_json((out / "attention_comparison.json").read_text(encoding="utf-8"))
    figures = json.loads((out / "attention_figures.json").read_text(encoding="utf-8"))
    assert [v.name for v in result.variants] == ["softmax", "linear"]
    assert all(v.ok for v in result.variants), [(v.name, v.error) for v in result.variants]
    assert (result.metric_name, result.samples_per_pass, result.repeats) == ("per-token accuracy", 512, 3)
    assert (figures["seq_len"], figures["vocab"], figures["chance"]) == (32, 8, 0.125)
    # Predicting each position's most frequent sorted token scores about 0.61 at length 32 over 8 symbols
    # (512 test sequences = 16,384 tokens: its sampling error is under 1 pp).
    assert 0.5 < figures["position_baseline"] < 0.7
    for v in result.variants:
        # A model that beats the position-only baseline by 15 pp reads its input: no function of the
        # position alone can. Both learn the task in the quick run (measured: about 0.9 each).
        assert v.metric is not None and v.metric > figures["position_baseline"] + 0.15, (v.name, v.metric)
        assert v.metric == pytest.approx(figures["variants"][v.name]["accuracy"])
        e = v.energy_per_sample_j
        assert e is not None and math.isfinite(e.mean) and 0 < e.low <= e.mean <= e.high
        assert e.mean == pytest.approx(figures["variants"][v.name]["energy_per_sequence_j"])
        assert v.making is not None and v.making.energy_j > 0 and v.making.duration_s > 0
        assert v.latency_sample is not None and 0 < v.latency_sample.p50_s <= v.latency_sample.p95_s
        assert v.provenance
        # the printed line carries the comparison's figures
        pattern = rf"^{v.name}: per-token accuracy ([\d.]+) .*?([\d.e+-]+) mJ/sequence"
        line = re.search(pattern, proc.stdout, re.MULTILINE)
        assert line, proc.stdout
        assert float(line.group(1)) == pytest.approx(v.metric, abs=1e-4)
        assert float(line.group(2)) == pytest.approx(e.mean * 1e3, rel=1e-3)
    # the same architecture but for the attention: the same parameter count and size
    soft, lin = result.variants
    assert soft.params_total == lin.params_total and soft.params_total > 0
    assert "linear attention takes" in proc.stdout

    html = (out / "attention_report.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    for text in ("attention-sorting-32", "softmax", "linear", "per-token accuracy"):
        assert text in html, text
    assert html.count("<svg") >= 2
