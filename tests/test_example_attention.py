"""examples/attention_compare.py runs in quick mode as a subprocess (as the other examples do, through
``tests.test_examples``); what it wrote and printed is checked. Its docstring and options are checked with
the others in ``tests/test_examples.py``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from greenmeter import Comparison
from tests.test_examples import _example

pytestmark = pytest.mark.slow


def test_quick_run_trains_both_attentions_above_the_position_baseline_and_compares_them(tmp_path: Path) -> None:
    out, proc = _example("attention_compare.py", tmp_path)

    result = Comparison.from_json((out / "attention_comparison.json").read_text(encoding="utf-8"))
    figures = json.loads((out / "attention_figures.json").read_text(encoding="utf-8"))
    assert [v.name for v in result.variants] == ["softmax", "linear"]
    assert all(v.ok for v in result.variants), [(v.name, v.error) for v in result.variants]
    assert (result.metric_name, result.samples_per_pass, result.repeats) == ("per-token accuracy", 512, 3)
    # Predicting each position's most frequent sorted token scores about 0.61 at length 32 over 8 symbols
    # (512 test sequences = 16,384 tokens: its sampling error is under 1 pp).
    assert 0.5 < figures["position_baseline"] < 0.7
    for v in result.variants:
        # A model that beats the position-only baseline by 15 pp reads its input: no function of the
        # position alone can. Both learn the task in the quick run (measured: about 0.9 each).
        assert v.metric is not None and v.metric > figures["position_baseline"] + 0.15, (v.name, v.metric)
        e = v.energy_per_sample_j
        assert e is not None and math.isfinite(e.mean) and 0 < e.low <= e.mean <= e.high
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
