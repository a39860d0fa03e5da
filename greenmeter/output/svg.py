"""A matplotlib figure as an ``<svg>`` element to inline in an HTML5 page (private to the report charts).

Draw the figure under the rc settings :data:`RC` (merged into the caller's own style), then call
:func:`render`. Its text is:

* deterministic: the same figure gives byte-identical text (fixed hash salt; no date, creator or other
  metadata);
* scalable: a ``viewBox`` with ``width="100%"`` and no fixed width or height;
* accessible: ``role="img"``, an ``aria-label`` and a first-child ``<title>`` with the given title;
* self-contained: no XML declaration or DOCTYPE, no external references, text kept as ``<text>``
  elements (searchable in the page), user strings drawn literally (no mathtext) and escaped;
* page-safe: matplotlib's ``<style>`` rule (``*{...}``, which would restyle the whole page) is dropped and
  its defaults set on the root element instead, and every ``id`` (and each reference to it) is prefixed
  with a digest of the chart, so several charts fit in one page.

matplotlib is only imported by the caller: importing this module stays light.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["RC", "render"]

RC: dict[str, Any] = {
    "svg.hashsalt": "greenmeter", "svg.fonttype": "none",  # stable ids; text stays <text>
    "text.parse_math": False, "text.usetex": False,  # user strings drawn literally, never as mathtext
}
# Metadata keys matplotlib fills by default; None drops them (no date, no URLs, no <metadata> block).
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}

_TAG = re.compile(r"<[^<>]+>")  # text content is escaped by matplotlib, so this matches real tags only
_ID = re.compile(r'(\sid=")([^"]+")')
_REF = re.compile(r'(href="#|url\(#)')


def render(fig: Figure, title: str) -> str:
    """Render ``fig`` as an inline ``<svg>`` element (see the module docstring).

    Args:
        fig: the figure, drawn under :data:`RC`; saved with a tight bounding box (it is not changed).
        title: the chart's accessible name, plain text (escaped here).

    Returns:
        The ``<svg>`` element's text, ending in a newline.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata=_NO_METADATA, bbox_inches="tight", pad_inches=0.08)
    text = buf.getvalue().decode("utf-8")
    text = text[text.index("<svg"):]  # drop the XML declaration and DOCTYPE
    # matplotlib's `*{stroke-linejoin: round; stroke-linecap: butt}` would style the whole page once
    # inlined; the same defaults set on the root element reach every element of this chart only.
    text = re.sub(r'<style type="text/css">[^<]*</style>\s*', "", text, count=1)
    text = re.sub(r"<defs>\s*</defs>\s*", "", text, count=1)
    prefix = "gm" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:10] + "-"
    text = _TAG.sub(lambda m: _REF.sub(r"\1" + prefix, _ID.sub(r"\1" + prefix + r"\2", m.group(0))), text)
    end = text.index(">")
    root = re.sub(r'\s(width|height)="[^"]*"', "", text[:end])
    label = html.escape(title, quote=True)
    root += (f' width="100%" role="img" aria-label="{label}" stroke-linejoin="round" stroke-linecap="butt"'
             f">\n <title>{label}</title>")
    return root + text[end + 1:].rstrip() + "\n"
