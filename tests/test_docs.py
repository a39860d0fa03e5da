"""The docs stay true to the code: the API reference is regenerated, every command is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from greenmeter.cli.main import _parser

ROOT = Path(__file__).resolve().parents[1]


def test_the_api_reference_matches_the_docstrings() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_api.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_every_command_is_in_the_cli_reference() -> None:
    commands = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    documented = set(re.findall(r"^## `greenmeter ([\w-]+)", (ROOT / "docs" / "cli.md").read_text(), flags=re.M))
    assert set(commands) == documented


def test_doc_links_point_at_files_that_exist() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
