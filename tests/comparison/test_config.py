"""The comparison TOML file: every setting and recipe is checked when the file is loaded, and what the user's own
code does wrong when ``build()`` imports and calls it is a ConfigError naming the key, in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greenmeter._errors import ConfigError  # noqa: E402
from greenmeter.comparison.config import load_compare_config  # noqa: E402

HERE = "tests.comparison.test_config"


def make_tiny(width: int = 4) -> torch.nn.Module:
    """The baseline of these tests: 8 inputs, 3 classes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 3))


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def failing_factory(width: int = 4) -> torch.nn.Module:
    raise ValueError("the checkpoint server is down")


def failing_data() -> None:
    raise KeyError("split 'test'")


def config_text(*, model: str = "", compare: str = "", factory: str = f"{HERE}:make_tiny",
                eval_data: str = f"{HERE}:tiny_data", recipes: str = '["prune:0.5"]') -> str:
    return (f'[model]\nfactory = "{factory}"\n{model}\n[data]\neval = "{eval_data}"\n'
            f"[compare]\nrecipes = {recipes}\n{compare}\n")


@pytest.fixture(autouse=True)
def _sys_path_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader puts the TOML file's folder on sys.path; each test's folder is taken off again."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def write(tmp_path: Path, text: str | bytes, name: str = "c.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_a_good_file_loads_and_builds_the_keyword_arguments_of_compare(tmp_path: Path) -> None:
    path = write(tmp_path, config_text(model="kwargs = { width = 6 }",
                                       compare="repeats = 3\nseed = 7\nmin_repeat_s = 0.5\nthreads = 2"))
    config = load_compare_config(path)
    assert (config.repeats, config.seed, config.min_repeat_s, config.threads) == (3, 7, 0.5, 2)
    kwargs = config.build()
    baseline = kwargs["variants"]["baseline"]
    assert baseline[0].out_features == 6 and kwargs["variants"]["prune:0.5"] == "prune:0.5"
    assert kwargs["repeats"] == 3 and kwargs["data"][0].shape == (16, 8)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xff\xfe[model]\n")
    with pytest.raises(ConfigError, match=r"c\.toml is not UTF-8 text \(byte 0\)"):
        load_compare_config(path)


