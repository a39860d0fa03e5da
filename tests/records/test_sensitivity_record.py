"""The sensitivity record: the optimizer's helpers, the table and the JSON round trip, without torch."""

from __future__ import annotations

import json
import math

import pytest

from greenmeter._errors import ConfigError
from greenmeter.records.sensitivity import SENSITIVITY_SCHEMA_VERSION, LayerSensitivity, Sensitivity


def _record() -> Sensitivity:
    probes = ("int8", "int4", "prune:0.5")

    def layer(name: str, kind: str, params: int, drops: tuple[float | None, ...],
              changed: tuple[int | None, ...]) -> LayerSensitivity:
        return LayerSensitivity(name, kind, params, {p: None if d is None else 0.9 - d for p, d in zip(probes, drops)},
                                dict(zip(probes, drops)), dict(zip(probes, changed)))

    return Sensitivity("accuracy", 0.9, 450, probes, (
        layer("features.0", "Conv2d", 320, (0.0, None, 0.02), (0, None, 9)),
        layer("classifier.0", "Linear", 131200, (0.004, 0.001, 0.0), (2, 1, 3)),
        layer("classifier.2", "Linear", 1290, (0.03, 0.012, 0.02), (14, 6, 9)),
    ), "the first 2 evaluation batches (450 samples)")


def test_drop_sensitive_layers_and_worst() -> None:
    sens = _record()
    assert sens.drop("classifier.2", "int8") == 0.03
    assert sens.drop("features.0", "int4") is None
    assert sens.sensitive_layers("int8", 0.001) == ("classifier.2", "classifier.0")  # most sensitive first
    assert sens.sensitive_layers("int8", 0.03) == ()  # exceeds, not reaches
    assert sens.sensitive_layers("int4", 0.0) == ("classifier.2", "classifier.0")  # the conv's None never listed
    assert sens.sensitive_layers("prune:0.5", 0.01) == ("features.0", "classifier.2")  # a tie keeps model order
    assert sens.worst("int8") == ("classifier.2", 0.03)
    assert sens.worst("prune:0.5") == ("features.0", 0.02)  # the first of equal drops


def test_worst_is_none_when_the_probe_applied_to_no_layer() -> None:
    only_conv = Sensitivity("accuracy", 0.9, 10, ("int4",),
                            (LayerSensitivity("c", "Conv2d", 10, {"int4": None}, {"int4": None}, {"int4": None}),), "")
    assert only_conv.worst("int4") is None
    assert only_conv.sensitive_layers("int4", -1.0) == ()


def test_unknown_layers_and_probes_are_config_errors_that_list_the_names() -> None:
    sens = _record()
    with pytest.raises(ConfigError, match=r"no layer named 'fc'.*features\.0"):
        sens.drop("fc", "int8")
    with pytest.raises(ConfigError, match=r"no probe 'prune:0.8'.*int8"):
        sens.sensitive_layers("prune:0.8", 0.0)
    with pytest.raises(ConfigError, match="no probe"):
        sens.worst("int16")


def test_round_trip_through_dict_and_json() -> None:
    sens = _record()
    data = sens.to_dict()
    assert data["schema_version"] == SENSITIVITY_SCHEMA_VERSION
    assert Sensitivity.from_dict(data) == sens
    text = sens.to_json()
    assert json.loads(text)["layers"][0]["drops"]["int4"] is None
    assert Sensitivity.from_json(text) == sens


def test_a_newer_schema_or_another_record_is_refused() -> None:
    data = _record().to_dict()
    data["schema_version"] = SENSITIVITY_SCHEMA_VERSION + 1
    with pytest.raises(ConfigError, match="newer than this greenmeter reads"):
        Sensitivity.from_dict(data)
    with pytest.raises(ConfigError, match="not a greenmeter sensitivity"):
        Sensitivity.from_json('{"variants": []}')


def test_table_names_each_layer_with_its_drops_and_changed_samples() -> None:
    table = _record().table()
    lines = table.splitlines()
    assert lines[0].startswith("accuracy 0.9000 on 450 samples")
    assert "drop int8" in lines[1] and "drop prune:0.5" in lines[1]
    rows = {line.split()[0]: line for line in lines[3:]}
    assert set(rows) == {"features.0", "classifier.0", "classifier.2"}
    assert "0.0300 (14 changed)" in rows["classifier.2"]
    assert "n/a" in rows["features.0"]
    assert "98.8%" in rows["classifier.0"]  # 131200 of 132810 probed parameters


def test_a_nan_drop_ranks_worst_and_survives_json_apart_from_none() -> None:
    nan = float("nan")
    sens = Sensitivity("neg_loss", -0.3, 10, ("int8",), (
        LayerSensitivity("a", "Linear", 5, {"int8": -0.5}, {"int8": 0.2}, {"int8": None}),
        LayerSensitivity("b", "Linear", 5, {"int8": nan}, {"int8": nan}, {"int8": None}),
    ), "")
    assert sens.sensitive_layers("int8", 0.1) == ("b", "a")
    name, drop = sens.worst("int8")  # type: ignore[misc]
    assert name == "b" and math.isnan(drop)
    again = Sensitivity.from_json(sens.to_json())
    assert math.isnan(again.drop("b", "int8"))  # type: ignore[arg-type]
    assert again.drop("a", "int8") == 0.2
