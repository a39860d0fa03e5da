"""The docs stay true to the code: the site builds strictly, the API reference shows the docstrings, every
command is documented.

The site is built with MkDocs (``mkdocs.yml``; the packages are in the ``docs`` and ``test`` extras). Without
them the build tests are skipped, except on CI (``CI=true``), which installs the test extra, where their
absence fails them.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from greenmeter.cli.main import _parser

ROOT = Path(__file__).resolve().parents[1]
DOCS_PACKAGES = (("mkdocs", "mkdocs"), ("material", "mkdocs-material"),
                 ("mkdocstrings_handlers.python", "mkdocstrings-python"))


def _require_mkdocs() -> None:
    """Skip without MkDocs and its plug-ins, except on CI (which installs them), where their absence fails."""
    missing = []
    for module, package in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent of a dotted name is missing
            found = False
        if not found:
            missing.append(package)
    if not missing:
        return
    reason = f"the docs build needs {', '.join(missing)}: python -m pip install -e '.[docs]'"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: CI installs the test extra, so the docs must build there)", pytrace=False)
    pytest.skip(reason)


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of ``config`` into ``site``, from the config's folder, as CI runs it."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",  # mkdocs-material's notice about MkDocs 2, printed on every build
           "PYTHONDONTWRITEBYTECODE": "1"}  # loading docs/griffe_greenmeter.py must not leave __pycache__ in docs/
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, cwd=config.parent, env=env)


def _text(page: str) -> str:
    """A built page's text, without tags or whitespace (so that markup inside a sentence does not matter)."""
    return "".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _entry_text(page: str, identifier: str) -> str:
    """The text of the API reference's entry for ``identifier``, from its heading to the next heading."""
    start = page.index(f'id="{identifier}"')
    end = re.compile(r"<h[1-6] ").search(page, page.index(">", start))
    return _text(page[start:end.start() if end else len(page)])


def _summary(obj: object) -> str:
    """The first line of ``obj``'s docstring as ``_text`` reads it (``code`` marks become plain text)."""
    return "".join((inspect.getdoc(obj) or "").splitlines()[0].replace("``", "").split())


@pytest.fixture(scope="module")
def api_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The built API reference page (the site is built once for this module's tests)."""
    _require_mkdocs()
    site = tmp_path_factory.mktemp("site")
    done = _build(ROOT / "mkdocs.yml", site)
    assert done.returncode == 0, done.stdout + done.stderr
    return (site / "api" / "index.html").read_text(encoding="utf-8")


def test_the_site_builds_strictly_and_the_api_reference_shows_the_docstrings(api_page: str) -> None:
    import greenmeter
    from greenmeter.compression import PruneConfig

    for identifier, obj in [("greenmeter.compare", greenmeter.compare), ("greenmeter.Meter", greenmeter.Meter),
                            ("greenmeter.optimize", greenmeter.optimize),
                            ("greenmeter.compression.PruneConfig", PruneConfig)]:
        entry = _entry_text(api_page, identifier)
        assert _summary(obj) in entry, (identifier, entry[:300])
    # the arguments are rendered from the Google-style Args section, with their text
    assert "max_drop" in _entry_text(api_page, "greenmeter.optimize")
    assert _summary(greenmeter.compare).startswith("Evaluateabaselineanditsvariantssidebyside")


# the modules docs/api.md renders (a `::: name` line whose next line is not indented options of one object)
API_MODULES = re.findall(r"^::: ([\w.]+)\n(?! )", (ROOT / "docs" / "api.md").read_text(encoding="utf-8"), flags=re.M)


def test_the_api_reference_renders_modules() -> None:
    assert {"greenmeter", "greenmeter.compression", "greenmeter.stats"} <= set(API_MODULES)


@pytest.mark.parametrize("module_name", API_MODULES)
def test_the_api_reference_lists_each_modules_all_and_nothing_private(api_page: str, module_name: str) -> None:
    """``greenmeter.compression`` lives in compression/ and builds its ``__all__`` with ``sorted(...)``, as do
    ``greenmeter.search`` and ``greenmeter.nn``: docs/griffe_greenmeter.py reads them as Python does."""
    module = importlib.import_module(module_name)
    ids = set(re.findall(r'id="([\w.]+)"', api_page))
    listed = {i[len(module_name) + 1:] for i in ids
              if i.startswith(module_name + ".") and "." not in i[len(module_name) + 1:]}
    # a function that shares its name with its submodule (greenmeter.calibration.calibrate) is listed by its path
    listed |= {name for name in module.__all__ if f"{module_name}.{name}.{name}" in ids}
    assert listed == set(module.__all__)


def test_the_api_reference_leaves_out_private_and_dunder_members(api_page: str) -> None:
    ids = set(re.findall(r'id="([\w.]+)"', api_page))
    assert "greenmeter.load_ipython_extension" not in ids  # public-looking, but not in greenmeter.__all__
    assert "greenmeter.Meter.iterate" in ids
    assert not [i for i in ids if re.search(r"\._[\w]*$", i) and i != "greenmeter.__version__"]
    assert ":func:`" not in api_page and ":class:`" not in api_page  # Sphinx roles are shown as code


@pytest.fixture(scope="module")
def docs_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mkdocs.yml and docs/ copied, with an API page of prose only (the link checks need no API), checked to
    build as they are, so that a failure after a change is the change's doing."""
    _require_mkdocs()
    base = tmp_path_factory.mktemp("docs-copy")
    shutil.copy(ROOT / "mkdocs.yml", base / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", base / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    (base / "docs" / "api.md").write_text("# API reference\n\nNot built in this copy.\n", encoding="utf-8")
    done = _build(base / "mkdocs.yml", tmp_path_factory.mktemp("site-intact"))
    assert done.returncode == 0, done.stdout + done.stderr
    return base


def _changed_copy(docs_copy: Path, tmp_path: Path) -> Path:
    shutil.copy(docs_copy / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(docs_copy / "docs", tmp_path / "docs")
    return tmp_path / "mkdocs.yml"


@pytest.mark.parametrize(("added", "complaint"), [
    ("[a page](no-such-page.md)", "no-such-page.md"),
    ("[a heading](guide.md#no-such-heading)", "no-such-heading"),
    ("[out of the docs](../examples/README.md)", "../examples/README.md"),
    ("::: greenmeter.no_such_name", "greenmeter.no_such_name"),
], ids=["missing page", "missing heading", "outside docs", "missing docstring reference"])
def test_the_strict_build_fails_on_a_broken_link_or_reference(docs_copy: Path, tmp_path: Path, added: str,
                                                                complaint: str) -> None:
    config = _changed_copy(docs_copy, tmp_path)
    faq = tmp_path / "docs" / "faq.md"
    faq.write_text(faq.read_text(encoding="utf-8") + f"\n{added}\n", encoding="utf-8")
    done = _build(config, tmp_path / "site")
    assert done.returncode != 0
    assert complaint in done.stdout + done.stderr


def test_a_page_left_out_of_the_nav_fails_the_strict_build(docs_copy: Path, tmp_path: Path) -> None:
    config = _changed_copy(docs_copy, tmp_path)
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8")
    done = _build(config, tmp_path / "site")
    assert done.returncode != 0
    assert "orphan.md" in done.stdout + done.stderr


def test_every_command_is_in_the_cli_reference() -> None:
    commands = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    documented = set(re.findall(r"^## `greenmeter ([\w-]+)", (ROOT / "docs" / "cli.md").read_text(), flags=re.M))
    assert set(commands) == documented


def test_doc_links_point_at_files_that_exist() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
