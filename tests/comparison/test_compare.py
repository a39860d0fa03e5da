"""``greenmeter.compare`` on real digits models: figures, interleaving, failures, making cost, storage."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter import ConfigError, Meter  # noqa: E402
from greenmeter.records.comparison import Comparison  # noqa: E402
from greenmeter.demo.digits import DigitsData, make_digits_cnn, train_classifier  # noqa: E402
from greenmeter.comparison.compare import Variant, compare  # noqa: E402
from greenmeter.stats import bootstrap_test  # noqa: E402
from greenmeter.store.database import Store  # noqa: E402
from tests.fakes.work import LayerWorkCounter  # noqa: E402

FAST = {"repeats": 3, "min_repeat_s": 0.05, "progress": False}


@pytest.fixture(scope="module")
def trained(digits: DigitsData) -> nn.Module:
    torch.set_num_threads(2)
    return train_classifier(make_digits_cnn(seed=0), digits, epochs=8, seed=0)


@pytest.fixture(scope="module")
def result(digits: DigitsData, trained: nn.Module) -> Comparison:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("kernel exploded")

    wrong_shape = nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
    meter = Meter(backends=["cpu-estimate"])
    order: list[str] = []
    meter.listeners.append(lambda m: order.append(m.name))
    comparison = compare(
        {"float": trained, "pruned": "prune:0.5", "int8": "int8-dynamic", "half": make_digits_cnn(width=0.5),
         "broken": Broken(), "wrong": wrong_shape},
        (digits.x_test, digits.y_test), meter=meter, **FAST)
    object.__setattr__(comparison, "window_order", order)  # for the interleaving test only
    meter.close()
    return comparison


def test_every_working_variant_has_real_figures(result: Comparison, trained: nn.Module, digits: DigitsData) -> None:
    base = result.variant("float")
    assert result.baseline == "float" and result.samples_per_pass == 450 and result.passes_per_repeat >= 1
    assert base.metric is not None and base.metric >= 0.95
    for name in ("float", "pruned", "int8", "half"):
        v = result.variant(name)
        assert v.ok, v.error
        e = v.energy_per_sample_j
        assert e is not None and e.n == 3 and e.mean > 0 and e.low <= e.mean <= e.high
        assert len(v.energy_values_j) == 3 and len(v.metric_values) == 3
        assert v.latency_batch.p50_s <= v.latency_batch.p95_s <= v.latency_batch.p99_s
        assert v.latency_batch.count == 3 * result.passes_per_repeat * 2  # 450 samples in batches of 256
        assert v.latency_sample.p50_s < v.latency_batch.p50_s
        assert v.throughput_sps > 0 and v.size_b > 0 and v.params_total > 0
        assert v.carbon_per_million.co2e_g > 0 and v.carbon_per_million.intensity.assumed
        assert any("estimated" in line for line in v.provenance)
    assert result.variant("float").vs_baseline is None
    half = result.variant("half")
    assert half.metric < 0.5  # untrained: the comparison shows it, it does not hide it
    assert half.params_total < base.params_total / 3


def test_compressed_variants_show_what_the_method_did(result: Comparison) -> None:
    base, pruned, int8 = result.variant("float"), result.variant("pruned"), result.variant("int8")
    assert pruned.recipe == "prune:0.5" and pruned.details["method"] == "prune"
    assert pruned.params_nonzero < 0.6 * pruned.params_total
    assert abs(pruned.metric - base.metric) < 0.05
    assert int8.details["method"] == "dynamic_int8"
    assert int8.vs_baseline.size_ratio < 0.5  # the Linear layers hold most of the weights
    assert abs(int8.vs_baseline.metric_change) <= 0.01
    assert int8.macs_method == "flop-counter and quantized layer shapes"
    assert int8.macs_per_sample == pytest.approx(base.macs_per_sample)
    assert base.macs_method == "flop-counter" and base.macs_per_sample > 1e5
    for v in (pruned, int8):
        sig = v.vs_baseline.energy_significance
        assert sig is not None and sig.test == "paired" and 0.0 <= sig.p_value <= 1.0
        assert v.vs_baseline.energy_ratio == pytest.approx(v.energy_per_sample_j.mean / base.energy_per_sample_j.mean)
        assert v.making is not None and v.making.energy_j >= 0 and not v.making.trains


def test_failures_are_recorded_and_the_others_complete(result: Comparison) -> None:
    broken, wrong = result.variant("broken"), result.variant("wrong")
    assert broken.status == "failed" and "kernel exploded" in broken.error
    assert wrong.status == "failed" and "shape" in wrong.error and "(N, 7)" in wrong.error
    assert broken.energy_per_sample_j is None and not broken.on_pareto_front


def test_pareto_front_holds_exactly_the_non_dominated_measurable_variants(result: Comparison) -> None:
    ok = [v for v in result.variants if v.ok and (v.name == result.baseline or v.vs_baseline.measurable_saving)]
    assert result.variant(result.baseline).on_pareto_front or any(v.on_pareto_front for v in ok)
    for v in result.variants:
        if v not in ok:
            assert not v.on_pareto_front
            assert v.vs_baseline is None or v.vs_baseline.break_even_inferences is None
            continue
        dominated = any(o.metric >= v.metric and o.energy_per_sample_j.mean <= v.energy_per_sample_j.mean
                        and (o.metric > v.metric or o.energy_per_sample_j.mean < v.energy_per_sample_j.mean)
                        for o in ok)
        assert v.on_pareto_front == (not dominated), v.name
    for v in result.variants:  # McNemar's exact test of each accuracy change, on the same samples
        if v.ok and v.vs_baseline is not None:
            test = v.vs_baseline.metric_test
            assert test.test == "mcnemar" and test.diff_mean == pytest.approx(v.vs_baseline.metric_change, abs=1e-6)
            assert test.diff_low <= test.diff_mean <= test.diff_high


def test_variants_run_interleaved(result: Comparison) -> None:
    measured = [n for n in result.window_order if "/repeat-" in n]  # type: ignore[attr-defined]
    live = ["float", "pruned", "int8", "half"]
    assert measured == [f"{v}/repeat-{r}" for r in (1, 2, 3) for v in live]
    makes = [n for n in result.window_order if n.startswith("make:")]  # type: ignore[attr-defined]
    assert makes == ["make:pruned", "make:int8"]


def test_json_round_trip_and_frame(result: Comparison) -> None:
    again = Comparison.from_json(result.to_json())
    assert again.to_dict() == Comparison.from_dict(result.to_dict()).to_dict()
    assert again.variant("int8").energy_per_sample_j == result.variant("int8").energy_per_sample_j
    assert again.variant("broken").error == result.variant("broken").error
    frame = result.to_frame()
    assert list(frame.index) == ["float", "pruned", "int8", "half", "broken", "wrong"]
    assert frame.loc["int8", "energy_per_sample_j"] == result.variant("int8").energy_per_sample_j.mean
    assert frame.loc["broken", "status"] == "failed"
    table = result.table()
    assert "int8" in table and "FAILED" in table and "break-even" in table
    assert "p: paired t-test of per-round ratios of energy per sample against the baseline" in table


def test_a_trained_variant_keeps_its_making_cost_and_break_even(digits: DigitsData, trained: nn.Module) -> None:
    calls: list[int] = []

    def train_fn(model: nn.Module, loss_fn=None, epochs=None) -> None:  # noqa: ANN001
        calls.append(1)
        train_classifier(model, digits, epochs=2, loss_fn=loss_fn)

    # a counter charged by the layers' weights: the saving is measurable however busy the machine is
    counter = LayerWorkCounter()
    res = compare({"float": counter.charge(copy.deepcopy(trained)), "slim": "channels:0.5"},
                  (digits.x_test, digits.y_test), train_fn=train_fn, meter=Meter(backends=[counter]), **FAST)
    slim, base = res.variant("slim"), res.variant("float")
    assert calls and slim.ok and slim.making.trains and slim.making.energy_j > 0
    assert slim.params_total < base.params_total / 2
    saving = base.energy_per_sample_j.mean - slim.energy_per_sample_j.mean
    assert saving > 0 and slim.vs_baseline.measurable_saving
    assert slim.vs_baseline.break_even_inferences == pytest.approx(slim.making.energy_j / saving)


def test_the_bootstrap_test_can_replace_welch(digits: DigitsData, trained: nn.Module) -> None:
    res = compare({"float": trained, "int8": "int8-dynamic"}, (digits.x_test, digits.y_test),
                  meter=Meter(backends=["cpu-estimate"]), significance="bootstrap", seed=3,
                  **{**FAST, "repeats": 5})
    base, int8 = res.variant("float"), res.variant("int8")
    sig = int8.vs_baseline.energy_significance
    assert sig.test == "bootstrap" and sig.statistic is None
    assert sig == bootstrap_test(base.energy_values_j, int8.energy_values_j, seed=3)
    assert sig.diff_low <= sig.diff_mean <= sig.diff_high
    assert Comparison.from_json(res.to_json()).variant("int8").vs_baseline.energy_significance == sig


def test_a_given_making_measurement_is_used(digits: DigitsData, trained: nn.Module) -> None:
    meter = Meter(backends=["cpu-estimate"])
    with meter.window("train-small") as w:
        small = train_classifier(make_digits_cnn(width=0.5, seed=1), digits, epochs=1)
    res = compare({"float": trained, "small": Variant(model=small, making=w.measurement)},
                  (digits.x_test, digits.y_test), meter=meter, **FAST)
    assert res.variant("small").making.energy_j == pytest.approx(w.measurement.energy_j)


def test_bad_input_is_refused_clearly(digits: DigitsData, trained: nn.Module) -> None:
    data = (digits.x_test, digits.y_test)
    with pytest.raises(ConfigError, match="empty"):
        compare({"a": trained}, (digits.x_test[:0], digits.y_test[:0]), **FAST)
    with pytest.raises(ConfigError, match="empty"):
        compare({"a": trained}, [], **FAST)
    with pytest.raises(ConfigError, match=r"unknown recipe 'shrink'.*int8-dynamic.*prune"):
        compare({"a": trained, "b": "shrink:0.5"}, data, **FAST)
    with pytest.raises(ConfigError, match="baseline 'x' is not one of"):
        compare({"a": trained}, data, baseline="x", **FAST)
    with pytest.raises(ConfigError, match="must be a model"):
        compare({"a": "int8-dynamic"}, data, **FAST)
    with pytest.raises(ConfigError, match="repeats"):
        compare({"a": trained}, data, repeats=0, progress=False)
    with pytest.raises(ConfigError, match="significance must be one of 'paired', 'welch', 'bootstrap', not 't-test'"):
        compare({"a": trained}, data, significance="t-test", **FAST)
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        compare({"a": trained, "b": 42}, data, **FAST)


def test_a_nan_metric_fails_that_variant_or_the_baseline(digits: DigitsData, trained: nn.Module) -> None:
    def nan_aware(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float("nan") if torch.isnan(outputs).any() else float((outputs.argmax(1) == targets).float().mean())

    poisoned = copy.deepcopy(trained)
    with torch.no_grad():
        poisoned[-1].bias.fill_(float("nan"))
    data = (digits.x_test, digits.y_test)
    res = compare({"float": trained, "nan": poisoned}, data, metric=nan_aware, **FAST)
    assert res.metric_name == "nan_aware" and res.variant("float").ok
    assert res.variant("nan").status == "failed" and "NaN" in res.variant("nan").error
    with pytest.raises(ConfigError, match="baseline 'nan'.*NaN"):
        compare({"nan": poisoned, "float": trained}, data, metric=nan_aware, **FAST)


def test_the_comparison_and_its_windows_are_stored(tmp_path: Path, digits: DigitsData, trained: nn.Module) -> None:
    path = tmp_path / "runs.db"
    res = compare({"float": trained, "int8": "int8-dynamic"}, (digits.x_test, digits.y_test), store=path,
                  name="stored", **FAST)
    with Store(path) as store:
        again = store.last_comparison()
        assert again is not None and again.to_dict() == Comparison.from_json(res.to_json()).to_dict()
        cpu = next(s for s in again.sources if s["key"] == "cpu-estimate:cpu")
        assert cpu["kind"] == "estimated" and cpu["constants"]["p_max_w_per_vcpu"] > 0
        ((cid, name, _, count, status),) = store.list_comparisons()
        assert name == "stored" and count == 2 and status == "complete"
        assert store.get_comparison(cid[:8]).name == "stored"
        windows = store.windows(res.run_id)
        assert [w.name for w in windows].count("int8/repeat-2") == 1 and len(windows) == 1 + 2 * 3
        assert math.isclose(sum(w.energy_j for w in windows if w.name.startswith("int8/")) /
                            sum(w.samples for w in windows if w.name.startswith("int8/")),
                            res.variant("int8").energy_per_sample_j.mean, rel_tol=1e-9)  # same samples per repeat


def test_a_making_window_too_short_to_resolve_is_flagged(digits: DigitsData, trained: nn.Module) -> None:
    from greenmeter.sources.base import Domain, ProbeResult
    from greenmeter.comparison.recipes import register_recipe, unregister_recipe
    from tests.fakes.scripted import ConstantPowerBackend

    class Slow(ConstantPowerBackend):
        """A source that resolves only 5 s: every window of this comparison is shorter."""

        def probe(self) -> ProbeResult:
            domain = super().probe().domains[0]
            return ProbeResult(self.name, True, domains=(Domain(domain.key, domain.kind, True, domain.provenance, 5.0),))

    register_recipe("same", lambda model, arg, ctx: model, trains=False, description="the baseline itself")
    try:
        res = compare({"float": trained, "same": "same"}, (digits.x_test, digits.y_test),
                      meter=Meter(backends=[Slow(10.0)]), **FAST)
    finally:
        unregister_recipe("same")
    same = res.variant("same")
    assert same.making.duration_s < 5.0
    assert any(f.startswith("making it: ") and "not resolved" in f for f in same.flags), same.flags
    assert not any(f.startswith("making it") for f in res.variant("float").flags)


def test_a_registered_methods_recipe_is_compared_and_its_facts_hooks_are_used(
    digits: DigitsData, trained: nn.Module,
) -> None:
    from tests.compression.frozen_method import HOOK_MACS, METHOD, RECIPE, frozen_method

    with frozen_method():
        res = compare({"float": trained, "frozen": f"{RECIPE}:32"}, (digits.x_test, digits.y_test),
                      meter=Meter(backends=["cpu-estimate"]), **FAST)
    base, frozen = res.variant("float"), res.variant("frozen")
    assert frozen.ok, frozen.error
    assert frozen.recipe == f"{RECIPE}:32" and frozen.details["method"] == METHOD and frozen.making.trains is False
    # its Linear weights are buffers that parameters() misses: counted by the method's count_weights hook
    assert (frozen.params_kind, frozen.params_total) == ("stored weight elements", base.params_total)
    assert (frozen.macs_per_sample, frozen.macs_method, frozen.macs_note) == (
        HOOK_MACS.macs_per_sample, HOOK_MACS.method, HOOK_MACS.note)  # its data_macs hook
    assert base.macs_method == "flop-counter"
    assert frozen.metric == base.metric  # float32 buffers: the same predictions


def test_every_variant_has_a_band_and_its_ratio_cancels_the_shared_cpu_model(result: Comparison) -> None:
    """The band (how far off the CPU model could be) is kept apart from the CI, and one machine's model cancels."""
    ok = [v for v in result.variants if v.ok]
    for v in ok:
        band, ci = v.energy_band, v.energy_per_sample_j
        assert band is not None and ci is not None
        assert band.value_j == pytest.approx(ci.mean)
        assert band.low_j < ci.mean < band.high_j
        assert [t.model for t in band.terms] == [t.model for t in ok[0].energy_band.terms]  # one CPU model
        assert band.relative[1] / band.relative[0] > 1.4  # the EPYC range: 0.81-1.22 x at least
        d = v.vs_baseline
        if d is None:
            continue
        r = d.energy_ratio_band
        assert r is not None and r.shared == (band.terms[0].model,)
        assert r.low <= d.energy_ratio <= r.high
        # the model factor cancels: only the CPU-time ticks are left, narrower than dividing the two bands apart
        base = ok[0].energy_band
        apart = (band.high_j / base.low_j) / (band.low_j / base.high_j)
        assert r.high / r.low < apart / 1.4
    table = result.table()
    assert "band mJ" in table and "its constants cancel in the energy ratio" in table
    again = Comparison.from_json(result.to_json())
    assert again.variants[1].vs_baseline.energy_ratio_band == result.variants[1].vs_baseline.energy_ratio_band
    assert again.variants[0].energy_band == result.variants[0].energy_band
    frame = result.to_frame()
    assert frame["energy_band_high_j"].notna().sum() == len(ok)
