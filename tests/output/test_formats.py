"""The output-format registry: the built-ins per subject, formats registered at run time rendering through
the report functions, the exports and the command line, the file-name checks of write_report, the errors.

Rendered from ``tests/fixtures/store_schema2.db``, copied to ``tmp_path`` first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from greenmeter import ConfigError
from greenmeter.cli.main import main
from greenmeter.output.comparison_view import comparison_view
from greenmeter.output.export import export_runs
from greenmeter.output.formats import (
    ExportOptions,
    Format,
    format_for_path,
    format_names,
    get_format,
    register_format,
    unregister_format,
)
from greenmeter.output.report import comparison_report, run_report, store_report, write_report
from greenmeter.output.view import ReportView
from greenmeter.records.comparison import Comparison
from greenmeter.records.run import RunRecord
from greenmeter.store.database import Store



# ---- a third-party format, registered for one test ----------------------------------------------------

def render_tsv(view: ReportView, record: Mapping[str, Any]) -> str:
    """Each row's name and the text of its fifth cell, after a header naming the record and the charts drawn."""
    subject = record.get("comparison", record.get("run", {}))
    lines = [f"{view.kind}\t{subject.get('name')}\t{len(view.charts)} chart(s)"]
    lines += [f"{row.name}\t{row.cells[4].text}" for row in view.rows]
    return "\n".join(lines) + "\n"


def render_ids(runs: Sequence[RunRecord], options: ExportOptions) -> str:
    return "".join(f"{run.id} {options.training_type}\n" for run in runs)


@pytest.fixture()
def tsv() -> Iterator[Format]:
    fmt = register_format(Format("tsv", ".tsv", "the table's names and fifth column, tab-separated",
                                 comparison=render_tsv, run=f"{__name__}:render_tsv", runs=render_ids))
    yield fmt
    unregister_format("tsv")


# ---- the built-ins --------------------------------------------------------------------------------------

def test_the_built_ins_are_listed_per_subject_with_their_extensions() -> None:
    # plug-ins (none are installed in the test environment, but a developer's may be) come after them
    assert format_names("comparison")[:4] == ("html", "md", "csv", "json")
    assert format_names("run")[:4] == ("html", "md", "csv", "json")
    assert format_names("runs")[:4] == ("csv", "json", "codecarbon", "model-card")
    assert format_names()[:6] == ("html", "md", "csv", "json", "codecarbon", "model-card")
    extensions = {name: get_format(name).extensions for name in format_names()[:6]}
    assert extensions == {"html": (".html", ".htm"), "md": (".md",), "csv": (".csv",), "json": (".json",),
                          "codecarbon": (".csv",), "model-card": (".yaml", ".yml")}
    assert get_format("html").charts and not any(get_format(n).charts for n in ("md", "csv", "json"))
    assert get_format("csv").subjects == ("comparison", "run", "runs")
    assert get_format("model-card").subjects == ("runs",)


@pytest.mark.parametrize(("path", "subject", "name"), [
    ("out/report.HTM", None, "html"),
    ("report.md", "comparison", "md"),
    ("emissions.csv", "runs", "csv"),  # csv and codecarbon share .csv: the one registered first wins
    ("card.yml", "runs", "model-card"),
    ("card.yaml", "comparison", None),  # model-card renders no comparison
    ("report.pdf", None, None),
    (".csv", None, None),  # an extension alone is not a file name
])
def test_the_format_of_a_file_name(path: str, subject: str | None, name: str | None) -> None:
    found = format_for_path(path, subject)
    assert (found.name if found else None) == name


