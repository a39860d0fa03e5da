"""``greenmeter.optimize`` on the digits CNN: the search's rounds, the budget, the time limit, and its record."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from greenmeter import ConfigError, Meter  # noqa: E402
from greenmeter.comparison.optimize import optimize  # noqa: E402
from greenmeter.comparison.recipes import register_recipe, unregister_recipe  # noqa: E402
from greenmeter.demo.digits import DigitsData  # noqa: E402
from greenmeter.records.optimization import OptimizeResult  # noqa: E402
from tests.fakes.work import LayerWorkCounter  # noqa: E402

FAST = {"min_repeat_s": 0.02, "screen_repeats": 2, "final_repeats": 3, "progress": False, "probes": None}


@pytest.fixture(scope="module")
def searched(digits: DigitsData, trained: nn.Module, one_epoch_trainer) -> tuple[OptimizeResult, nn.Module]:  # noqa: ANN001
    before = copy.deepcopy(trained.state_dict())
    result = optimize(trained, (digits.x_test, digits.y_test), max_drop=0.01, train_fn=one_epoch_trainer,
                      recipes=["int8-static", "int8-dynamic", "int4", "channels:0.5", "channels:0.5+int8-static",
                               "distill:0.25"],
                      finalists=2, meter=Meter(backends=["cpu-estimate"]), time_budget_s=600, **FAST)
    return result, before


def test_every_candidate_ends_with_a_status_and_a_reason(searched: tuple[OptimizeResult, dict]) -> None:
    result, _ = searched
    assert [c.spec for c in result.candidates] == ["int8-static", "int8-dynamic", "int4", "channels:0.5",
                                                   "channels:0.5+int8-static", "distill:0.25"]
    for c in result.candidates:
        assert c.status in {"chosen", "finalist", "screened out", "over budget", "failed"}, c
        assert c.reason and c.origin
    statuses = [c.status for c in result.candidates]
    assert statuses.count("chosen") == (1 if result.improved else 0)
    finalists = {c.spec for c in result.candidates if c.status in {"chosen", "finalist"}}
    assert finalists == {v.name for v in result.comparison.variants} - {"baseline"}


def test_a_candidate_over_the_budget_is_dropped_before_its_energy_is_measured(
        searched: tuple[OptimizeResult, dict]) -> None:
    result, _ = searched
    for c in result.candidates:
        assert c.metric is not None and c.metric_change is not None
        if c.metric_change < -0.01:
            assert c.status == "over budget" and c.rung == 0 and c.energy_ratio is None
            assert "beyond the budget" in c.reason
        else:
            assert c.status != "over budget"
            assert c.rung >= 1  # measured at least once


def test_successive_halving_keeps_the_lowest_energy_and_says_why_the_rest_went(
        searched: tuple[OptimizeResult, dict]) -> None:
    result, _ = searched
    assert result.rungs, "more candidates than finalists: at least one screening round"
    first = result.rungs[0]
    assert first.index == 1 and first.repeats == 2
    assert len(first.kept) == max(2, -(-len(first.measured) // 2))
    ratios = {c.spec: c for c in result.candidates}
    for spec in first.measured:
        if spec not in first.kept and ratios[spec].status == "screened out":
            assert "screening round 1 (2 repeats)" in ratios[spec].reason
    for later, earlier in zip(result.rungs[1:], result.rungs):
        assert set(later.measured) <= set(earlier.kept) and later.repeats == 2 * earlier.repeats


def test_the_choice_is_the_recommendation_of_the_final_comparison(searched: tuple[OptimizeResult, dict]) -> None:
    from greenmeter.comparison.recommend import recommend

    result, _ = searched
    rec = recommend(result.comparison, tolerance=0.01)
    assert result.chosen == (rec.name or "baseline") and result.reason == rec.reason
    assert result.comparison.repeats == 3 and result.comparison.baseline == "baseline"
    if result.improved:
        chosen = result.comparison.variant(result.chosen)
        assert chosen.vs_baseline.measurable_saving
        assert chosen.vs_baseline.metric_test.diff_low >= -0.01
    if "+" not in result.chosen:
        assert result.versus_best_single is None  # the claim is made for a stack only
    elif result.versus_best_single is not None:
        from greenmeter.stats import paired_ratio_test

        single, test = result.versus_best_single
        assert "+" not in single
        assert test == paired_ratio_test(result.comparison.variant(single).energy_values_j,
                                         result.comparison.variant(result.chosen).energy_values_j)


def test_a_stack_reuses_the_model_of_its_first_step_and_counts_both_makings(
        searched: tuple[OptimizeResult, dict]) -> None:
    result, _ = searched
    alone, stack = result.candidate("channels:0.5"), result.candidate("channels:0.5+int8-static")
    assert alone.making_j is not None and stack.making_j is not None
    assert stack.making_j >= alone.making_j  # the channels step's measured cost, plus the int8 step's
    if "channels:0.5+int8-static" in {v.name for v in result.comparison.variants}:
        making = result.comparison.variant("channels:0.5+int8-static").making
        assert [s.recipe for s in making.steps] == ["channels:0.5", "int8-static"]
        assert making.steps[0].energy_j == pytest.approx(alone.making_j)
        assert making.energy_j == pytest.approx(sum(s.energy_j for s in making.steps))


def test_the_baseline_is_never_changed(searched: tuple[OptimizeResult, dict], trained: nn.Module) -> None:
    _, before = searched
    after = trained.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_the_result_round_trips_through_json(searched: tuple[OptimizeResult, dict]) -> None:
    result, _ = searched
    again = OptimizeResult.from_json(result.to_json())
    assert again.to_dict() == OptimizeResult.from_dict(result.to_dict()).to_dict()
    assert again.chosen == result.chosen and again.candidates == result.candidates and again.rungs == result.rungs
    assert "candidate" in result.table() and result.summary().startswith("optimize: ")


def test_a_time_budget_that_runs_out_leaves_candidates_not_tried(digits: DigitsData, trained: nn.Module) -> None:
    result = optimize(trained, (digits.x_test, digits.y_test), recipes=["int8-dynamic", "int4"], time_budget_s=1e-9,
                      meter=Meter(backends=["cpu-estimate"]), **FAST)
    assert [c.status for c in result.candidates] == ["not tried", "not tried"]
    assert all("time budget" in c.reason for c in result.candidates)
    assert result.chosen == "baseline" and not result.improved
    assert [v.name for v in result.comparison.variants] == ["baseline"]  # the final comparison still ran


def test_a_failing_recipe_is_recorded_and_the_others_go_on(digits: DigitsData, trained: nn.Module) -> None:
    @register_recipe("explode-for-test", trains=False, description="always fails")
    def explode(baseline: nn.Module, arg: str | None, ctx: object) -> nn.Module:
        raise RuntimeError("kernel exploded")

    try:
        result = optimize(trained, (digits.x_test, digits.y_test), recipes=["explode-for-test", "int8-dynamic"],
                          meter=Meter(backends=["cpu-estimate"]), **FAST)
    finally:
        unregister_recipe("explode-for-test")
    failed = result.candidate("explode-for-test")
    assert failed.status == "failed" and "RuntimeError: kernel exploded" in failed.reason
    assert result.candidate("int8-dynamic").status in {"chosen", "finalist"}


def test_a_size_limit_drops_what_it_does_not_meet(digits: DigitsData, trained: nn.Module) -> None:
    result = optimize(trained, (digits.x_test, digits.y_test), recipes=["int8-dynamic"], max_size_ratio=0.01,
                      meter=Meter(backends=["cpu-estimate"]), **FAST)
    c = result.candidate("int8-dynamic")
    assert c.status == "over budget" and "over the limit x0.01" in c.reason and c.reason.startswith("size x")
    assert result.chosen == "baseline" and result.limits == {"max_size_ratio": 0.01}


def test_bad_arguments_are_refused_before_any_work(digits: DigitsData, trained: nn.Module) -> None:
    data = (digits.x_test, digits.y_test)
    for kwargs, message in [
        ({"max_drop": -0.1}, "max_drop must be a number >= 0"),
        ({"max_drop": float("nan")}, "max_drop must be"),
        ({"time_budget_s": 0}, "time_budget_s must be"),
        ({"screen_repeats": 1}, "screen_repeats must be a whole number >= 2"),
        ({"eta": 1}, "eta must be a whole number >= 2"),
        ({"recipes": "int8-static"}, "recipes must be a non-empty list"),
        ({"recipes": ["shrink:0.5"]}, "unknown recipe 'shrink'"),
        ({"max_latency_ratio": 0}, "max_latency_ratio must be"),
        ({"significance": "anova"}, "significance must be one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            optimize(trained, data, progress=False, **kwargs)
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        optimize("model", data, progress=False)  # type: ignore[arg-type]


def _sensitivity(drops: dict[str, dict[str, float | None]], kinds: dict[str, str]):  # noqa: ANN202
    from greenmeter.records.sensitivity import LayerSensitivity, Sensitivity

    probes = ("int8", "int4", "prune:0.5", "prune:0.8")
    layers = tuple(LayerSensitivity(name, kinds[name], 100, {p: 0.9 - (d.get(p) or 0) for p in probes},
                                    {p: d.get(p, 0.0) for p in probes}, {p: None for p in probes})
                   for name, d in drops.items())
    return Sensitivity("accuracy", 0.9, 450, probes, layers, "test")


def test_default_candidates_keep_sensitive_layers_in_float_and_stack_shrinkers_with_int8() -> None:
    from greenmeter.comparison.optimize import default_candidates
    from greenmeter.comparison.recipes import check_recipe

    kinds = {"features.0": "Conv2d", "classifier.0": "Linear", "classifier.2": "Linear"}
    sens = _sensitivity({"features.0": {"int8": 0.001, "prune:0.8": 0.02},
                         "classifier.0": {"int8": 0.0, "int4": 0.004},
                         "classifier.2": {"int8": 0.003, "int4": 0.0, "int4:64": None}}, kinds)
    specs = dict(default_candidates(sens, 0.005, can_train=True))
    # int8 alone on classifier.2 costs 0.3 pp, over half the 0.5 pp budget: every int8 step keeps it in float
    assert "int8-static[keep=classifier.2]" in specs and "int8-dynamic[keep=classifier.2]" in specs
    assert "qat[keep=classifier.2]" in specs and "int4[keep=classifier.0]" in specs
    # features.0 loses 2 pp at 80% pruning alone (over the budget): the gentler channel ratios
    assert [s for s in specs if s.startswith("channels") and "+" not in s] == ["channels:0.3", "channels:0.5"]
    assert "channels:0.5+int8-static[keep=classifier.2]" in specs and "distill:0.25+int8-static[keep=classifier.2]" in specs
    assert not any(s.startswith(("prune", "ticket", "early-exit")) for s in specs)
    for spec in specs:
        check_recipe(spec)  # every proposal is a recipe the registry takes
    order = list(specs)
    assert order.index("channels:0.5") < order.index("channels:0.5+int8-static[keep=classifier.2]")  # reused


def test_default_candidates_without_training_or_sensitivity() -> None:
    from greenmeter.comparison.optimize import default_candidates

    assert [s for s, _ in default_candidates(None, 0.01, can_train=False)] == ["int8-static", "int8-dynamic", "int4"]
    tolerant = _sensitivity({"fc": {"prune:0.8": 0.001}}, {"fc": "Linear"})
    specs = [s for s, _ in default_candidates(tolerant, 0.01, can_train=True, has_val=True)]
    assert "channels:0.7" in specs and "channels:0.7+int8-static" in specs and specs[-1] == "early-exit:auto"


def test_default_candidates_keep_what_channels_and_qat_cannot_take() -> None:
    from greenmeter.comparison.optimize import default_candidates
    from greenmeter.comparison.recipes import check_recipe

    kept = {"channels": ["emb", "encoder.layers.0.self_attn"], "qat": ["emb"]}
    planned = dict(default_candidates(None, 0.01, can_train=True, kept=kept))
    assert "channels:0.3[keep=emb,encoder.layers.0.self_attn]" in planned
    assert "channels:0.5[keep=emb,encoder.layers.0.self_attn]+int8-static" in planned
    assert planned["qat[keep=emb]"] == "quantizer (trained), keeping emb whole (it cannot take them)"
    assert "distill:0.5" in planned and "int8-static" in planned  # the others take the whole model
    for spec in planned:
        check_recipe(spec)


def test_the_layers_channel_pruning_cannot_take_are_the_outermost_non_conv_linear_norm_modules() -> None:
    from greenmeter.compression import channel_unprunable_layers
    from tests.comparison.test_recipes_batches import TinyTransformer

    assert channel_unprunable_layers(TinyTransformer()) == ["emb"] + [f"encoder.layers.{i}.self_attn"
                                                                        for i in range(4)]
    assert channel_unprunable_layers(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                                                   nn.Linear(4, 2))) == []
    assert channel_unprunable_layers(nn.Embedding(4, 2)) == ["(model)"]


def test_the_chosen_model_is_saved_and_reloads_with_its_accuracy(digits: DigitsData, trained: nn.Module,
                                                                 tmp_path) -> None:  # noqa: ANN001
    from greenmeter.comparison.export import load_model, read_manifest
    from greenmeter.comparison.metrics import correct_predictions

    counter = LayerWorkCounter()  # int8-static measurably cheaper whatever the machine's load
    charged = counter.charge(copy.deepcopy(trained))
    result = optimize(charged, (digits.x_test, digits.y_test), recipes=["int8-static"], save_to=tmp_path / "chosen",
                      meter=Meter(backends=[counter]), **FAST)
    assert result.chosen == "int8-static", result.reason
    manifest = read_manifest(tmp_path / "chosen")
    assert manifest.recipe == "int8-static" and result.saved["directory"] == str(tmp_path / "chosen")
    assert result.saved["program"] == manifest.program
    program = load_model(tmp_path / "chosen")
    with torch.inference_mode():
        accuracy = float(correct_predictions(program(digits.x_test), digits.y_test).float().mean())
    assert accuracy == pytest.approx(result.comparison.variant("int8-static").metric)
    assert manifest.metric == {"name": "accuracy", "value": result.comparison.variant("int8-static").metric}
    assert "saved to" in result.summary()


def test_a_save_directory_it_cannot_use_is_refused_before_any_work(digits: DigitsData, trained: nn.Module,
                                                                  tmp_path) -> None:  # noqa: ANN001
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    lines: list[str] = []
    with pytest.raises(ConfigError, match="not empty and is not a previous greenmeter save"):
        optimize(trained, (digits.x_test, digits.y_test), recipes=["int8-dynamic"], save_to=foreign,
                 progress=lines.append)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        optimize(trained, (digits.x_test, digits.y_test), recipes=["int8-dynamic"], save_to=blocker / "sub" / "dir",
                 progress=lines.append)
    assert lines == [] and (foreign / "todo.txt").read_text() == "mine"  # nothing measured, nothing touched


def test_the_next_screening_round_is_expected_to_take_the_last_ones_time_scaled_by_its_models_and_repeats() -> None:
    from greenmeter.comparison.optimize import next_round_s
    from greenmeter.records.optimization import Rung

    last = Rung(1, 2, ("a", "b", "c", "d", "e"), ("a", "b", "c"), 6.0)
    assert next_round_s(last, 3, 2) == pytest.approx(6.0 * 2 * 4 / 6)  # 4 models of 6, twice the repeats
    assert next_round_s(Rung(1, 2, (), (), 1.5), 0, 3) == pytest.approx(4.5)  # every candidate failed: the baseline


def test_a_screening_round_that_would_outrun_the_budget_is_not_started(digits: DigitsData, trained: nn.Module,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from greenmeter.comparison import optimize as search

    monkeypatch.setattr(search, "next_round_s", lambda last, candidates, eta: 1e6)
    result = optimize(trained, (digits.x_test, digits.y_test), finalists=1, time_budget_s=600,
                      recipes=["int8-dynamic", "int4", "prune:0.3", "prune:0.5"],
                      meter=Meter(backends=["cpu-estimate"]), **FAST)
    assert len(result.rungs) == 1  # the first round ran: there was no round to scale yet
    [flag] = [f for f in result.flags if f.startswith("the time budget")]
    assert "left, and the next round would take about 1000000 s after 1 screening round(s)" in flag
    assert sum(c.status in {"chosen", "finalist"} for c in result.candidates) <= 1


def test_a_build_is_expected_to_take_as_long_as_the_longest_of_the_same_recipe_made_before() -> None:
    from greenmeter.comparison.optimize import expected_build_s

    made = {"distill:0.5": 30.0, "distill:0.25": 12.0, "channels:0.5": 8.0, "int8-static": 1.0}
    assert expected_build_s("distill:0.1", made) == (30.0, "distill:0.5")
    assert expected_build_s("channels:0.7+int8-static", made) == (8.0, "channels:0.5")
    assert expected_build_s("int8-static[keep=fc]", made) == (1.0, "int8-static")
    assert expected_build_s("qat", made) is None


def test_a_candidate_whose_making_would_outrun_the_budget_is_not_tried(digits: DigitsData, trained: nn.Module,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from greenmeter.comparison import optimize as search

    real = search.expected_build_s
    monkeypatch.setattr(search, "expected_build_s",
                        lambda spec, made: None if real(spec, made) is None else (1e6, real(spec, made)[1]))
    result = optimize(trained, (digits.x_test, digits.y_test), time_budget_s=600,
                      recipes=["prune:0.3", "int8-dynamic", "prune:0.5"], meter=Meter(backends=["cpu-estimate"]), **FAST)
    outcome = {c.spec: c for c in result.candidates}
    assert outcome["prune:0.3"].status != "not tried" and outcome["int8-dynamic"].status != "not tried"
    assert outcome["prune:0.5"].status == "not tried"  # the first prune says how long a prune takes
    assert "left, and making it would take about 1000000 s (as prune:0.3 did)" in outcome["prune:0.5"].reason
