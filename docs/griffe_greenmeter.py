"""A Griffe extension for the API reference (docs/api.md): greenmeter's layout as Python sees it.

mkdocstrings reads the package with Griffe, from the source files, without importing it. Two things in
greenmeter's layout need help there:

- ``greenmeter.compression`` lives in ``compression/`` (pyproject's ``package-dir`` maps it; a top-level
  ``compression`` would be shadowed by Python 3.14's stdlib package), so a search of ``greenmeter/``
  does not find it. This extension reads ``compression/`` as that subpackage.
- A few modules build ``__all__`` with a call (``__all__ = sorted(...)``), which Griffe does not evaluate,
  and without ``__all__`` every re-exported name would count as private. For those modules the extension
  imports the module and takes its ``__all__`` as Python computes it.

The docstrings' Sphinx roles (``:func:`~greenmeter.compare```) are shown as inline code (``compare``),
which is how Markdown reads the rest of their reStructuredText-style markup, and the ``::`` that opens a
literal block as one colon.

It also keeps classes' underscored members (``__post_init__``, ``__enter__``) out of the reference: the
``public`` filter that makes a module's ``__all__`` its list of members counts dunders as public.

mkdocs.yml loads it (``extensions: [docs/griffe_greenmeter.py]``); it is no part of the package.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

import griffe

PACKAGE = "greenmeter"
# Subpackages kept outside greenmeter/ in the checkout (pyproject.toml, [tool.setuptools] package-dir).
MAPPED = ("compression",)
# the "::" that ends a paragraph before a literal block in reStructuredText; Markdown shows one colon
_LITERAL_MARK = re.compile(r"(\S)::$", flags=re.M)
# :func:`name`, :class:`~a.b.Name` (the tilde shows the last part only)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _role_as_code(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"``{target.rsplit('.', 1)[-1] if match.group(1) else target}``"


class GreenmeterLayout(griffe.Extension):
    """Adds the mapped subpackages and the computed ``__all__`` lists to the loaded ``greenmeter``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Show the Sphinx roles in ``obj``'s docstring as inline code (and ``::`` as ``:``) before it is parsed.

        Args:
            obj: An object Griffe has just created.
            **kwargs: Whatever else Griffe passes.
        """
        if obj.docstring is not None:
            text = _ROLE.sub(_role_as_code, obj.docstring.value)
            obj.docstring.value = _LITERAL_MARK.sub(r"\1:", text)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Complete ``pkg`` once Griffe has loaded it.

        Args:
            pkg: The loaded top-level package.
            loader: The loader that loaded it (its settings and collections are reused).
            **kwargs: Whatever else Griffe passes.
        """
        if pkg.name != PACKAGE:
            return
        for name in MAPPED:
            if name not in pkg.members:  # where Python finds it: compression/ in a checkout installed editable
                spec = importlib.util.find_spec(f"{PACKAGE}.{name}")
                if spec is None or not spec.submodule_search_locations:
                    raise ModuleNotFoundError(f"{PACKAGE}.{name} is not importable: pip install -e . first")
                folder = Path(spec.submodule_search_locations[0])
                pkg.set_member(name, _visit_package(name, folder, pkg, loader))
        for module in _modules(pkg):
            if _computes_all(module):
                module.exports = list(importlib.import_module(module.path).__all__)
            for cls in module.classes.values():
                if not cls.is_alias:
                    _hide_underscored(cls)
        loader.expand_exports(pkg)
        loader.expand_wildcards(pkg, external=False)


def _visit_package(name: str, folder: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
    package = _visit(name, folder / "__init__.py", parent, loader)
    for path in sorted(folder.glob("*.py")):
        if path.name != "__init__.py":
            package.set_member(path.stem, _visit(path.stem, path, package, loader))
    return package


def _visit(name: str, path: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
    code = path.read_text(encoding="utf-8")
    loader.lines_collection[path] = code.splitlines()
    return griffe.visit(name, filepath=path, code=code, extensions=loader.extensions, parent=parent,
                        docstring_parser=loader.docstring_parser, docstring_options=loader.docstring_options,
                        lines_collection=loader.lines_collection, modules_collection=loader.modules_collection)


def _modules(module: griffe.Module) -> list[griffe.Module]:
    found = [module]
    for member in module.modules.values():
        if not member.is_alias:
            found += _modules(member)
    return found


def _hide_underscored(cls: griffe.Class) -> None:
    """Drop a class's ``_private`` and ``__dunder__`` members but ``__init__`` (merged into the class).

    ``filters: public`` counts dunders as public, and a member's ``public`` flag does not carry through the
    aliases that re-exports make, so the reference's copy of the class simply leaves them out.
    """
    for name in [n for n in cls.members if n.startswith("_") and n != "__init__"]:
        cls.del_member(name)
    for member in cls.members.values():
        if member.is_class and not member.is_alias:
            _hide_underscored(member)


def _computes_all(module: griffe.Module) -> bool:
    """Whether the module assigns ``__all__`` from a call, which Griffe leaves empty."""
    if module.exports or not isinstance(module.filepath, Path):
        return False
    tree = ast.parse(module.filepath.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
               and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets) for node in tree.body)
