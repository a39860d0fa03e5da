"""User errors on the command line are one line and a non-zero exit, found before any work; a traceback is shown
only for a bug in greenmeter, followed by a line asking to report it.

Each bad input runs ``greenmeter.cli.main.main`` in this process: exit 1 with exactly one line on standard error,
``greenmeter: error: ...``, or argparse's usage error (exit 2: the usage, then one ``error:`` line). Never a
traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from greenmeter import __version__  # noqa: E402
from greenmeter.cli import commands  # noqa: E402
from greenmeter.cli.main import EXIT_INTERNAL_ERROR, main  # noqa: E402

HERE = "tests.faults.test_cli_errors"
BUILT: list[int] = []  # one entry per baseline model made: the cases below must fail before any is made


def make_tiny(width: int = 4) -> torch.nn.Module:
    BUILT.append(width)
    return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 3))


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def _config(tmp_path: Path, *, model: str = "", compare: str = "", factory: str = f"{HERE}:make_tiny",
            recipes: str = '["prune:0.5"]') -> str:
    path = tmp_path / "c.toml"
    path.write_text(f'[model]\nfactory = "{factory}"\n{model}\n[data]\neval = "{HERE}:tiny_data"\n'
                    f"[compare]\nrecipes = {recipes}\nrepeats = 2\n{compare or 'min_repeat_s = 0.01'}\n")
    return str(path)


def _not_utf8(tmp_path: Path) -> str:
    path = tmp_path / "latin1.toml"
    path.write_bytes("[model]\nfactory = 'caf\u00e9:make'\n".encode("latin-1"))
    return str(path)


def _not_a_checkpoint(tmp_path: Path) -> str:
    (tmp_path / "weights.pt").write_text("these are not weights\n")
    return _config(tmp_path, model='weights = "weights.pt"')


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "file.txt").write_text("a file where a folder should be\n")
    return tmp_path / "file.txt"


Argv = Callable[[Path], list[str]]
CASES: list[tuple[str, Argv, int, str, bool]] = [  # id, argv, exit code, part of the message, whether it builds
    ("toml not utf-8", lambda t: ["compare", _not_utf8(t)], 1, "latin1.toml is not UTF-8 text (byte 22)", False),
    ("min_repeat_s inf", lambda t: ["compare", _config(t, compare="min_repeat_s = inf")],
     1, "min_repeat_s must be a number of seconds in [0, 3600] or None, not inf", False),
    ("weights not a checkpoint", lambda t: ["compare", _not_a_checkpoint(t), "--no-store"], 1,
     "weights.pt' is not a PyTorch state_dict that torch.load can read with weights_only=True", True),
    ("weights missing", lambda t: ["compare", _config(t, model='weights = "none.pt"'), "--no-store"], 1,
     "none.pt' cannot be read: No such file or directory", True),
    ("factory relative", lambda t: ["compare", _config(t, factory=".tiny:make"), "--no-store"], 1,
     "model.factory '.tiny:make' is not an import path such as 'package.module:name'", False),
    ("factory not importable", lambda t: ["compare", _config(t, factory="no_such_module_xyz:make"), "--no-store"], 1,
     "model.factory: cannot import 'no_such_module_xyz'", False),
    ("factory kwargs unknown", lambda t: ["compare", _config(t, model="kwargs = { depth = 3 }"), "--no-store"], 1,
     "got an unexpected keyword argument 'depth'; it takes make_tiny(width: 'int' = 4)", False),
    ("compare --json folder missing", lambda t: ["compare", _config(t), "--json", str(t / "no" / "c.json")], 1,
     "--json '{t}/no/c.json': the folder '{t}/no' does not exist; create it or write elsewhere", False),
    ("compare --json a folder", lambda t: ["compare", _config(t), "--json", str(t)], 1,
     "is a folder: give the path of a file to write", False),
    ("export -o folder missing", lambda t: ["export", "--last", "-o", str(t / "no" / "runs.json")], 1,
     "--output '{t}/no/runs.json': the folder '{t}/no' does not exist", False),
    ("report -o under a file", lambda t: ["report", "--last", "-o", str(_a_file(t) / "sub" / "r.html")], 1,
     "--output '{t}/file.txt/sub/r.html': the folder '{t}/file.txt/sub' cannot be made: '{t}/file.txt' is not a "
     "folder", False),
    ("report --tolerance nan", lambda t: ["report", "--last-run", "--tolerance", "nan"], 1,
     "tolerance must be a number >= 0 (in the metric's unit: 0.01 = 1 percentage point of accuracy), not nan", False),
    ("compare --repeats 2**63", lambda t: ["compare", _config(t), "--repeats", "9223372036854775000"], 1,
     "--repeats must be a whole number >= 1 and <= 1000, not 9223372036854775000", False),
    ("compare --threads 0", lambda t: ["compare", _config(t), "--threads", "0"], 1,
     "--threads must be a whole number >= 1 and <= 1024", False),
    ("compare --repeats abc", lambda t: ["compare", _config(t), "--repeats", "abc"], 2,
     "argument --repeats: invalid int value: 'abc'", False),
    ("recipe prune:7", lambda t: ["compare", _config(t, recipes='["prune:7"]'), "--no-store"], 1,
     "compare.recipes: recipe 'prune': bad argument '7'; expected S, the fraction of Linear/Conv weights set to "
     "zero, a number in [0, 1) (default 0.5)", False),
    ("recipe prune:abc", lambda t: ["compare", _config(t, recipes='["int8-dynamic", "prune:abc"]'), "--no-store"], 1,
     "compare.recipes: recipe 'prune': bad argument 'abc'", False),
    ("recipe int4:inf", lambda t: ["compare", _config(t, recipes='["int4:inf"]'), "--no-store"], 1,
     "recipe 'int4': bad argument 'inf'; expected G, the group size (input weights sharing one scale), an integer "
     "in [2, 4096]", False),
    ("config seed -1", lambda t: ["compare", _config(t, compare="seed = -1")], 1,
     "compare.seed must be a whole number >= 0 and <= 4294967295, not -1", False),
    ("config missing", lambda t: ["compare", str(t / "none.toml")], 1, "cannot read the comparison config", False),
    ("carbon --kwh nan", lambda t: ["carbon", "--kwh", "nan"], 2,
     "argument --kwh: kwh must be a number of kWh in [0, 1e+09], not nan", False),
    ("carbon --kwh -1", lambda t: ["carbon", "--kwh", "-1"], 2, "kwh must be a number of kWh in [0, 1e+09]", False),
    ("runs --limit huge", lambda t: ["runs", "--limit", "99999999999999999999"], 2,
     "argument --limit: limit must be a whole number >= 0 and <= 1000000000, not 99999999999999999999", False),
    ("comparisons --limit -1", lambda t: ["comparisons", "--limit", "-1"], 2,
     "argument --limit: limit must be a whole number >= 0 and <= 1000000000, not -1", False),
]


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit code; argparse's usage errors leave through SystemExit, as they do in a console script."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.fixture(autouse=True)
def _sys_path_and_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the config loader adds the TOML file's folder
    BUILT.clear()


@pytest.mark.parametrize(("argv", "code", "message", "builds"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_user_error_is_one_line_and_a_non_zero_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: Argv,
                                                     code: int, message: str, builds: bool) -> None:
    got = _exit_code(argv(tmp_path))
    out, err = capsys.readouterr()
    assert got == code, err
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("greenmeter: error: "), err
    else:  # argparse: the usage (one or more lines), then one error line naming the command
        assert lines[0].startswith("usage: greenmeter ") and lines[-1].startswith("greenmeter ")
        assert ": error: " in lines[-1] and all(": error: " not in line for line in lines[:-1]), err
    assert message.replace("{t}", str(tmp_path)) in lines[-1]
    assert BUILT == ([4] if builds else [])  # a bad setting, recipe or path stops it before the model is made


def test_the_json_path_is_checked_before_the_comparison_runs(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert main(["compare", config, "--no-store", "--quiet", "--json", str(tmp_path / "no" / "c.json")]) == 1
    assert BUILT == [] and "making" not in capsys.readouterr().err
    out_json = tmp_path / "c.json"
    assert main(["compare", config, "--no-store", "--quiet", "--json", str(out_json)]) == 0
    assert BUILT == [4] and '"variants"' in out_json.read_text()


def test_an_internal_bug_shows_its_traceback_and_asks_for_a_report(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: object) -> int:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setattr(commands, "cmd_carbon", broken)
    assert main(["carbon", "--kwh", "1"]) == EXIT_INTERNAL_ERROR == 70
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "RuntimeError: a bug in a handler" in lines[-2]
    assert lines[-1].startswith(f"greenmeter: internal error: this is a bug in greenmeter {__version__}; please "
                                "report it with the traceback above ")


def test_an_os_error_is_one_line_naming_the_file(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def disk_full(args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/report.html")

    monkeypatch.setattr(commands, "cmd_carbon", disk_full)
    assert main(["carbon"]) == 1
    assert capsys.readouterr().err == "greenmeter: error: No space left on device: /data/report.html\n"
