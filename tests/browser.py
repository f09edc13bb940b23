"""Headless Chromium from Debian's packages, driven by Selenium, for the dashboard's tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")
INSTALL = "apt-get install chromium chromium-driver"


def missing() -> str | None:
    """Why a browser cannot be started here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} not found: {INSTALL}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed: pip install -e '.[test]'"
    return None


def start(profile: Path, width: int = 1400, height: int = 1000):
    """A headless Chromium with a fresh profile in ``profile``, keeping its console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium for one test (skipped, saying why, where there is none)."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    driver = start(tmp_path / "chromium-profile")
    yield driver
    driver.quit()
