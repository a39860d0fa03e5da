"""``track(store=...)`` and ``measure(store=...)``: each call or block becomes a finished run of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

import greenmeter
from greenmeter import ConfigError, Meter, Store


def _work() -> int:
    return sum(i * i for i in range(200_000))


def test_each_tracked_call_is_a_finished_stored_run(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"

    @greenmeter.track(name="train", store=path, samples=10)
    def train() -> int:
        greenmeter.current_meter().step(10)
        return _work()

    train()
    first = train.last_measurement
    train()
    with Store(path) as store:
        runs = store.list_runs()
        assert [r.name for r in runs] == ["train", "train"] and all(r.status == "ok" for r in runs)
        windows = [store.windows(r.id) for r in runs]
        assert all(len(w) == 1 and w[0].name == "train" and w[0].samples == 10 for w in windows)
        oldest = windows[-1][0]
        assert oldest.energy_j == pytest.approx(first.energy_j) and oldest.steps == 1


def test_a_measured_block_that_raises_is_stored_as_failed(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with pytest.raises(ZeroDivisionError):
        with greenmeter.measure("eval", store=path, country="FRA"):
            _work()
            _ = 1 / 0
    with Store(path) as store:
        (run,) = store.list_runs()
        assert run.name == "eval" and run.status == "failed"
        (window,) = store.windows(run.id)
        assert window.status == "failed" and "ZeroDivisionError" in (window.error or "")
        assert window.carbon.intensity.region == "FRA"


def test_store_and_meter_together_are_refused(tmp_path: Path) -> None:
    meter = Meter(backends=["cpu-estimate"])
    with pytest.raises(ConfigError, match="give store= or meter=, not both"):
        greenmeter.measure("x", store=tmp_path / "a.db", meter=meter)
    with pytest.raises(ConfigError, match="give store= or meter=, not both"):
        greenmeter.track(name="x", store=tmp_path / "a.db", meter=meter)


def test_a_meter_closes_a_store_it_opened_and_leaves_a_given_one_open(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    by_path = Meter(backends=["cpu-estimate"], store=str(path), name="by path")
    with by_path.window("w"):
        _work()
    by_path.close()
    assert not path.with_name("runs.db-wal").exists()  # closed: the last connection removes the log
    with Store(path) as given:
        meter = Meter(backends=["cpu-estimate"], store=given, name="given")
        with meter.window("w", samples=3):
            _work()
        meter.close()
        runs = {r.name: r for r in given.list_runs()}  # still open
        assert meter.store is given and runs["given"].id == meter.run_id
        assert [w.samples for w in given.windows(meter.run_id)] == [3]
    assert {n: (r.status, r.kind, r.windows_count) for n, r in runs.items()} == {
        "by path": ("ok", "api", 1), "given": ("ok", "api", 1)}


def test_a_meter_given_store_false_stores_nothing_and_a_bad_store_is_a_config_error(tmp_path: Path) -> None:
    meter = Meter(backends=["cpu-estimate"], store=False)
    with meter.window("w"):
        pass
    meter.close()
    assert meter.store is None and meter.run_id is None
    with pytest.raises(ConfigError, match="store must be a greenmeter.Store, a path, True"):
        Meter(backends=["cpu-estimate"], store=3)  # type: ignore[arg-type]
