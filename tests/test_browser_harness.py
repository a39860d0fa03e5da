"""The browser harness (tests/_browser.py) on hand-written pages, in a real headless Chromium.

Measured with Chromium 156 on Debian 12 at the default 1280 x 2000 viewport: the shapes page below
has a non-background share of 0.146 (its geometry gives 0.145, the heading the rest), a page with one
line of text 0.0003, a blank page 0.0; each ``open_page`` takes about 1.5 to 2.5 s.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests._browser import BrowserStartError, PageCheck, _start, non_background_share, open_page, require_chromium

VIEWPORT_PX = 1280 * 2000
# A 500 x 600 px rectangle and a circle of radius 150 px, side by side in an 800 x 600 px drawing.
SHAPES_PX = 500 * 600 + 3.14159 * 150**2
SHAPES_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shapes page</title></head>
<body style="margin:0; background:#fff">
<h1>Energy by variant</h1>
<svg width="800" height="600" viewBox="0 0 800 600" xmlns="http://www.w3.org/2000/svg">
  <rect x="0" y="0" width="500" height="600" fill="#1b7f3b"/>
  <circle cx="650" cy="300" r="150" fill="#d9480f"/>
</svg>
</body></html>
"""


def _open(tmp_path: Path, name: str, html: str, *, width: int = 1280, height: int = 2000,
          run_js: str | None = None) -> PageCheck:
    require_chromium()
    page = tmp_path / f"{name}.html"
    page.write_text(html, encoding="utf-8")
    return open_page(page, tmp_path / f"{name}.png", width=width, height=height, run_js=run_js)


def test_a_drawing_counts_as_content_and_text_reads_back(tmp_path: Path) -> None:
    check = _open(tmp_path, "shapes", SHAPES_HTML)
    assert check.title == "Shapes page"
    assert check.text.strip() == "Energy by variant"
    assert check.console_errors == ()
    assert check.requests == ()
    assert check.screenshot == tmp_path / "shapes.png"
    assert check.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The shapes alone cover 0.145 of the viewport; the heading adds a little, anti-aliasing a hair.
    assert SHAPES_PX / VIEWPORT_PX == pytest.approx(0.145, abs=0.001)
    assert SHAPES_PX / VIEWPORT_PX - 0.002 < check.non_background_share < SHAPES_PX / VIEWPORT_PX + 0.01


def test_a_blank_page_is_all_background(tmp_path: Path) -> None:
    check = _open(tmp_path, "blank", "<!doctype html><title>Blank</title><body style='background:#fff'></body>")
    assert check.title == "Blank"
    assert check.text == ""
    assert check.non_background_share < 0.01
    assert check.console_errors == ()
    assert check.requests == ()


def test_a_line_of_text_is_far_below_a_chart(tmp_path: Path) -> None:
    check = _open(tmp_path, "text", "<!doctype html><title>T</title><p>Only a line of text here.</p>")
    assert check.text.strip() == "Only a line of text here."
    assert 0 < check.non_background_share < 0.005


def test_console_error_is_reported(tmp_path: Path) -> None:
    check = _open(tmp_path, "console", '<!doctype html><title>C</title><script>console.error("boom")</script>')
    assert len(check.console_errors) == 1
    assert '"boom"' in check.console_errors[0]


def test_an_uncaught_exception_is_reported(tmp_path: Path) -> None:
    html = '<!doctype html><title>E</title><p>before</p><script>throw new Error("kaboom")</script>'
    check = _open(tmp_path, "throws", html)
    assert check.text.strip() == "before"
    assert len(check.console_errors) == 1
    assert "Uncaught Error: kaboom" in check.console_errors[0]


def test_a_clean_page_with_a_working_script_has_no_errors(tmp_path: Path) -> None:
    html = ('<!doctype html><title>Clean</title><p id="out"></p>'
            '<script>console.log("just info"); document.getElementById("out").textContent = "ran";</script>')
    check = _open(tmp_path, "clean", html)
    assert check.text.strip() == "ran"
    assert check.console_errors == ()


def test_an_offline_image_is_listed_as_a_request_and_fails_loudly(tmp_path: Path) -> None:
    # Offline, the name does not resolve: the request is still made (and listed), and it fails.
    html = '<!doctype html><title>I</title><p>x</p><img src="http://example.invalid/x.png" alt="">'
    check = _open(tmp_path, "image", html)
    assert check.requests == ("http://example.invalid/x.png",)
    assert check.console_errors == (
        "http://example.invalid/x.png - Failed to load resource: net::ERR_NAME_NOT_RESOLVED",)


def test_local_files_and_fetches_are_requests_but_data_urls_are_not(tmp_path: Path) -> None:
    (tmp_path / "style.css").write_text("p { color: #123456 }", encoding="utf-8")
    pixel = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
    html = (f'<!doctype html><title>R</title><link rel="stylesheet" href="style.css"><img src="{pixel}">'
            '<p>styled</p><script>fetch("https://example.invalid/api").catch(function () {});</script>')
    check = _open(tmp_path, "requests", html)
    assert set(check.requests) == {(tmp_path / "style.css").as_uri(), "https://example.invalid/api"}


def test_the_screenshot_covers_the_whole_page_up_to_the_cap(tmp_path: Path) -> None:
    from PIL import Image

    tall = _open(tmp_path, "tall", '<!doctype html><body style="margin:0"><div style="height:3000px"></div>')
    huge = _open(tmp_path, "huge", '<!doctype html><body style="margin:0"><div style="height:20000px"></div>')
    short = _open(tmp_path, "short", "<!doctype html><p>short</p>", width=800, height=600)
    with Image.open(tall.screenshot) as a, Image.open(huge.screenshot) as b, Image.open(short.screenshot) as c:
        assert (a.size, b.size, c.size) == ((1280, 3000), (1280, 8000), (800, 600))


def test_run_js_runs_after_load_and_its_errors_are_caught(tmp_path: Path) -> None:
    html = '<!doctype html><title>J</title><p id="p">old</p>'
    script = ('document.getElementById("p").textContent = "new";'
              'console.error("from run_js"); return document.title;')
    check = _open(tmp_path, "js", html, run_js=script)
    assert check.js_result == "J"
    assert check.text.strip() == "new"
    assert any('"from run_js"' in message for message in check.console_errors)


def test_non_background_share_on_a_known_image(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (100, 100), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 9, 99), fill=(0, 0, 0))           # 1,000 px clearly different
    draw.rectangle((10, 0, 19, 99), fill=(230, 240, 250))   # 1,000 px within tolerance (20 <= 24)
    image.save(tmp_path / "known.png")
    assert non_background_share(tmp_path / "known.png") == pytest.approx(0.10)
    assert non_background_share(tmp_path / "known.png", tolerance=10) == pytest.approx(0.20)


def test_a_browser_that_cannot_start_gives_its_own_reason(tmp_path: Path) -> None:
    _, chromedriver = require_chromium()
    fake = tmp_path / "fake-chromium"
    fake.write_text("#!/bin/sh\necho 'fake-chromium: no display and no luck' >&2\nexit 1\n", encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "scratch").mkdir()
    with pytest.raises(BrowserStartError) as caught:
        _start(str(fake), chromedriver, scratch=tmp_path / "scratch")
    message = str(caught.value)
    assert str(fake) in message and "session not created" in message
    assert "fake-chromium: no display and no luck" in message


def test_require_chromium_fails_on_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(os.path, "isfile", lambda path: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y --no-install-recommends chromium"):
        require_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium chromium-driver"):
        require_chromium()
