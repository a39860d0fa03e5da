"""Open an HTML file in a real headless Chromium and report what a reader would see.

Tests of the HTML report use this harness to check, in a real browser, that the page loads without
script errors, renders something (not a blank page), shows the expected text and requests nothing
from the network. It drives Debian's ``chromium`` and ``chromium-driver`` through Selenium.

Offline by construction: the driver path is given to Selenium explicitly, so Selenium Manager is never
run (and ``SE_OFFLINE`` is set in case it ever were), and Chromium starts with its background
networking, component updates, sync and QUIC switched off, on a fresh temporary profile.

Each :func:`open_page` call starts and quits its own browser (about two seconds on a quiet machine):
simple, and no state leaks from one test to the next.

Typical use::

    from tests._browser import open_page, require_chromium

    def test_report_renders(tmp_path: Path) -> None:
        require_chromium()
        page = open_page(report_path, tmp_path / "report.png")
        assert page.console_errors == ()
        assert page.requests == ()
        assert page.non_background_share > 0.05
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Selenium Manager (the driver downloader) honours this; it is never started here anyway.
os.environ.setdefault("SE_OFFLINE", "true")

__all__ = [
    "APT_INSTALL",
    "BrowserStartError",
    "PageCheck",
    "chromium_paths",
    "open_page",
    "require_chromium",
]

APT_INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"
"""The command that installs the browser and its driver on Debian or Ubuntu."""

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",  # we may run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",  # a scrollbar is not content: keep it out of the pixel count
)

MAX_SCREENSHOT_HEIGHT_PX = 8000
"""A full-page screenshot grows the viewport to the document's height, but no further than this."""

CHANNEL_TOLERANCE = 24
"""A pixel differs from the background when any RGB channel differs by more than this (0..255)."""

LOAD_TIMEOUT_S = 60.0


class BrowserStartError(RuntimeError):
    """Chromium or chromedriver could not be started; the message carries the driver's own words."""


@dataclass(frozen=True)
class PageCheck:
    """What a headless Chromium saw when it opened a page.

    Attributes:
        title: ``document.title``.
        text: ``document.body.innerText`` (the visible text, as a reader would copy it).
        console_errors: Browser console messages at SEVERE level, in order: ``console.error`` calls,
            uncaught exceptions and failed resource loads.
        screenshot: The PNG written: the whole page, ``width`` px wide and as tall as the document
            (at least ``height``, at most ``MAX_SCREENSHOT_HEIGHT_PX``).
        non_background_share: Fraction (0..1) of screenshot pixels that differ clearly from the
            background colour, taken as the most common colour in the screenshot.
        requests: URLs of every resource the page requested other than the file itself, in order,
            whether the load succeeded or not: the names in ``performance.getEntriesByType('resource')``
            (http and https only, in Chromium) joined with the requests in the DevTools network log
            (which also sees ``file://`` URLs, say a stylesheet next to the page). ``data:`` and
            ``blob:`` URLs are not requests for anything outside the page and are not listed.
        js_result: What ``run_js`` returned (``None`` when no script was given).
    """

    title: str
    text: str
    console_errors: tuple[str, ...]
    screenshot: Path
    non_background_share: float
    requests: tuple[str, ...]
    js_result: Any = None


def chromium_paths() -> tuple[str, str] | None:
    """Find Chromium and chromedriver: Debian's paths first, then ``PATH``.

    Returns:
        ``(chromium, chromedriver)`` when both are found, else ``None``.
    """
    chromium = _executable("/usr/bin/chromium", "chromium")
    driver = _executable("/usr/bin/chromedriver", "chromedriver")
    if chromium is None or driver is None:
        return None
    return chromium, driver


def require_chromium() -> tuple[str, str]:
    """Return ``(chromium, chromedriver)`` or stop the calling test.

    Without a browser (or without Selenium or Pillow) the test is skipped, with the install command in
    the reason. On CI (``CI=true``) it fails instead: CI must really run the browser tests.

    Returns:
        ``(chromium, chromedriver)`` paths.
    """
    missing = [f"python -m pip install {package}" for module, package in (("selenium", "selenium"), ("PIL", "Pillow"))
               if importlib.util.find_spec(module) is None]
    paths = chromium_paths()
    if paths is None:
        missing.append(f"sudo {APT_INSTALL}")
    if not missing:
        assert paths is not None
        return paths
    reason = "browser tests need Chromium, chromedriver, Selenium and Pillow; install with: " + "; ".join(missing)
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: browser tests must run on CI)", pytrace=False)
    pytest.skip(reason)


