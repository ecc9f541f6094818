"""A page in Debian's Chromium for the web tests, and the console errors it reports (the strict CSP reports an
inline style or script as an error). Tests skip, with the reason, where Chromium or Playwright is missing."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"


def require_chromium() -> Any:
    """Playwright's sync API; skips the calling test when Debian's Chromium or Playwright is not installed."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install -y chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


@contextlib.contextmanager
def chromium_page(browser: Any = None) -> Iterator[tuple[Any, list[str]]]:
    """(page, errors): a new page in Debian's Chromium, and the list its console errors and page errors go to.

    With `browser` (the `chromium` fixture's), the page opens in a new context of that browser: its own cookies
    and storage, as in a fresh browser, without launching one (about a second each)."""
    if browser is not None:
        context = browser.new_context()
        try:
            yield _watched(context.new_page())
        finally:
            context.close()
        return
    sync_api = require_chromium()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield _watched(browser.new_page())
        finally:
            browser.close()


def _watched(page: Any) -> tuple[Any, list[str]]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium for a test module's browser tests (each page gets a context of its own: see chromium_page);
    skips the test, with the reason, where Chromium or Playwright is missing. A module uses it by importing it."""
    sync_api = require_chromium()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
