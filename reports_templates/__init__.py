"""Jinja2 templates and CSS for greenmeter's reports (installed as ``greenmeter.reports_templates``).

Templates are package data: read them with ``importlib.resources.files("greenmeter.reports_templates")``.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["read_template"]


def read_template(name: str) -> str:
    """Return the text of a bundled template or stylesheet, e.g. ``read_template("base.html.j2")``."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