def open_page(html: Path, screenshot: Path, *, width: int = 1280, height: int = 2000,
              run_js: str | None = None) -> PageCheck:
    """Open ``html`` in a fresh headless Chromium, screenshot the whole page and read it back.

    The page is opened through a ``file://`` URL. After it has loaded, ``run_js`` (if given) runs as
    the body of a function (``return`` gives :attr:`PageCheck.js_result`), then the viewport grows to
    the document's height and the screenshot is written. Console messages are read last, so errors
    caused by ``run_js`` are included.

    Args:
        html: The HTML file to open.
        screenshot: Where to write the PNG; parent folders are created.
        width: Viewport width, in CSS pixels (device scale factor 1, so also screenshot pixels).
        height: Minimum viewport height, in CSS pixels.
        run_js: JavaScript to run in the page after it has loaded, before the screenshot.

    Returns:
        A :class:`PageCheck`.

    Raises:
        BrowserStartError: Chromium or chromedriver is missing or failed to start.
        selenium.common.exceptions.WebDriverException: The page did not load, or ``run_js`` threw.
    """
    paths = chromium_paths()
    if paths is None:
        raise BrowserStartError(f"Chromium or chromedriver not found; install with: {APT_INSTALL}")
    url = html.resolve().as_uri()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="greenmeter-chromium-", ignore_cleanup_errors=True) as scratch:
        driver = _start(*paths, scratch=Path(scratch))
        try:
            _set_viewport(driver, width, height)
            driver.get(url)
            _wait_until_complete(driver)
            js_result = driver.execute_script(run_js) if run_js is not None else None
            doc_height = int(driver.execute_script(
                "return Math.max(document.documentElement.scrollHeight,"
                " document.body ? document.body.scrollHeight : 0)"))
            if doc_height > height:
                _set_viewport(driver, width, min(doc_height, MAX_SCREENSHOT_HEIGHT_PX))
            if not driver.save_screenshot(str(screenshot)):
                raise RuntimeError(f"Chromium wrote no screenshot to {screenshot}")
            title = driver.title
            text = driver.execute_script("return document.body ? document.body.innerText : ''")
            timed = driver.execute_script(
                "return performance.getEntriesByType('resource').map(function (e) { return e.name; })")
            sent = _requests_sent(driver.get_log("performance"), url)
            logs = driver.get_log("browser")
        finally:
            driver.quit()
    requests = tuple(dict.fromkeys(name for name in [*timed, *sent]
                                   if name.split("#")[0] != url and not name.startswith(("data:", "blob:"))))
    errors = tuple(entry["message"] for entry in logs if entry.get("level") == "SEVERE")
    return PageCheck(title=title, text=text, console_errors=errors, screenshot=screenshot,
                     non_background_share=non_background_share(screenshot), requests=requests,
                     js_result=js_result)


def non_background_share(png: Path, tolerance: int = CHANNEL_TOLERANCE) -> float:
    """Fraction of pixels in ``png`` that differ clearly from its most common colour.

    Args:
        png: An image file.
        tolerance: A pixel differs when any RGB channel differs from the background's by more than this.

    Returns:
        A share in 0..1 (0 for an empty image).
    """
    from PIL import Image, ImageChops

    with Image.open(png) as opened:
        image = opened.convert("RGB")
    total = image.width * image.height
    if total == 0:
        return 0.0
    colours = image.getcolors(maxcolors=total)
    assert colours is not None  # maxcolors == number of pixels, so Pillow always counts them
    background = max(colours, key=lambda pair: pair[0])[1]
    diff = ImageChops.difference(image, Image.new("RGB", image.size, background))
    red, green, blue = diff.split()
    largest = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    differing = largest.point(lambda value: 255 if value > tolerance else 0).histogram()[255]
    return differing / total


def _executable(preferred: str, name: str) -> str | None:
    if os.path.isfile(preferred) and os.access(preferred, os.X_OK):
        return preferred
    return shutil.which(name)


def _start(chromium: str, chromedriver: str, *, scratch: Path) -> Any:
    """Start chromedriver and Chromium, with a new profile and the driver's log in ``scratch``."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={scratch / 'profile'}")
    # "performance" is the DevTools event log: it sees file:// requests, which resource timing omits.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    log = scratch / "chromedriver.log"
    try:
        driver = webdriver.Chrome(service=Service(chromedriver, log_output=str(log)), options=options)
    except WebDriverException as err:
        message = (err.msg or str(err)).strip()
        raise BrowserStartError(f"Chromium ({chromium}) did not start under chromedriver ({chromedriver}): "
                                f"{message}\nLast lines of the driver's log:\n{_log_tail(log)}") from err
    driver.set_page_load_timeout(LOAD_TIMEOUT_S)
    driver.set_script_timeout(LOAD_TIMEOUT_S)
    return driver


def _requests_sent(performance_log: list[dict[str, Any]], page_url: str) -> list[str]:
    """URLs from ``Network.requestWillBeSent`` events of the page at ``page_url`` (not the new-tab page)."""
    urls = []
    for entry in performance_log:
        event = json.loads(entry["message"]).get("message", {})
        params = event.get("params", {})
        if event.get("method") == "Network.requestWillBeSent" and params.get("documentURL") == page_url:
            urls.append(params["request"]["url"])
    return urls


def _log_tail(log: Path, lines: int = 8) -> str:
    """The last lines of chromedriver's log, where Chromium's own complaint on stderr ends up."""
    try:
        text = log.read_text(errors="replace")
    except OSError as err:
        return f"(no log: {err})"
    kept = [line[:300] for line in text.splitlines()
            if line.strip() and not line[:1].isspace() and line[:1] not in "{}"]  # skip JSON dumps
    return "\n".join(kept[-lines:]) or "(empty)"


def _set_viewport(driver: Any, width: int, height: int) -> None:
    """Set the viewport itself (a window size would include the headless window's frame)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def _wait_until_complete(driver: Any) -> None:
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while driver.execute_script("return document.readyState") != "complete":
        if time.monotonic() > deadline:
            raise TimeoutError(f"page not loaded after {LOAD_TIMEOUT_S:.0f} s: {driver.current_url}")
        time.sleep(0.05)
