"""``_checks.output_file``: the path a command writes to is checked before the work, and nothing is created."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenmeter._checks import output_file
from greenmeter._errors import ConfigError


def test_a_path_in_an_existing_folder_is_returned_and_nothing_is_created(tmp_path: Path) -> None:
    assert output_file("--json", str(tmp_path / "c.json")) == tmp_path / "c.json"
    (tmp_path / "old.json").write_text("{}")
    assert output_file("--json", tmp_path / "old.json") == tmp_path / "old.json"  # replaced later, not here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]
    assert output_file("-o", "report.html") == Path("report.html")  # the working folder


@pytest.mark.parametrize(("value", "message"), [
    ("{t}/no/c.json", "--json '{t}/no/c.json': the folder '{t}/no' does not exist; create it or write elsewhere"),
    ("{t}/file.txt/c.json", "--json '{t}/file.txt/c.json': the folder '{t}/file.txt' is not a folder; create it or "
                            "write elsewhere"),
    ("{t}", "--json '{t}' is a folder: give the path of a file to write"),
    ("", "--json must be a file path, not ''"),
    (None, "--json must be a file path, not None"),
])
def test_a_path_that_cannot_be_written_is_refused_with_its_folder(tmp_path: Path, value: str | None,
                                                                  message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    given = value.replace("{t}", str(tmp_path)) if value is not None else None
    with pytest.raises(ConfigError) as info:
        output_file("--json", given)
    assert str(info.value) == message.replace("{t}", str(tmp_path))
    assert not (tmp_path / "no").exists()


def test_with_make_folders_missing_folders_are_fine_but_a_file_in_the_way_is_not(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "r.html"
    assert output_file("-o", deep, make_folders=True) == deep
    assert not (tmp_path / "a").exists()  # made by the writer, not by the check
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError) as info:
        output_file("-o", tmp_path / "file.txt" / "b" / "r.html", make_folders=True)
    assert str(info.value) == (f"-o '{tmp_path}/file.txt/b/r.html': the folder '{tmp_path}/file.txt/b' cannot be "
                               f"made: '{tmp_path}/file.txt' is not a folder")
