"""User-given text in every output: terminal listings and errors, Markdown reports, CSV exports (issue 15, defect 9).

Run, comparison and variant names, notes and commands are stored as given and come out safe for where they
are shown: on a terminal no escape sequence reaches it (ESC, C1 controls and bidi overrides appear as
``\\x1b``, ``\\x9b``, ``\\u202e``); in Markdown a name cannot add a link, an image, HTML, a table column or
end a code block; in CSV a cell a spreadsheet would run as a formula starts with ``'``, and numbers stay numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import shutil
from pathlib import Path

import pytest

from greenmeter import Meter
from greenmeter.cli.main import main
from greenmeter.output.report import comparison_report
from greenmeter.store.database import Store
from tests.fakes.scripted import ScriptedBackend

FIXTURE = Path(__file__).parents[1] / "fixtures" / "store_schema2.db"
# clear the screen, set the window title, a C1 CSI, a right-to-left override, a line break
EVIL = "run\x1b[2J\x1b]0;owned\x07\x9b31m\u202eexe.txt\nsecond line"
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
FORMULA = '=HYPERLINK("http://evil.example","click")'
MARKUP = "a|b [link](http://evil.example) ![img](http://evil.example/p.png) <b>bold</b> ``` `x`"


@pytest.fixture()
def store_path(tmp_path: Path) -> Path:
    """A store with an evil-named failed run (escapes in its name, command and note) and a formula-named run."""
    path = tmp_path / "runs.db"
    shutil.copyfile(FIXTURE, path)
    with Store(path) as store:
        run_id = store.start_run(name=EVIL, kind="run", command=["sh", "-c", "echo \x1b[31mred"])
        store.finish_run(run_id, status="failed", exit_code=2, note=f"ended by {EVIL}")
        comparison = store.last_comparison()
        assert comparison is not None
        store.add_comparison(dataclasses.replace(comparison, name=EVIL))
    meter = Meter([ScriptedBackend([1.0, 3.5])], sync=None)
    with meter.window("w") as window:
        pass
    assert window.measurement is not None
    with Store(path) as store:  # a command killed by SIGKILL: exit code -9, a number with a minus sign
        run_id = store.start_run(name=FORMULA, kind="run", command=["=cmd"])
        store.add_window(run_id, window.measurement)
        store.finish_run(run_id, status="failed", exit_code=-9, measurement=window.measurement)
    return path


def test_greenmeter_runs_prints_no_escape_sequence(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert not UNSAFE.findall(out), UNSAFE.findall(out)
    assert r"run\x1b[2J\x1b]0;owned\x07\x9b31m\u202eexe.txt\x0asecond line" in out  # shown, visibly
    assert r"failed: ended by run\x1b[2J" in out  # the failed run's note, on its own line
    assert FORMULA in out
    assert main(["runs", "--json", "--store", str(store_path)]) == 0  # JSON escapes by itself: data unchanged
    assert "\x1b" not in capsys.readouterr().out


def test_greenmeter_comparisons_prints_no_escape_sequence(store_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["comparisons", "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert not UNSAFE.findall(out) and r"run\x1b[2J" in out


def test_an_error_naming_a_user_given_path_prints_no_escape_sequence(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "\x1b[31mred\u202e" / "runs.db"
    assert main(["export", "--last", "--store", str(store)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not UNSAFE.findall(err) and r"\x1b[31mred\u202e" in err, err


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_exports_quote_formulas_and_keep_numbers(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--last", "--format", "csv", "--store", str(store_path)]) == 0
    (row,) = _csv(capsys.readouterr().out)
    assert row["name"] == "'" + FORMULA  # a spreadsheet shows it as text
    assert row["command"] == "'=cmd"
    assert row["energy_j"] == "2.5" and row["exit_code"] == "-9" and row["windows"] == "1"  # numbers stay numbers
    assert main(["export", "--last", "--format", "codecarbon", "--store", str(store_path)]) == 0
    (row,) = _csv(capsys.readouterr().out)
    assert row["project_name"] == "'" + FORMULA and float(row["duration"]) >= 0


def test_the_comparison_csv_quotes_a_formula_variant_name(store_path: Path) -> None:
    with Store(store_path, readonly=True) as store:
        c = store.last_comparison()
    assert c is not None
    second = dataclasses.replace(c.variants[1], name="-2+3")
    rows = _csv(comparison_report(dataclasses.replace(c, variants=(c.variants[0], second, *c.variants[2:])), "csv"))
    assert [r["variant"] for r in rows][:2] == ["float", "'-2+3"]
    assert float(rows[1]["energy_per_sample_j"]) > 0 and rows[0]["metric_change"] == ""


def test_a_markdown_report_keeps_names_as_text(store_path: Path) -> None:
    with Store(store_path, readonly=True) as store:
        c = store.last_comparison()
    assert c is not None
    names = [v.name for v in c.variants]
    chosen = names.index("channels:0.5")  # the recommended variant: its name is in the model-card block too
    variants = [dataclasses.replace(v, name=f"{MARKUP} {EVIL}") if i == chosen else v
                for i, v in enumerate(c.variants)]
    md = comparison_report(dataclasses.replace(c, name=EVIL, variants=tuple(variants)), "md")
    assert not UNSAFE.findall(md.replace("\n", " "))
    text = md[:md.index("## Hugging Face model card")]  # the page outside the code block
    assert "<b>" not in text and "](http" not in text.replace(r"\](http", "")  # no HTML, no link, no image
    # every table row has as many cells as the header
    table = [line for line in md.splitlines() if line.startswith("|")]
    cells = {len(re.split(r"(?<!\\)\|", line)) for line in table}
    assert len(table) == len(c.variants) + 2 and len(cells) == 1, table
    # the model-card code block is closed only by its own fence, however many backticks the name holds
    card = md[md.index("## Hugging Face model card"):].rstrip("\n").splitlines()[2:]
    fence = card[0].removesuffix("yaml")
    assert set(fence) == {"`"} and len(fence) > 3 and card[-1] == fence
    assert all(not line.startswith(fence) for line in card[1:-1])
    assert "```" in "".join(card[1:-1])  # the name is inside the block, backticks and all


def test_progress_lines_on_stderr_carry_no_escape_sequence(capsys: pytest.CaptureFixture[str]) -> None:
    from greenmeter.comparison.progress import Progress, progress_printer

    progress_printer(True, prefix="[search] ")(f"measuring {EVIL}")
    Progress(True, total=2)(f"variant {EVIL}: repeat 1", advance=1)
    err = capsys.readouterr().err
    assert not UNSAFE.search(err), err
    assert err.splitlines()[0].startswith("[search] measuring run\\x1b[2J")
    assert err.splitlines()[1].startswith("[1/2] variant run\\x1b[2J") and len(err.splitlines()) == 2
    seen: list[str] = []
    Progress(seen.append, total=1)(f"variant {EVIL}")  # a callable gets the line as it is: the caller shows it
    assert seen == [f"variant {EVIL}"]