def test_unknown_formats_list_the_known_ones_for_the_subject() -> None:
    with pytest.raises(ConfigError, match=r"unknown report format 'pdf': use one of html, md, csv, json"):
        get_format("pdf", ("comparison", "run"))
    with pytest.raises(ConfigError, match=r"the codecarbon format does not render a comparison: "
                                          r"use one of html, md, csv, json"):
        get_format("codecarbon", "comparison")
    with pytest.raises(ConfigError, match=r"unknown export format 'xlsx': use one of csv, json, codecarbon, "
                                          r"model-card"):
        export_runs([], "xlsx")
    with pytest.raises(ConfigError, match=r"the model-card format does not render a comparison"):
        comparison_report(None, "model-card")  # type: ignore[arg-type]  # refused before the comparison is read
    with pytest.raises(ConfigError, match="subject must be one of 'comparison', 'run', 'runs', 'optimization', not 'table'"):
        format_names("table")


def test_listing_formats_imports_no_renderer_nor_jinja2() -> None:
    code = ("import sys; from greenmeter.cli.main import _parser; _parser(); "
            "from greenmeter.output.formats import format_names; format_names(); "
            "print(sorted(m for m in sys.modules if m in ('jinja2', 'matplotlib', 'pandas', 'torch', "
            "'greenmeter.output.renderers', 'greenmeter.output.export', 'greenmeter.output.report')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ---- a registered format --------------------------------------------------------------------------------

def test_a_registered_format_renders_a_comparison_and_a_run(tsv: Format, comparison: Comparison,
                                                            store_path: Path) -> None:
    assert format_names("comparison")[-1] == "tsv" and format_names("runs")[-1] == "tsv"
    text = comparison_report(comparison, "tsv")
    view = comparison_view(comparison, charts=False)
    assert text.splitlines() == [f"comparison\t{comparison.name}\t0 chart(s)",
                                 *(f"{row.name}\t{row.cells[4].text}" for row in view.rows)]
    assert text.splitlines()[1] == "float\t" + f"{comparison.variant('float').energy_per_sample_j.mean * 1e3:.4g}"
    with Store(store_path) as store:
        run = next(r for r in store.list_runs() if r.name == "digits-training")
        windows = store.windows(run.id)
        kind, stored = store_report(store, run.id[:8], "tsv")
        assert kind == "run" and stored == run_report(run, windows, fmt="tsv")
    assert stored.splitlines() == [f"run\t{run.name}\t0 chart(s)",
                                   *(f"{w.name}\t{w.energy_j:.4g}" for w in windows)]


def test_a_format_that_shows_charts_gets_a_view_with_charts(comparison: Comparison) -> None:
    register_format(Format("tsv-charts", ".tsvc", "as tsv, with charts drawn", comparison=render_tsv, charts=True))
    try:
        assert comparison_report(comparison, "tsv-charts").startswith(f"comparison\t{comparison.name}\t2 chart(s)\n")
    finally:
        unregister_format("tsv-charts")


def test_a_registered_format_renders_through_the_cli(tsv: Format, store_path: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with Store(store_path) as store:
        want = comparison_report(store.last_comparison(), "tsv")  # type: ignore[arg-type]
        last_run = store.last_run()
    assert want.startswith("comparison\tdigits-fixture\t")
    out = tmp_path / "out" / "table.txt"
    assert main(["report", "--last", "--store", str(store_path), "--format", "tsv", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == want
    assert f"wrote the comparison report to {out}" in capsys.readouterr().out
    assert main(["report", "--last", "--store", str(store_path), "-o", str(tmp_path / "by-name.tsv")]) == 0
    assert (tmp_path / "by-name.tsv").read_text(encoding="utf-8") == want  # the format from the extension
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--last", "--store", str(store_path), "--format", "tsv"]) == 0
    assert (tmp_path / "greenmeter-report.tsv").read_text(encoding="utf-8") == want  # the default name
    capsys.readouterr()
    assert last_run is not None
    assert main(["export", "--last", "--store", str(store_path), "--format", "tsv",
                 "--training-type", "fine-tuning"]) == 0
    assert capsys.readouterr().out == f"{last_run.id} fine-tuning\n"


def test_the_cli_refuses_a_format_that_is_not_registered(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--last", "--store", str(store_path), "--format", "tsv"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tsv' (choose from 'html', 'md', 'csv', 'json'" in capsys.readouterr().err
    assert main(["report", "--last", "--store", str(store_path), "-o", "report.yaml"]) == 1
    assert ("cannot tell the format from 'report.yaml': use a .html, .md, .csv or .json name, or --format"
            in capsys.readouterr().err)
    assert main(["report", "--last", "--store", str(store_path), "--format", "md", "-o", "report.html"]) == 1
    assert "cannot write md text to report.html: the name asks for html" in capsys.readouterr().err


def test_a_renderer_named_by_a_string_that_cannot_be_imported_fails_when_used(comparison: Comparison) -> None:
    register_format(Format("lost", ".lost", "a renderer that does not exist",
                           comparison="greenmeter.output.no_such_module:render"))
    try:
        assert "lost" in format_names("comparison")  # listing does not import the renderer
        with pytest.raises(ConfigError, match=r"the lost format's comparison renderer "
                                              r"'greenmeter.output.no_such_module:render' cannot be imported"):
            comparison_report(comparison, "lost")
    finally:
        unregister_format("lost")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "Bad Name"}, "Format.name must be lower case letters, digits"),
    ({"extension": "tsv"}, "an extension is a dot"),
    ({"description": "two\nlines"}, "description must be one non-empty line"),
    ({"comparison": None}, "renders nothing"),
    ({"comparison": 42}, "comparison must be a callable, a 'module:function' string or None, not 42"),
    ({"comparison": "no colon"}, "comparison must be a callable"),
])
def test_a_malformed_format_is_refused(kwargs: dict[str, Any], message: str) -> None:
    fields = {"name": "ok", "extension": ".ok", "description": "fine", "comparison": render_tsv, **kwargs}
    with pytest.raises(ConfigError, match=message):
        Format(**fields)


def test_names_are_taken_once_and_built_ins_stay(tsv: Format) -> None:
    with pytest.raises(ConfigError, match="a format named 'tsv' is already registered"):
        register_format(Format("tsv", ".tsv", "again", comparison=render_tsv))
    with pytest.raises(ConfigError, match="a format named 'csv' is already registered"):
        register_format(Format("csv", ".csv", "a second csv", comparison=render_tsv))
    with pytest.raises(ConfigError, match="'html' is a built-in format and cannot be removed"):
        unregister_format("html")
    with pytest.raises(ConfigError, match="register_format takes a Format, not a dict"):
        register_format({"name": "x"})  # type: ignore[arg-type]


# ---- write_report ---------------------------------------------------------------------------------------

def test_write_report_checks_the_text_against_the_name(comparison: Comparison, tmp_path: Path) -> None:
    md = comparison_report(comparison, "md")
    assert write_report(md, tmp_path / "report.md").read_text(encoding="utf-8") == md
    html = comparison_report(comparison, "html")
    with pytest.raises(ConfigError, match=r"report\.md is an HTML page, but its name asks for md: render the "
                                          r"report as md \(comparison_report\(result, 'md'\)\), or write it to a "
                                          r"\.html name"):
        write_report(html, tmp_path / "report.md")
    assert not (tmp_path / "report.md").read_text(encoding="utf-8").startswith("<!doctype")  # left as it was
    with pytest.raises(ConfigError, match=r"is not an HTML page, but its name asks for html"):
        write_report(md, tmp_path / "report.html")
    with pytest.raises(ConfigError, match=r"cannot write md text to .*report\.html: the name asks for html"):
        write_report(md, tmp_path / "report.html", fmt="md")
    assert write_report(html, tmp_path / "page.HTM").read_text(encoding="utf-8") == html
    assert write_report(md, tmp_path / "notes.txt").read_text(encoding="utf-8") == md  # no format claims .txt
    csv_text = "timestamp,project_name\n"
    assert write_report(csv_text, tmp_path / "emissions.csv", fmt="codecarbon").read_text() == csv_text
    data = json.loads(comparison_report(comparison, "json"))
    assert write_report(json.dumps(data), tmp_path / "c.json", fmt="json").exists()
    with pytest.raises(ConfigError, match="unknown format 'pdf'"):
        write_report(md, tmp_path / "r.pdf", fmt="pdf")
