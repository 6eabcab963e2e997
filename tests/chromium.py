"""Debian's Chromium driven by selenium, offline: where it is, and how it is started. Used by
the browser tests and by scripts/screenshots.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CHROMIUM = os.environ.get("QKOV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("QKOV_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
)
# Headless, and no background traffic: this machine's closed network refuses it anyway.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--hide-scrollbars",
)


def skip_reason() -> str | None:
    """Why the browser tests cannot run here (None: they can): Debian's Chromium, its
    driver and selenium are all needed; nothing is ever downloaded."""
    if not Path(CHROMIUM).is_file():
        return f"Chromium not found at {CHROMIUM}: apt-get install chromium chromium-driver"
    if not Path(CHROMEDRIVER).is_file():
        return f"chromedriver not found at {CHROMEDRIVER}: apt-get install chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install selenium"
    return None


def start_chromium(profile_dir: Path, logging: bool = False):
    """A selenium Chrome driver on Debian's Chromium with a fresh profile (never a
    downloaded driver); with `logging`, the browser console and network logs are kept."""
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile_dir}"):
        opts.add_argument(flag)
    if logging:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


def network_events(driver) -> list[dict]:
    """The DevTools messages logged since the last call (needs `logging`)."""
    return [json.loads(e["message"])["message"] for e in driver.get_log("performance")]


def requested_urls(events: list[dict]) -> list[str]:
    """The URLs the network events ask for, leaving out the two kinds that never leave the
    machine: data: URLs (inside the page) and chrome:// ones (the browser's own UI, its
    icons and tooltips, logged now and then on some runs; a page cannot load them)."""
    urls = []
    for ev in events:
        if not ev.get("method", "").startswith("Network."):
            continue
        p = ev.get("params", {})
        url = (p.get("request") or {}).get("url") or p.get("url")
        if url and not url.startswith(("data:", "chrome://")):
            urls.append(url)
    return urls
