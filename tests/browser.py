"""A real browser for UI tests: Debian's Chromium driven by Playwright (`make test` installs Chromium when missing;
no browser is ever downloaded). Screenshots go to the test's folder, or to `$LAYERT2V_SCREENSHOTS` when set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


@contextmanager
def browser_page() -> Iterator:
    """A Chromium page (1400 x 900) for one test."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


def screenshot(page, folder: Path, name: str) -> Path:
    target = Path(os.environ.get("LAYERT2V_SCREENSHOTS", folder))
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name}.png"
    page.screenshot(path=str(path))
    return path
