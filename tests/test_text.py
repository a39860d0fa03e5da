"""Terminal tables: one helper for the comparison table, the search results, the recipe list and the benchmarks."""

from __future__ import annotations

from greenmeter._text import text_table


def test_one_left_column_and_several() -> None:
    rows = [("name", "value"), ("a", 1), ("longer", 12.5)]
    assert text_table(rows).splitlines() == ["name    value", "------  -----", "a           1", "longer   12.5"]
    assert text_table(rows, left=range(2)).splitlines() == [
        "name    value", "------  -----", "a       1", "longer  12.5"]  # no trailing spaces after the last cell
