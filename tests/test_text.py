"""Terminal tables (one helper for the comparison table, the search results, the recipe list and the benchmarks),
and user-given text made safe for each output context: terminal, Markdown, CSV."""

from __future__ import annotations

import pytest

from greenmeter._text import csv_cell, markdown_code_block, markdown_code_span, markdown_text, terminal_text, text_table


def test_one_left_column_and_several() -> None:
    rows = [("name", "value"), ("a", 1), ("longer", 12.5)]
    assert text_table(rows).splitlines() == ["name    value", "------  -----", "a           1", "longer   12.5"]
    assert text_table(rows, left=range(2)).splitlines() == [
        "name    value", "------  -----", "a       1", "longer  12.5"]  # no trailing spaces after the last cell


# ---- untrusted text, one function per output context (issue 15, defect 9) --------------------------------

UNSAFE = "\x1b\x07\x00\x7f\x9b\u202e\u2066\u200f\u2028"


def test_terminal_text_shows_every_control_character_as_a_visible_escape() -> None:
    name = "run\x1b[2J\x1b]0;owned\x07 \x9b31m\u202eexe.txt\u2066x\u2069"
    assert terminal_text(name) == r"run\x1b[2J\x1b]0;owned\x07 \x9b31m\u202eexe.txt\u2066x\u2069"
    assert terminal_text("a\nb\tc") == r"a\x0ab\x09c"  # one line stays one line
    assert terminal_text("a\nb\tc", multiline=True) == "a\nb\tc"
    assert terminal_text("Île-de-France 42 J, ≥ 3 µs") == "Île-de-France 42 J, ≥ 3 µs"  # printable: unchanged
    assert not set(terminal_text(UNSAFE)) & set(UNSAFE)
    assert terminal_text(3.5) == "3.5"


def test_text_tables_escape_their_cells() -> None:
    table = text_table([("name", "J"), ("a\x1b[31mred", 1)])
    assert "\x1b" not in table and r"a\x1b[31mred" in table


def test_markdown_text_stays_literal_text_in_a_table_cell() -> None:
    assert markdown_text("a|b") == r"a\|b"
    assert markdown_text("[x](javascript:alert(1)) ![i](http://t/p.png)") == (
        r"\[x\](javascript:alert(1)) !\[i\](http://t/p.png)")
    assert markdown_text("<script>x</script> & co") == "&lt;script&gt;x&lt;/script&gt; &amp; co"
    assert markdown_text("*a* _b_ `c` ~~d~~ \\") == r"\*a\* \_b\_ \`c\` \~\~d\~\~ \\"
    assert markdown_text("line 1\nline 2\r\nline 3") == "line 1 line 2 line 3"
    assert markdown_text("# title") == r"\# title" and markdown_text("- item") == r"\- item"
    assert markdown_text("1. first") == r"1\. first"
    assert markdown_text("-1.5 J") == "-1.5 J" and markdown_text("3.14") == "3.14"  # numbers read as before
    assert markdown_text("a\x1b[2Jb") == r"a\\x1b\[2Jb"  # shown as the escape, which Markdown prints as \x1b[2J


def test_markdown_code_is_fenced_beyond_any_backtick_run_it_holds() -> None:
    assert markdown_code_span("rate") == "`rate`"
    assert markdown_code_span("a``b") == "```a``b```"
    assert markdown_code_span("`x") == "`` `x ``"
    block = markdown_code_block("a: 1\n````\nb: 2", "yaml")
    assert block == "`````yaml\na: 1\n````\nb: 2\n`````\n"
    assert markdown_code_block("x: 1\n") == "```\nx: 1\n```\n"
    assert "\x1b" not in markdown_code_block("x: \x1b[2J\n")


@pytest.mark.parametrize(("cell", "written"), [
    ("=HYPERLINK(\"http://e\",\"x\")", "'=HYPERLINK(\"http://e\",\"x\")"),
    ("+cmd", "'+cmd"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("-", "'-"), ("plain", "plain"), ("a=b", "a=b"),
    ("-1.5", "-1.5"), ("+2e3", "+2e3"), (-1.5, -1.5), (3, 3), (None, None), (True, True),
])
def test_csv_cells_a_spreadsheet_would_run_get_a_quote_and_numbers_stay_numbers(cell: object, written: object) -> None:
    assert csv_cell(cell) == written
