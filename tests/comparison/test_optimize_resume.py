"""Resuming ``greenmeter.optimize`` from the store's journal: what was done is read back, not done again."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter import ConfigError, Meter, Store  # noqa: E402
from greenmeter.comparison.journal import data_hash, dump_model, fingerprint, model_hash  # noqa: E402
from greenmeter.comparison.optimize import optimize  # noqa: E402
from greenmeter.demo.digits import DigitsData, make_digits_cnn  # noqa: E402

RECIPES = ["int8-dynamic", "int4", "int8-static", "channels:0.5", "channels:0.5+int8-static"]
FAST = {"min_repeat_s": 0.02, "screen_repeats": 2, "final_repeats": 2, "probes": ("int8",), "finalists": 1,
        "max_drop": 0.02, "recipes": RECIPES, "time_budget_s": 600}


class Interrupt:
    """A progress callable that records the lines and raises Ctrl-C at the first line containing ``at``."""

    def __init__(self, at: str | None = None) -> None:
        self.at = at
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self.at is not None and self.at in line:
            raise KeyboardInterrupt


@pytest.fixture(scope="session")
def run_search(trained: nn.Module, digits: DigitsData, one_epoch_trainer: Callable[..., None]):  # noqa: ANN201
    """``run_search(store, progress, **settings)``: the search of these tests on the shared baseline."""

    def run(store: Path, progress: Interrupt, **kwargs):  # noqa: ANN202
        return optimize(trained, (digits.x_test, digits.y_test), train_fn=one_epoch_trainer, progress=progress,
                        meter=Meter(backends=["cpu-estimate"], store=store), **{**FAST, **kwargs})

    return run


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, run_search) -> Path:  # noqa: ANN001
    """A store holding a search interrupted by Ctrl-C just before its second screening round."""
    store = tmp_path_factory.mktemp("resume") / "runs.db"
    first = Interrupt(at="screening round 2")
    with pytest.raises(KeyboardInterrupt):
        run_search(store, first)
    assert any("resume=True" in line for line in first.lines), first.lines  # the user is told how to go on
    return store


def _copy(store: Path, tmp_path: Path) -> Path:
    """A copy of the store, so each test resumes the same interrupted search."""
    target = tmp_path / "runs.db"
    with Store(store) as s:  # checkpoint the WAL into the file
        s.close()
    src = sqlite3.connect(store)
    dst = sqlite3.connect(target)
    src.backup(dst)
    src.close()
    dst.close()
    return target


def test_an_interrupted_search_leaves_its_finished_steps_in_the_journal(interrupted: Path) -> None:
    with Store(interrupted) as store:
        [(key, name, _, fp, spent_s, steps)] = store.unfinished_searches()
        header, journal = store.search_journal(key)
        assert store.last_optimization() is None
    assert name == "optimize" and spent_s > 0 and header["spent_s"] == spent_s
    assert fp["settings"]["recipes"] == RECIPES and fp["settings"]["max_drop"] == 0.02
    assert steps == len(journal)
    # "interrupted": written at the Ctrl-C, so the time spent in the round it cut short counts against the budget
    assert set(journal) == {"sensitivity", "round:1", "interrupted", *(f"candidate:{s}" for s in RECIPES)}
    assert spent_s > journal["round:1"][0]["rung"]["seconds"]
    assert journal["candidate:channels:0.5"][1] is not None  # a plain module: stored
    assert journal["candidate:int8-dynamic"][1] is not None
    assert journal["round:1"][0]["rung"]["index"] == 1


def test_a_resumed_search_reads_back_what_was_done_and_finishes(interrupted: Path, tmp_path: Path, run_search) -> None:  # noqa: ANN001
    store = _copy(interrupted, tmp_path)
    with Store(store) as s:
        [(key, *_)] = s.unfinished_searches()
        _, journal = s.search_journal(key)
    lines = Interrupt()
    result = run_search(store, lines, resume=True)
    text = "\n".join(lines.lines)
    assert "resuming the search started" in text and "per-layer sensitivity: read back from the journal" in text
    for spec in ("int8-dynamic", "int4", "channels:0.5"):
        assert f"{spec}: read back from the journal" in text
        assert f"making {spec}\n" not in text + "\n"
        old = journal[f"candidate:{spec}"][0]
        assert result.candidate(spec).making_j == old["making"]["energy_j"]  # measured once, in the first run
    # torch 2.13 cannot unpickle FX-converted int8 models: rebuilt, and the stack only on top of its stored first step
    assert "making int8-static again: it could not be loaded back" in text
    assert "making channels:0.5+int8-static again" in text
    assert "screening round 1: read back from the journal" in text
    assert result.rungs[0].to_dict() == journal["round:1"][0]["rung"]
    assert any(f.startswith("resumed from the store's journal") for f in result.flags)
    assert len(result.rungs) >= 2  # the round the first run never reached was run now
    with Store(store) as s:
        assert s.unfinished_searches() == []  # stored whole: the journal is gone
        assert s.last_optimization().chosen == result.chosen


def test_resuming_with_other_settings_starts_anew_and_says_what_differs(interrupted: Path, tmp_path: Path, run_search) -> None:  # noqa: ANN001
    store = _copy(interrupted, tmp_path)
    lines = Interrupt(at="[1/")  # stop at once: only the message matters
    with pytest.raises(KeyboardInterrupt):
        run_search(store, lines, resume=True, max_drop=0.03)
    assert any("nothing to resume; an unfinished search named 'optimize' exists, but its settings: max_drop differ"
               in line for line in lines.lines)
    with Store(store) as s:
        assert len(s.unfinished_searches()) == 2  # the old journal is kept: the first settings can still resume


def test_the_time_budget_counts_what_the_search_already_spent(interrupted: Path, tmp_path: Path, run_search) -> None:  # noqa: ANN001
    store = _copy(interrupted, tmp_path)
    conn = sqlite3.connect(store)
    conn.execute("UPDATE searches SET spent_s = 1e6")
    conn.commit()
    conn.close()
    result = run_search(store, Interrupt(), resume=True)
    assert len(result.rungs) == 1  # the journaled round only: no time was left for another
    assert any("the time budget ran out after 1 screening round(s)" in f for f in result.flags)
    assert result.duration_s > 1e6


def test_a_stored_model_that_gives_another_metric_is_rebuilt(interrupted: Path, tmp_path: Path, run_search) -> None:  # noqa: ANN001
    store = _copy(interrupted, tmp_path)
    wrong = make_digits_cnn(seed=1)  # untrained: not the model the journal's metric was computed on
    conn = sqlite3.connect(store)
    conn.execute("UPDATE search_steps SET model = ? WHERE step = 'candidate:int4'", (dump_model(wrong),))
    conn.commit()
    conn.close()
    lines = Interrupt(at="screening round 2")
    with pytest.raises(KeyboardInterrupt):
        run_search(store, lines, resume=True)
    assert any("making int4 again: its stored model no longer gives the metric journaled for it" in line
               for line in lines.lines)


def test_without_resume_an_old_journal_is_discarded(interrupted: Path, tmp_path: Path, run_search) -> None:  # noqa: ANN001
    store = _copy(interrupted, tmp_path)
    lines = Interrupt(at="[2/")
    with pytest.raises(KeyboardInterrupt):
        run_search(store, lines)
    assert not any("journal" in line for line in lines.lines[:-1])
    with Store(store) as s:
        [(key, *_rest, steps)] = s.unfinished_searches()
        _, journal = s.search_journal(key)
    assert set(journal) == {"sensitivity", "candidate:int8-dynamic", "interrupted"}  # the new search's steps only


def test_resume_needs_a_store(digits: DigitsData, trained: nn.Module) -> None:
    with pytest.raises(ConfigError, match="resume=True reads the search back from a run store"):
        optimize(trained, (digits.x_test, digits.y_test), resume=True, progress=False)
    with pytest.raises(ConfigError, match="or a meter made with one"):
        optimize(trained, (digits.x_test, digits.y_test), resume=True, progress=False,
                 meter=Meter(backends=["cpu-estimate"]))


def test_fingerprints_follow_content() -> None:
    x = torch.arange(12.0).reshape(3, 4)
    assert data_hash((x, torch.tensor([1, 2, 3]))) == data_hash((x.clone(), torch.tensor([1, 2, 3])))
    assert data_hash((x, torch.tensor([1, 2, 3]))) != data_hash((x, torch.tensor([1, 2, 4])))
    assert data_hash(x) != data_hash(x.reshape(4, 3))  # the shape counts
    dataset = torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 0]))
    assert data_hash(torch.utils.data.DataLoader(dataset, batch_size=2)) == data_hash(dataset.tensors)
    assert data_hash(torch.utils.data.DataLoader([1, 2, 3])) == data_hash([1, 2, 3])  # a list dataset: by content
    assert data_hash(torch.utils.data.DataLoader(range(3))) is None
    a, b = make_digits_cnn(seed=0), make_digits_cnn(seed=0)
    assert model_hash(a) == model_hash(b)
    with torch.no_grad():
        next(b.parameters())[0].add_(1e-3)
    assert model_hash(a) != model_hash(b)
    fp = fingerprint(a, [(x, x)], [(x, x)], range(3), {"seed": 0})
    assert fp["training data"] == "unchecked (range)" and fp["evaluation data"] == fp["selection data"]
