"""Text for people and other programs: terminal tables, and strings made safe for where they are shown.

Run names, variant names, commands, notes and flags come from users (or from the programs they measure)
and reach terminals, Markdown pages and spreadsheets. Each output context has one function here, used
by every place that writes to it:

- :func:`terminal_text`: control characters (ESC, C1 controls, DEL...) and bidirectional overrides
  shown as visible escapes (``\\x1b``, ``\\u202e``), so a name cannot move the cursor, clear the screen,
  set the window title or reorder what the reader sees.
- :func:`markdown_text`, :func:`markdown_code_span` and :func:`markdown_code_block`: text that stays text
  in a Markdown table cell, list item or code block (no links, images, HTML, emphasis or column breaks).
- :func:`csv_cell`: a text cell a spreadsheet will not run as a formula (OWASP's CSV injection rule).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

__all__ = ["csv_cell", "markdown_code_block", "markdown_code_span", "markdown_text", "terminal_text", "text_table"]

# C0 controls (but tab and newline, which some contexts keep), DEL, C1 controls, and the invisible
# characters that change how text around them is shown: bidi marks, embeddings, overrides and isolates,
# and the Unicode line and paragraph separators.
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE_LINE = re.compile(f"[\t\n{_UNSAFE}]")
_UNSAFE_BLOCK = re.compile(f"[{_UNSAFE}]")
# CommonMark lets any ASCII punctuation be backslash-escaped. Escaped here: what starts markup anywhere in
# a line (emphasis, code, links and images, strikethrough, table cells), and at the text's start what
# starts a block (a heading, a list item, an ordered list item); numbers elsewhere keep their dots.
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]|~])")
_MARKDOWN_BLOCK_START = re.compile(r"^(\s*)([#+\-]|\d+[.)])(?=\s|$)")
_BACKTICKS = re.compile(r"`+")
# OWASP, CSV injection: a cell starting with one of these may be run as a formula by a spreadsheet.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_text(value: object, *, multiline: bool = False) -> str:
    """``str(value)`` safe to print to a terminal: every control character shown as a visible escape.

    ESC (``\\x1b``), the other C0 and C1 controls, DEL, bidirectional marks, embeddings, overrides and
    isolates, and the Unicode line separators become ``\\xNN`` or ``\\uNNNN``; nothing else changes.

    Args:
        value: the text (anything, through ``str``).
        multiline: keep newlines (for a message of several lines); else newlines and tabs are escaped
            too, so the text stays on its line (a table cell, one line of a listing).

    Returns:
        The text, with no character left that a terminal would act on.
    """
    return (_UNSAFE_BLOCK if multiline else _UNSAFE_LINE).sub(_escape, str(value))


def markdown_text(value: object) -> str:
    """``str(value)`` as literal text in a Markdown table cell, list item or paragraph, on one line.

    Markup characters are backslash-escaped (no emphasis, code, links, images or headings), ``&``, ``<``
    and ``>`` become entities (no raw HTML, no autolinks), ``|`` cannot end a table cell, and newlines
    become spaces; control characters are shown as :func:`terminal_text` shows them.
    """
    text = terminal_text(str(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " "))
    text = _MARKDOWN_INLINE.sub(r"\\\1", text)
    text = _MARKDOWN_BLOCK_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_code_span(value: object) -> str:
    """``str(value)`` as one inline Markdown code span, whatever backticks it holds (one line)."""
    text = terminal_text(str(value).replace("\n", " "))
    runs = [len(r) for r in _BACKTICKS.findall(text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_code_block(value: object, language: str = "") -> str:
    """``str(value)`` as a fenced Markdown code block, its fence longer than any backtick run in it.

    Args:
        value: the block's text (several lines).
        language: the info string after the opening fence (``"yaml"``).

    Returns:
        The block, from the opening fence to the closing one and a newline.
    """
    text = terminal_text(value, multiline=True)
    fence = "`" * max(3, max((len(r) for r in _BACKTICKS.findall(text)), default=0) + 1)
    if not text.endswith("\n"):
        text += "\n"
    return f"{fence}{terminal_text(language)}\n{text}{fence}\n"


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab
    or a carriage return gets a leading ``'`` (OWASP); numbers, and text that is only a number
    (``"-1.5"``), are returned unchanged."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def text_table(rows: Sequence[Sequence[object]], left: int | Collection[int] = 0) -> str:
    """``rows[0]`` as the header, a dashed rule, then the other rows; the column ``left`` (or each of several)
    left-aligned, the rest right-aligned, columns two spaces apart, no trailing spaces. Every cell goes
    through :func:`terminal_text`."""
    cells = [[terminal_text(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lefts = {left} if isinstance(left, int) else set(left)

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in lefts else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *(line(r) for r in cells[1:])])
