"""The argument validators: what each accepts (and returns), what each refuses, and what the message says."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from greenmeter._checks import choice, fraction, number, text, whole_number
from greenmeter._errors import ConfigError


# whole_number -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [(0, 0), (7, 7), (10**12, 10**12), (np.int64(3), 3)])
def test_whole_number_returns_an_int(value: Any, expected: int) -> None:
    result = whole_number("n", value)
    assert result == expected and type(result) is int


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, float("nan"), float("inf"), "3", None, [1]])
def test_whole_number_refuses_non_integers_including_bool(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        whole_number("repeats", value, minimum=1)
    assert str(info.value) == f"repeats must be a whole number >= 1, not {value!r}"


def test_whole_number_bounds_are_inclusive_and_named_in_the_message() -> None:
    assert whole_number("w", 1, minimum=1, maximum=3) == 1
    assert whole_number("w", 3, minimum=1, maximum=3) == 3
    for bad in (0, 4):
        with pytest.raises(ConfigError, match=r"^w must be a whole number >= 1 and <= 3, not "):
            whole_number("w", bad, minimum=1, maximum=3)
    with pytest.raises(ConfigError, match=r"^w must be a whole number <= 3, not 4$"):
        whole_number("w", 4, minimum=None, maximum=3)


def test_whole_number_without_a_minimum_takes_negatives() -> None:
    assert whole_number("seed", -5, minimum=None) == -5
    with pytest.raises(ConfigError, match=r"^seed must be a whole number, not 1\.5$"):
        whole_number("seed", 1.5, minimum=None)


def test_whole_number_default_minimum_is_zero() -> None:
    assert whole_number("n", 0) == 0
    with pytest.raises(ConfigError, match=r"^n must be a whole number >= 0, not -1$"):
        whole_number("n", -1)


def test_optional_whole_number_takes_none_and_says_so() -> None:
    assert whole_number("limit", None, optional=True) is None
    with pytest.raises(ConfigError, match=r"^limit must be a whole number >= 0 or None, not -2$"):
        whole_number("limit", -2, optional=True)
    with pytest.raises(ConfigError, match=r"^limit must be a whole number >= 0, not None$"):
        whole_number("limit", None)


def test_a_note_is_added_in_parentheses() -> None:
    with pytest.raises(ConfigError) as info:
        whole_number("threads", 0, minimum=1, optional=True, note="None keeps torch's setting")
    assert str(info.value) == "threads must be a whole number >= 1 or None (None keeps torch's setting), not 0"


# number -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [(0, 0.0), (2, 2.0), (0.25, 0.25), (Fraction(1, 4), 0.25),
                                                 (np.float32(0.5), 0.5), (-1e300, -1e300)])
def test_number_returns_a_float(value: Any, expected: float) -> None:
    result = number("x", value)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("value", [True, False, float("nan"), float("inf"), -float("inf"), "1.5", None, 1j])
def test_number_refuses_bool_nan_infinity_strings_and_complex(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        number("lr", value)
    assert str(info.value) == f"lr must be a finite number, not {value!r}"


@pytest.mark.parametrize(("kwargs", "inside", "outside", "wanted"), [
    ({"low": 0}, [0, 5], [-0.001], "a number >= 0"),
    ({"low": 0, "low_open": True}, [1e-9], [0, -1], "a number > 0"),
    ({"high": 10}, [10, -3], [10.5], "a number <= 10"),
    ({"high": 10, "high_open": True}, [9.99], [10], "a number < 10"),
    ({"low": 0, "high": 1}, [0, 1, 0.5], [-0.1, 1.1], "a number in [0, 1]"),
    ({"low": 0, "high": 1, "low_open": True, "high_open": True}, [0.5], [0, 1], "a number in (0, 1)"),
    ({"low": 0.5, "high": 2.5, "high_open": True}, [0.5], [2.5], "a number in [0.5, 2.5)"),
])
def test_number_bounds_open_and_closed(kwargs: dict[str, Any], inside: list[float], outside: list[float],
                                       wanted: str) -> None:
    for value in inside:
        assert number("alpha", value, **kwargs) == value
    for value in outside:
        with pytest.raises(ConfigError) as info:
            number("alpha", value, **kwargs)
        assert str(info.value) == f"alpha must be {wanted}, not {value!r}"


def test_number_with_a_unit_and_optional() -> None:
    assert number("min_repeat_s", None, low=0, unit="seconds", optional=True) is None
    with pytest.raises(ConfigError) as info:
        number("min_repeat_s", -1, low=0, unit="seconds", optional=True)
    assert str(info.value) == "min_repeat_s must be a number of seconds >= 0 or None, not -1"


def test_number_refuses_infinity_even_inside_an_open_range() -> None:
    with pytest.raises(ConfigError, match=r"^timeout must be a number > 0, not inf$"):
        number("timeout", math.inf, low=0, low_open=True)


# fraction ----------------------------------------------------------------------------------------------------
def test_fraction_accepts_the_closed_unit_interval() -> None:
    assert [fraction("q", v) for v in (0, 0.25, 1)] == [0.0, 0.25, 1.0]
    assert type(fraction("q", 1)) is float


@pytest.mark.parametrize(("kwargs", "refused", "interval"), [
    ({}, [-0.01, 1.01, 95], "[0, 1]"),
    ({"high_open": True}, [1], "[0, 1)"),
    ({"low_open": True}, [0], "(0, 1]"),
    ({"low_open": True, "high_open": True}, [0, 1], "(0, 1)"),
])
def test_fraction_ends_and_message(kwargs: dict[str, bool], refused: list[float], interval: str) -> None:
    for value in refused:
        with pytest.raises(ConfigError) as info:
            fraction("rate", value, **kwargs)
        assert str(info.value) == f"rate must be a fraction in {interval}, not {value!r}"


@pytest.mark.parametrize("value", [True, float("nan"), float("inf"), "0.5", None])
def test_fraction_refuses_bool_nan_infinity_and_strings(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^q must be a fraction in \[0, 1\] \(0\.95 for p95\), not "):
        fraction("q", value, note="0.95 for p95")


# choice ---------------------------------------------------------------------------------------------------------
def test_choice_returns_the_value_and_lists_what_is_allowed() -> None:
    assert choice("significance", "welch", ("welch", "bootstrap")) == "welch"
    with pytest.raises(ConfigError) as info:
        choice("significance", "anova", ("welch", "bootstrap"))
    assert str(info.value) == "significance must be 'welch' or 'bootstrap', not 'anova'"
    with pytest.raises(ConfigError) as info:
        choice("mode", "fast", ["process", "machine", "none"])
    assert str(info.value) == "mode must be one of 'process', 'machine', 'none', not 'fast'"
    with pytest.raises(ConfigError, match=r"^kind must be 'api', not 'run'$"):
        choice("kind", "run", ["api"])


def test_choice_does_not_take_bool_for_a_number() -> None:
    assert choice("bits", 1, (1, 2)) == 1
    with pytest.raises(ConfigError, match=r"^bits must be 1 or 2, not True$"):
        choice("bits", True, (1, 2))


# text -----------------------------------------------------------------------------------------------------------
def test_text_takes_a_non_empty_string() -> None:
    assert text("name", "train") == "train"
    assert text("name", " ") == " "
    for bad in ("", None, 3, b"train"):
        with pytest.raises(ConfigError) as info:
            text("name", bad)
        assert str(info.value) == f"name must be a non-empty string, not {bad!r}"


def test_every_refusal_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        whole_number("n", "x")


def test_registry_name_takes_what_a_command_line_can_name() -> None:
    from greenmeter._checks import registry_name

    for good in ("rapl", "cpu-estimate", "my_meter.v2", "9x"):
        assert registry_name("Format.name", good) == good
    for bad in ("", "Rapl", "my meter", "-x", ".x", "x/y", None, 3):
        with pytest.raises(ConfigError, match=r"^Format\.name must be lower case letters, digits, '-', '_' or '\.', "
                                              rf"not {re.escape(repr(bad))}$"):
            registry_name("Format.name", bad)
