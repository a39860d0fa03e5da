"""Plain-text tables for the terminal (comparison tables, search results, benchmark reports)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["text_table"]


def text_table(rows: Sequence[Sequence[object]], left: int | Collection[int] = 0) -> str:
    """``rows[0]`` as the header, a dashed rule, then the other rows; the column ``left`` (or each of several)
    left-aligned, the rest right-aligned, columns two spaces apart, no trailing spaces."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lefts = {left} if isinstance(left, int) else set(left)

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in lefts else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *(line(r) for r in cells[1:])])
