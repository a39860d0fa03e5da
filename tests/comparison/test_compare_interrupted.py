"""``compare`` cut short by Ctrl-C or SIGTERM: the rounds every variant completed are kept as an interrupted
comparison, every figure in it comes from a stored window, and the interruption goes on unchanged.

The interruption is raised where the user's own code runs during a comparison (the progress callable, the
metric) or from a store at its boundary; the comparison code runs unchanged.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter.comparison.compare import compare  # noqa: E402
from greenmeter.metering.interrupts import Terminated, sigterm_interrupts  # noqa: E402
from greenmeter.records.comparison import Comparison  # noqa: E402
from greenmeter.store.database import Store  # noqa: E402

NAMES = ("base", "wide", "narrow")


def _model(width: int) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)


def _compare(store: Any, progress: Callable[[str], None], repeats: int = 5) -> Comparison:
    return compare({"base": _model(16), "wide": _model(32), "narrow": _model(4)}, _data(), repeats=repeats,
                   min_repeat_s=0.01, store=store, progress=progress, name="cut")


def _interrupt_after(prefix: str, raised: BaseException) -> tuple[Callable[[str], None], list[str]]:
    """A progress callable that raises ``raised`` once it is given a line starting with ``prefix``."""
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if line.startswith(prefix):
            raise raised

    return progress, lines


def _check_figures_come_from_the_stored_windows(store: Store, c: Comparison) -> None:
    """Every energy figure of the comparison is a stored window's joules per sample; none is made up."""
    windows = {w.name: w for w in store.windows(c.run_id)}
    for v in c.variants:
        assert v.ok and len(v.energy_values_j) == c.repeats and len(v.metric_values) == c.repeats
        for k, value in enumerate(v.energy_values_j, start=1):
            w = windows[f"{v.name}/repeat-{k}"]
            assert w.status == "ok" and w.samples
            assert value == pytest.approx(w.energy_j / w.samples) and math.isfinite(value) and value >= 0
        e = v.energy_per_sample_j
        assert e is not None and e.mean == pytest.approx(sum(v.energy_values_j) / c.repeats)


def test_ctrl_c_mid_round_keeps_the_complete_rounds_as_an_interrupted_comparison(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    raised = KeyboardInterrupt()
    progress, lines = _interrupt_after("wide repeat 3:", raised)  # round 3: base and wide measured, narrow not
    with pytest.raises(KeyboardInterrupt) as info:
        _compare(path, progress)
    assert info.value is raised  # the interruption goes on unchanged
    assert lines[-1].startswith("interrupted: stored the 2 repeat(s)")
    with Store(path) as store:
        (run,) = store.list_runs()
        c = store.last_comparison()
        assert c is not None
        assert run.status == "interrupted" and c.run_id == run.id
        assert [w.name for w in store.windows(run.id)][-2:] == ["base/repeat-3", "wide/repeat-3"]  # kept in the run
        _check_figures_come_from_the_stored_windows(store, c)
    assert c.status == "interrupted" and not c.complete and c.repeats == 2
    assert [v.name for v in c.variants] == list(NAMES)
    assert any(f.startswith("interrupted by Ctrl-C (SIGINT) in repeat 3 of 5") for f in c.flags), c.flags
    notes = c.table().splitlines()[-3:]  # the notes under the table: interrupted, the legend, the band
    assert notes[0].startswith("INTERRUPTED: only the 2 repeat(s)") and notes[2].startswith("band: ")
    assert Comparison.from_json(c.to_json()) == c


def test_an_interruption_before_a_round_completes_stores_no_comparison(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    progress, _ = _interrupt_after("base repeat 1:", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        _compare(path, progress)
    with Store(path) as store:
        (run,) = store.list_runs()
        assert run.status == "interrupted"
        assert [w.name for w in store.windows(run.id)] == ["base/repeat-1"]
        assert store.last_comparison() is None  # no variant has a figure every other one has too


def test_sigterm_is_an_interruption_of_its_own_during_compare(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"

    def progress(line: str) -> None:
        if line.startswith("base repeat 2:"):
            signal.raise_signal(signal.SIGTERM)  # delivered to compare's handler, in this thread

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(Terminated):
        _compare(path, progress)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # compare's handler was for its own length only
    with Store(path) as store:
        (run,) = store.list_runs()
        c = store.last_comparison()
    assert run.status == "interrupted" and "Terminated" in (run.note or "")
    assert c is not None and c.status == "interrupted" and c.repeats == 1
    assert any(f.startswith("interrupted by SIGTERM in repeat 2 of 5") for f in c.flags), c.flags


class _StoreInterruptedOnce(Store):
    """A store whose first ``add_comparison`` is cut by Ctrl-C before it writes (as a Ctrl-C at that moment)."""

    cut = False

    def add_comparison(self, comparison: Comparison) -> str:
        if not self.cut:
            self.cut = True
            raise KeyboardInterrupt
        return super().add_comparison(comparison)


def test_ctrl_c_while_the_comparison_is_stored_keeps_every_repeat_marked_interrupted(tmp_path: Path) -> None:
    with _StoreInterruptedOnce(tmp_path / "runs.db") as store:
        with pytest.raises(KeyboardInterrupt):
            _compare(store, lambda line: None, repeats=3)
        (run,) = store.list_runs()
        c = store.last_comparison()
        assert c is not None and [row[4] for row in store.list_comparisons()] == ["interrupted"]
        _check_figures_come_from_the_stored_windows(store, c)
    assert run.status == "interrupted"
    assert c.status == "interrupted" and c.repeats == 3
    assert any(f.startswith("interrupted by Ctrl-C (SIGINT) after all 3 repeats") for f in c.flags), c.flags


def test_a_comparison_that_ends_is_complete_and_older_records_read_as_complete(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with sigterm_interrupts():  # a handler the program installed is left alone: compare's nests inside it
        handler = signal.getsignal(signal.SIGTERM)
        c = _compare(path, lambda line: None, repeats=2)
        assert signal.getsignal(signal.SIGTERM) is handler
    assert c.status == "complete" and c.complete and c.repeats == 2
    assert not any("interrupted" in f for f in c.flags) and "INTERRUPTED" not in c.table()
    data = c.to_dict()
    del data["status"]  # written before the field was kept
    assert Comparison.from_dict(data).status == "complete"
    with Store(path) as store:
        assert store.last_comparison() == c and store.list_runs()[0].status == "ok"
