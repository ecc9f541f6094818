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
def chromium_page() -> Iterator[tuple[Any, list[str]]]:
    """(page, errors): a new page in Debian's Chromium, and the list its console errors and page errors go to."""
    sync_api = require_chromium()
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()
