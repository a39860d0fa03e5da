"""``check_settings``: compare's numeric and named settings each have a range, checked before any work, by
``compare()`` itself, by the comparison TOML file and by ``greenmeter compare``'s options alike."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from greenmeter._errors import ConfigError  # noqa: E402
from greenmeter.comparison.compare import (  # noqa: E402
    MAX_REPEATS,
    MAX_SEED,
    SIGNIFICANCE_TESTS,
    check_settings,
    compare,
)


def test_the_defaults_pass_and_come_back_normalised() -> None:
    assert check_settings() == {"repeats": 5, "warmup": 1, "batch_size": 256, "seed": 0, "min_repeat_s": None,
                                "significance": "paired", "threads": None}
    got = check_settings(repeats=MAX_REPEATS, seed=MAX_SEED, min_repeat_s=3600, threads=1)
    assert got["repeats"] == 1000 and got["seed"] == 2**32 - 1 and got["min_repeat_s"] == 3600.0
    assert isinstance(got["min_repeat_s"], float)


@pytest.mark.parametrize(("given", "message"), [
    ({"repeats": 2**63 - 1}, "repeats must be a whole number >= 1 and <= 1000, not 9223372036854775807"),
    ({"repeats": 0}, "repeats must be a whole number >= 1 and <= 1000, not 0"),
    ({"repeats": 2.0}, "repeats must be a whole number >= 1 and <= 1000, not 2.0"),
    ({"warmup": -1}, "warmup must be a whole number >= 0 and <= 100, not -1"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1, not 0"),
    ({"seed": 2**32}, "seed must be a whole number >= 0 and <= 4294967295, not 4294967296"),
    ({"min_repeat_s": float("nan")}, "min_repeat_s must be a number of seconds in [0, 3600] or None, not nan"),
    ({"min_repeat_s": 1e300}, "min_repeat_s must be a number of seconds in [0, 3600] or None, not 1e+300"),
    ({"threads": 0}, "threads must be a whole number >= 1 and <= 1024 or None (None keeps torch's setting), not 0"),
    ({"significance": "t"}, "significance must be one of 'paired', 'welch', 'bootstrap', not 't'"),
])
def test_each_setting_out_of_range_names_its_range(given: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_settings(**given)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_the_label_names_a_setting_where_the_user_wrote_it() -> None:
    with pytest.raises(ConfigError, match=r"^--repeats must be a whole number >= 1 and <= 1000, not 5000$"):
        check_settings(repeats=5000, label=lambda key: f"--{key}")


def test_compare_refuses_huge_repeats_before_any_work() -> None:
    built = []

    class Model(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            built.append(1)  # never reached: nothing is evaluated
            return super().forward(x)

    data = (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="repeats must be a whole number >= 1 and <= 1000"):
        compare({"a": Model(2, 2)}, data, repeats=2**62, progress=False)
    with pytest.raises(ConfigError, match="seed must be a whole number >= 0"):
        compare({"a": Model(2, 2)}, data, seed=-1, progress=False)
    assert built == []


def test_the_command_line_offers_the_same_energy_tests(capsys: pytest.CaptureFixture[str]) -> None:
    from greenmeter.cli.main import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert f"--significance {{{','.join(SIGNIFICANCE_TESTS)}}}" in capsys.readouterr().out
