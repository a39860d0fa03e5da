"""YAML scalars of the Hugging Face model-card ``co2_eq_emissions`` block.

The block is written in two places, by the run exports (:mod:`greenmeter.output.export`) and by the
comparison report (:mod:`greenmeter.output.prose`); both quote their values here, so a model card reads
the same numbers and strings whichever wrote it.
"""

from __future__ import annotations

import json

__all__ = ["yaml_float", "yaml_text"]


def yaml_text(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML ones) on one line, with every character that is
    not printable (controls, bidirectional overrides, line separators) written as a ``\\u`` escape, so that the
    block shows what it holds wherever it is pasted."""
    return "".join(c if c.isprintable() else (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
                   for c in json.dumps(text, ensure_ascii=False))


def yaml_float(value: float) -> str:
    """A float YAML 1.1 and 1.2 both read as a float (``1e-05`` would be a string to YAML 1.1)."""
    text = repr(float(value))
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text
