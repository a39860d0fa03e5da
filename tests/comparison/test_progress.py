"""One rule for progress output: True prints lines on stderr, False prints nothing, a callable gets each line."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmeter import ConfigError
from greenmeter.comparison.progress import Progress, progress_printer


def test_true_prints_each_line_on_stderr_after_the_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    show = progress_printer(True, prefix="[search] ")
    show("candidate 1: 97.5%")
    show("candidate 2: 98.0%")
    out, err = capsys.readouterr()
    assert out == "" and err == "[search] candidate 1: 97.5%\n[search] candidate 2: 98.0%\n"


def test_false_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    progress_printer(False, prefix="greenmeter demo: ")("hidden")
    assert capsys.readouterr() == ("", "")


def test_a_callable_gets_each_bare_line_and_nothing_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    show = progress_printer(seen.append, prefix="[search] ")
    show("one")
    show("two")
    assert seen == ["one", "two"] and capsys.readouterr() == ("", "")


@pytest.mark.parametrize("bad", [None, 1, 0, "yes", ["line"]])
def test_anything_else_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        progress_printer(bad)
    assert str(info.value) == ("progress must be True (lines on stderr), False (none) or a callable given each "
                               f"line, not {bad!r}")


def test_counted_progress_numbers_each_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    show = Progress(True, 3)  # stderr is captured, so not a terminal: one line per item
    show("build int8", advance=1)
    show("measure float")
    show("measure int8", advance=2)
    assert capsys.readouterr().err == "[1/3] build int8\n[1/3] measure float\n[3/3] measure int8\n"


def test_counted_progress_gives_a_callable_the_bare_line_and_false_shows_nothing(
        capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []
    given, quiet = Progress(seen.append, 2), Progress(False, 2)
    for show in (given, quiet):
        show("a", advance=1)
        show("b", advance=1)
    assert seen == ["a", "b"] and given.done == quiet.done == 2 and capsys.readouterr() == ("", "")
    with pytest.raises(ConfigError, match="progress must be True"):
        Progress(None, 2)  # type: ignore[arg-type]


class _Terminal:
    """A standard error that says it is a terminal and keeps what is written to it."""

    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_on_a_terminal_a_tqdm_bar_is_redrawn_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    show = Progress(True, 2, prefix="[optimize] ")
    show("first", advance=1)
    show("second", advance=1)
    frames = term.text.split("\r")[1:]
    # tqdm's frames: opened at 0 of 2 with the first item's text, then (rate-limited) redrawn to the end
    assert frames[0].startswith("optimize:   0%|          | 0/2 [") and frames[0].rstrip().endswith("first]")
    assert frames[-1].startswith("optimize: 100%|##########| 2/2 [") and frames[-1].endswith("second]\n")
    assert show.bar and show.done == 2


def test_a_bar_keeps_a_failure_on_screen_and_grows_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    show = Progress(True, 1)
    show("making int8")
    show.grow(2)  # the job learns of 2 more items
    show("int8 FAILED: no engine", advance=1, keep=True)
    show("round 1", advance=1)
    show("round 2", advance=1)
    assert "int8 FAILED: no engine\n" in term.text  # written above the bar, as a line of its own
    last = term.text.split("\r")[-1]
    assert " 3/3 [" in last and last.endswith("round 2]\n")
    assert show.done == show.total == 3


def test_lines_not_counted_keep_the_bare_text_after_the_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    show = Progress(True, 3, prefix="[optimize] ", counted=False)
    show("making int8", advance=1)
    assert capsys.readouterr().err == "[optimize] making int8\n"


def test_compare_search_and_demo_refuse_a_bad_progress_before_any_work(tmp_path: Path) -> None:
    import torch

    import greenmeter
    from greenmeter.demo.run import run_demo

    model = torch.nn.Linear(4, 2)
    data = (torch.zeros(8, 4), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ConfigError, match="progress must be True"):
        greenmeter.compare({"base": model}, data, progress="loud")
    with pytest.raises(ConfigError, match="progress must be True"):
        run_demo(tmp_path / "demo", progress="loud")
    assert not (tmp_path / "demo").exists()
