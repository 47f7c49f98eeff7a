"""Headless Chromium (Debian's chromium and chromium-driver) driven by Selenium, for the
tests that open a report the way a reviewer does.  The packages are installed the first
time a test needs them (as root; otherwise the test fails saying what to install)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

PACKAGES = ("chromium", "chromium-driver")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# flags for a closed network and no display (background networking would try Google's hosts)
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def _missing() -> list[str]:
    return [p for p, exe in zip(PACKAGES, (CHROMIUM, CHROMEDRIVER)) if not os.access(exe, os.X_OK)]


@functools.cache
def ensure_chromium() -> None:
    missing = _missing()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"the browser tests need the Debian packages {' '.join(missing)}: "
                    f"apt-get install {' '.join(PACKAGES)} (as root)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
    res = subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], env=env, capture_output=True,
                         text=True, check=False)
    if res.returncode != 0 or _missing():
        pytest.fail(f"apt-get install {' '.join(PACKAGES)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator:
    """A Selenium driver of headless Chromium with a fresh profile."""
    ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="klpcc-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, uri: str, last: str = "footer", timeout: float = 120.0) -> None:
    """Open ``uri`` and wait until the document is parsed whole: ``readyState`` complete
    and its last element (``last``, a selector) there.  A page of megabytes was once
    seen half-parsed when ``get`` returned."""
    import time

    driver.get(uri)
    end = time.monotonic() + timeout
    script = f"return document.readyState === 'complete' && !!document.querySelector({last!r})"
    while not driver.execute_script(script):
        if time.monotonic() > end:
            raise AssertionError(f"{uri} did not finish loading in {timeout:.0f} s")
        time.sleep(0.1)