@pytest.mark.parametrize(("line", "message"), [
    ("min_repeat_s = inf", "compare.min_repeat_s must be a number of seconds in [0, 3600] or None, not inf"),
    ("min_repeat_s = nan", "compare.min_repeat_s must be a number of seconds in [0, 3600] or None, not nan"),
    ("min_repeat_s = 86400", "compare.min_repeat_s must be a number of seconds in [0, 3600] or None, not 86400"),
    ("repeats = 9223372036854775000", "compare.repeats must be a whole number >= 1 and <= 1000, not 92233720"),
    ("warmup = 1000", "compare.warmup must be a whole number >= 0 and <= 100, not 1000"),
    ("seed = -1", "compare.seed must be a whole number >= 0 and <= 4294967295, not -1"),
    ("threads = 100000", "compare.threads must be a whole number >= 1 and <= 1024"),
    ("significance = 'anova'", "compare.significance must be one of 'paired', 'welch', 'bootstrap', not 'anova'"),
])
def test_settings_out_of_range_are_refused_with_the_range(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, config_text(compare=line))
    with pytest.raises(ConfigError) as info:
        load_compare_config(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_a_batch_size_is_named_under_data(tmp_path: Path) -> None:
    path = write(tmp_path, config_text().replace("[compare]", "batch_size = 0\n[compare]"))
    with pytest.raises(ConfigError, match=r"data\.batch_size must be a whole number >= 1, not 0"):
        load_compare_config(path)


@pytest.mark.parametrize(("recipes", "named", "where", "arg"), [
    ('["int8-dynamic", "prune:7"]', "", "compare.recipes", "'7'"),
    ('["prune:abc"]', "", "compare.recipes", "'abc'"),
    ('["int8-dynamic"]', '[compare.variants]\nsmall = "prune:1.5"\n', "compare.variants.small", "'1.5'"),
])
def test_recipe_arguments_are_checked_when_the_file_is_loaded(tmp_path: Path, recipes: str, named: str, where: str,
                                                              arg: str) -> None:
    path = write(tmp_path, config_text(recipes=recipes, factory=f"{HERE}:failing_factory") + named)
    with pytest.raises(ConfigError) as info:
        load_compare_config(path)  # the factory is never called: nothing is built for a bad recipe
    assert str(info.value).startswith(f"{path}: {where}: recipe 'prune': bad argument {arg}; expected S, the "
                                      "fraction of Linear/Conv weights set to zero, a number in [0, 1)")


def test_an_unknown_recipe_is_refused_when_the_file_is_loaded(tmp_path: Path) -> None:
    path = write(tmp_path, config_text(recipes='["prnue:0.5"]'))
    with pytest.raises(ConfigError, match=r"compare\.recipes: unknown recipe 'prnue'; registered recipes: "):
        load_compare_config(path)


def test_weights_that_are_not_a_checkpoint_are_a_config_error(tmp_path: Path) -> None:
    write(tmp_path, "not a checkpoint\n", "notes.txt")
    path = write(tmp_path, config_text(model='weights = "notes.txt"'))
    with pytest.raises(ConfigError) as info:
        load_compare_config(path).build()
    message = str(info.value)
    assert message.startswith(f"{path}: model.weights '{tmp_path / 'notes.txt'}' is not a PyTorch state_dict that "
                              "torch.load can read with weights_only=True (UnpicklingError)")
    assert "\n" not in message and "torch.save(model.state_dict(), path)" in message


def test_weights_holding_a_tensor_or_another_model_are_named(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    path = write(tmp_path, config_text(model='weights = "tensor.pt"'))
    with pytest.raises(ConfigError, match=r"model\.weights '.*tensor\.pt' holds a Tensor, not a state_dict"):
        load_compare_config(path).build()
    torch.save(make_tiny(width=5).state_dict(), tmp_path / "wide.pt")
    path = write(tmp_path, config_text(model='weights = "wide.pt"'))
    with pytest.raises(ConfigError) as info:
        load_compare_config(path).build()
    assert "does not fit the model that model.factory makes: Error(s) in loading state_dict" in str(info.value)
    assert "\n" not in str(info.value) and "size mismatch" in str(info.value)


def test_weights_that_fit_are_loaded(tmp_path: Path) -> None:
    trained = make_tiny()
    with torch.no_grad():
        trained[0].weight.fill_(0.25)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    kwargs = load_compare_config(write(tmp_path, config_text(model='weights = "w.pt"'))).build()
    assert torch.all(kwargs["variants"]["baseline"][0].weight == 0.25)


@pytest.mark.parametrize(("factory", "message"), [
    (".tiny:make", "model.factory '.tiny:make' is not an import path such as 'package.module:name' (relative "
                   "imports are not allowed)"),
    ("no_such_module_xyz:make", "model.factory: cannot import 'no_such_module_xyz'"),
    (f"{HERE}:no_such_name", f"model.factory: '{HERE}' has no attribute 'no_such_name'"),
    ("make", "model.factory 'make' is not an import path"),
])
def test_factories_that_cannot_be_imported_name_the_key(tmp_path: Path, factory: str, message: str) -> None:
    path = write(tmp_path, config_text(factory=factory))
    with pytest.raises(ConfigError) as info:
        load_compare_config(path).build()
    assert str(info.value).startswith(f"{path}: {message}")


def test_a_module_that_fails_while_imported_is_a_config_error(tmp_path: Path) -> None:
    module = f"gm_broken_{abs(hash(tmp_path)) % 10**8}"
    write(tmp_path, "raise RuntimeError('half-written module')\n", f"{module}.py")
    path = write(tmp_path, config_text(factory=f"{module}:make"))
    with pytest.raises(ConfigError, match=f"model.factory: importing '{module}' raised RuntimeError: half-written "
                                          "module") as info:
        load_compare_config(path).build()
    assert isinstance(info.value.__cause__, RuntimeError)


def test_unknown_factory_keyword_arguments_name_the_signature(tmp_path: Path) -> None:
    path = write(tmp_path, config_text(model="kwargs = { depth = 3 }"))
    with pytest.raises(ConfigError) as info:
        load_compare_config(path).build()
    assert str(info.value) == (f"{path}: model.kwargs do not fit model.factory '{HERE}:make_tiny': got an "
                               "unexpected keyword argument 'depth'; it takes make_tiny(width: 'int' = 4) -> "
                               "'torch.nn.Module'")


def test_what_the_users_factory_or_data_raise_is_a_config_error_with_the_cause(tmp_path: Path) -> None:
    path = write(tmp_path, config_text(factory=f"{HERE}:failing_factory"))
    with pytest.raises(ConfigError) as info:
        load_compare_config(path).build()
    assert str(info.value) == (f"{path}: model.factory '{HERE}:failing_factory' raised ValueError: the checkpoint "
                               "server is down")
    assert isinstance(info.value.__cause__, ValueError)
    path = write(tmp_path, config_text(eval_data=f"{HERE}:failing_data"))
    with pytest.raises(ConfigError, match=r"data\.eval '.*:failing_data' raised KeyError: \"split 'test'\""):
        load_compare_config(path).build()


def first_logits(output: object) -> torch.Tensor:
    """An ``output_fn`` named in a config."""
    return output  # type: ignore[return-value]


def test_target_key_and_output_fn_reach_compare_and_optimize(tmp_path: Path) -> None:
    text = config_text(model=f'output_fn = "{HERE}:first_logits"').replace(
        "[data]\n", '[data]\ntarget_key = "label"\n')
    config = load_compare_config(write(tmp_path, text))
    kwargs = config.build()
    assert kwargs["target_key"] == "label" and kwargs["output_fn"] is first_logits
    assert {k: config.optimize_kwargs()[k] for k in ("target_key", "output_fn")} == {
        "target_key": "label", "output_fn": first_logits}
    assert "target_key" not in load_compare_config(write(tmp_path, config_text(), "plain.toml")).build()


def test_a_bad_target_key_or_output_fn_is_named(tmp_path: Path) -> None:
    bad_key = config_text().replace("[data]\n", "[data]\ntarget_key = 3\n")
    with pytest.raises(ConfigError, match="data.target_key must be a non-empty string, not 3"):
        load_compare_config(write(tmp_path, bad_key))
    not_callable = config_text(model=f'output_fn = "{HERE}:HERE"')
    with pytest.raises(ConfigError, match="model.output_fn 'tests.comparison.test_config:HERE' is not callable"):
        load_compare_config(write(tmp_path, not_callable, "n.toml")).build()
