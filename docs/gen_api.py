"""Write docs/api.md, the API reference, from the public names' signatures and docstrings.

    python docs/gen_api.py           # rewrite docs/api.md
    python docs/gen_api.py --check   # exit 1 if docs/api.md is out of date (tests/test_docs.py runs this)

Public means listed in a module's ``__all__``. Nothing is hand-written here but the section list, so
the reference cannot drift from the code: change a docstring, rerun this.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

TARGET = Path(__file__).with_name("api.md")

SECTIONS = (
    ("greenmeter", "Measure, compare, report: the top level"),
    ("greenmeter.compression", "Compression methods"),
    ("greenmeter.compression.registry", "The method registry: recipes and facts hooks"),
    ("greenmeter.comparison.batches", "Batches as they come: tensors, tuples, dicts, DataLoaders"),
    ("greenmeter.comparison.metrics", "Metrics: per data set or batch by batch"),
    ("greenmeter.comparison.recipes", "Recipes: named variants built from a baseline"),
    ("greenmeter.comparison.optimize", "Optimize: the least energy within an accuracy budget"),
    ("greenmeter.records.optimization", "Optimize: its record"),
    ("greenmeter.comparison.sensitivity", "Per-layer sensitivity"),
    ("greenmeter.comparison.export", "Saving a variant to deploy"),
    ("greenmeter.stats", "Statistics"),
    ("greenmeter.output.report", "Reports"),
    ("greenmeter.output.formats", "Output formats"),
    ("greenmeter.sources.registry", "Energy sources: the registry"),
    ("greenmeter.sources.base", "Energy sources: the contract"),
    ("greenmeter.plugins", "Plug-ins through entry points"),
    ("greenmeter.store.database", "The run store"),
    ("greenmeter.calibration", "Calibration against a wall meter"),
    ("greenmeter.sources.band", "Bands: how far off a figure may be"),
    ("greenmeter.demo.run", "The demo"),
    ("greenmeter.integrations", "Training-framework callbacks"),
    ("greenmeter.metering.distributed", "torch.distributed: one meter per rank, results gathered"),
    ("greenmeter.search", "Architecture search"),
    ("greenmeter.nn", "Efficient architectures: linear attention"),
)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return _ADDRESS.sub("", text)


def _doc(obj: object) -> str:
    """The docstring: its first paragraph as prose, the rest (Args, Returns...) kept verbatim in a block."""
    doc = (inspect.getdoc(obj) or "(no docstring)").strip()
    head, _, rest = doc.partition("\n\n")
    return head if not rest.strip() else f"{head}\n\n```text\n{rest.strip()}\n```"


def _entry(module: str, name: str, obj: object) -> list[str]:
    if inspect.isclass(obj):
        kind = "exception" if issubclass(obj, BaseException) else "class"
        lines = [f"### `{name}` ({kind})", ""]
        if not issubclass(obj, BaseException):
            lines += ["```python", f"{name}{_signature(obj)}", "```", ""]
        lines += [_doc(obj), ""]
        for attr, member in sorted(vars(obj).items()):
            if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, (classmethod, property))):
                continue
            target = member.__func__ if isinstance(member, classmethod) else member
            if isinstance(member, property):
                lines += [f"- `{name}.{attr}` (property): {_doc(member).splitlines()[0]}"]  # first line only
            elif inspect.getdoc(target):
                lines += [f"- `{name}.{attr}{_signature(target)}`: {_doc(target).splitlines()[0]}"]
        return lines + [""]
    if callable(obj):
        return [f"### `{name}`", "", "```python", f"{name}{_signature(obj)}", "```", "", _doc(obj), ""]
    return [f"### `{name}`", "", f"`{_ADDRESS.sub('', repr(obj))[:200]}`", ""]


def render() -> str:
    out = ["# API reference", "",
           "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand.", ""]
    for module_name, title in SECTIONS:
        module = importlib.import_module(module_name)
        out += [f"## {title} (`{module_name}`)", "", (inspect.getdoc(module) or "").split("\n\n")[0], ""]
        for name in sorted(getattr(module, "__all__", ()), key=str.lower):
            if name.startswith("__"):
                continue
            out += _entry(module_name, name, getattr(module, name))
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
