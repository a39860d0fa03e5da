"""Fixtures of the output tests: a copy of the schema-2 store fixture, the comparison it holds, and a hand-made
optimize result around it (:func:`make_optimization`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from greenmeter.records.comparison import Comparison
from greenmeter.records.optimization import CandidateOutcome, OptimizeResult, Rung
from greenmeter.records.sensitivity import LayerSensitivity, Sensitivity
from greenmeter.stats import welch_test
from greenmeter.store.database import Store

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_schema2.db"


@pytest.fixture()
def store_path(tmp_path: Path) -> Path:
    """A private copy of ``tests/fixtures/store_schema2.db`` (a comparison and runs from an older schema)."""
    path = tmp_path / "runs.db"
    shutil.copyfile(FIXTURE, path)
    return path


@pytest.fixture()
def comparison(store_path: Path) -> Comparison:
    """The latest comparison of that store."""
    with Store(store_path) as store:
        found = store.last_comparison()
    assert found is not None
    return found


#: A candidate's reason with text that HTML and Markdown must show literally (an error message can hold any text).
HOSTILE_REASON = "failed: <script>alert(1)</script> | a `tick` | *star*"


def make_optimization(comparison: Comparison, *, name: str = "digits-optimize") -> OptimizeResult:
    """A hand-made optimize result whose final comparison is ``comparison`` (the fixture's, with
    ``channels:0.5`` chosen), with every candidate status, two screening rounds and a sensitivity table."""
    sensitivity = Sensitivity(
        metric_name="accuracy", baseline_metric=0.9711, samples=450, probes=("int8", "int4"),
        layers=(LayerSensitivity("features.0", "Conv2d", 320, {"int8": 0.9689, "int4": None},
                                 {"int8": 0.0022, "int4": None}, {"int8": 3, "int4": None}),
                LayerSensitivity("classifier.2", "Linear", 650, {"int8": 0.9400, "int4": 0.9011},
                                 {"int8": 0.0311, "int4": 0.0700}, {"int8": 16, "int4": 33})),
        calibration="the first 4 training batches")
    candidates = (
        CandidateOutcome("channels:0.5", "chosen", "the least energy per sample within the budget", "prune rule", 2,
                         0.99, 0.02, 0.008, 0.355, 12.5, 3.0),
        CandidateOutcome("int8-dynamic", "finalist", "no measurable saving (p = 0.84)", "quantizer", 2, 0.9733, 0.0022,
                         -0.004, 1.0097, 0.21, 0.1),
        CandidateOutcome("prune:0.5", "screened out", "more energy per sample than the kept candidates", "prune rule",
                         1, 0.9733, 0.0022, None, 1.01, 0.5, 0.2),
        CandidateOutcome("int4[keep=classifier.2]", "over budget", "accuracy fell 3.1 pp, beyond the 1 pp budget",
                         "quantizer", 0, 0.94, -0.031),
        CandidateOutcome("int8-static", "failed", HOSTILE_REASON, "user"),
        CandidateOutcome("distill:0.25", "not tried", "the time budget ran out before it was built", "distill rule"),
    )
    rungs = (Rung(1, 3, ("int8-dynamic", "prune:0.5", "channels:0.5"), ("int8-dynamic", "channels:0.5"), 12.0),
             Rung(2, 9, ("int8-dynamic", "channels:0.5"), ("int8-dynamic", "channels:0.5"), 30.5))
    versus = ("int8-dynamic", welch_test([1.0, 1.1, 0.9, 1.05], [0.3, 0.35, 0.33, 0.31]))
    return OptimizeResult(
        name=name, created_at="2026-11-29T05:10:00+00:00", baseline="float", metric_name="accuracy", max_drop=0.01,
        chosen="channels:0.5", reason="channels:0.5 uses the least energy per sample within the budget",
        comparison=comparison, candidates=candidates, rungs=rungs, sensitivity=sensitivity,
        limits={"max_latency_ratio": 1.5}, selection="validation data", versus_best_single=versus,
        time_budget_s=600.0, duration_s=91.0, flags=("the sensitivity probes ran on 450 samples only",))
