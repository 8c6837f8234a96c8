"""Fixtures for the web page's tests: one headless Chromium for the module.

The browser is ``prefect_batch.testing.browser.chromium_driver`` (Debian's chromium and
chromedriver, installed by ``.ci/run``; nothing downloads at run time), its profile in a
temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from prefect_batch.testing.browser import chromium_available, chromium_driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium shared by the tests of a module."""
    if not chromium_available():
        # .ci/run installs both; under CI a missing browser fails the tests instead of skipping
        # them. A developer machine without them skips.
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing under CI (.ci/run installs them)")
        pytest.skip("chromium and chromium-driver are not installed (see .ci/run)")
    driver = chromium_driver(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()
