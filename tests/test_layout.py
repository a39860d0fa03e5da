"""The package's shape: imports run one way, no module takes another's private names, public names stay put.

docs/architecture.md states these rules; this file holds the code to them.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import greenmeter

ROOT = Path(__file__).resolve().parents[1]
# where each importable package lives in the source tree (compression/ is installed as greenmeter.compression)
PACKAGE_DIRS = {"greenmeter": ROOT / "greenmeter", "greenmeter.compression": ROOT / "compression"}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for prefix, root in PACKAGE_DIRS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([prefix, *parts])] = path
    return out


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level_imports(path: Path, modules: dict[str, Path], name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken, line) for each module-level import of a greenmeter module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in tree.body:
        if _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module not in modules:
                continue
            plain = []
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:  # `from package import module`
                    out.append((sub, [], node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                out.append((node.module, plain, node.lineno))
    return out


def test_module_level_imports_form_no_circle() -> None:
    modules = _modules()
    graph = {m: {dep for dep, _, _ in _module_level_imports(p, modules, m) if dep != m} for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == [], f"module-level import circles: {circles}"


def test_no_module_takes_another_modules_private_names() -> None:
    modules = _modules()
    offences = []
    for name, path in modules.items():
        for dep, names, line in _module_level_imports(path, modules, name):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and dep != name:
                offences.append(f"{path.relative_to(ROOT)}:{line} takes {', '.join(private)} from {dep}")
    assert offences == []


def test_every_module_imports_and_the_public_verbs_stay_functions() -> None:
    for info in pkgutil.walk_packages(greenmeter.__path__, "greenmeter."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    # greenmeter.measure and greenmeter.compare are functions, and importing the stage packages
    # (greenmeter.metering, greenmeter.comparison) must not replace them on the greenmeter module
    assert callable(greenmeter.measure) and greenmeter.measure.__module__ == "greenmeter.metering.api"
    assert callable(greenmeter.compare) and greenmeter.compare.__module__ == "greenmeter.comparison.compare"
    for name in greenmeter.__all__:
        assert getattr(greenmeter, name) is not None, name


def test_a_stage_module_can_be_imported_under_another_name_in_a_fresh_process() -> None:
    code = ("import greenmeter.metering.distributed as d, greenmeter.comparison.compare as c, greenmeter\n"
            "assert callable(greenmeter.measure) and callable(greenmeter.compare)\n"
            "print(d.__name__, c.__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["greenmeter.metering.distributed", "greenmeter.comparison.compare"]
