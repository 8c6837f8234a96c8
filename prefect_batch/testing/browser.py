"""A headless Chromium under Selenium, for the web page's tests and screenshots.

Debian's ``chromium`` driven by Debian's ``chromedriver`` (``.ci/run`` installs both): the paths
are given, so Selenium Manager never downloads a driver or a browser. The flags keep the browser
off the network (no background requests, updates, sync or QUIC); it only talks to the pages it
is sent to, which here are always on 127.0.0.1. Selenium is a test dependency, imported only
when a driver is made.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

__all__ = ["CHROMEDRIVER", "CHROMIUM", "CHROMIUM_FLAGS", "chromium_available", "chromium_driver"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def chromium_available() -> bool:
    """Whether Debian's chromium and chromedriver are installed."""
    return shutil.which(CHROMIUM) is not None and shutil.which(CHROMEDRIVER) is not None


def chromium_driver(profile: Path, *, width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium (a ``selenium`` ``webdriver.Chrome``) with its profile in
    ``profile`` and a window of ``width`` x ``height``; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver
