"""Screenshots of a report for the README, taken in Debian's Chromium (offline, headless).

Usage: qkov demo --out /tmp/demo && python scripts/screenshots.py /tmp/demo/report.html docs
Writes docs/report.png (the top: model cards and losses), docs/report-heads.png (the 2-layer
model's head table and cards) and docs/report-induction.png (its induction circuit, term
importance and training curves). Needs `selenium` (the test extra) and chromium +
chromium-driver; never downloads a driver.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

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
    "--hide-scrollbars",
    "--window-size=1400,1000",
)
# Where each picture starts (CSS selectors of the report's sections), in the README's order.
SHOTS = {
    "report.png": None,
    "report-heads.png": "#m0-heads",
    "report-induction.png": "#m0-induction",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a report.html written by qkov demo / analyze")
    ap.add_argument("out", type=Path, help="folder for the PNG files (docs/)")
    args = ap.parse_args()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in FLAGS:
        opts.add_argument(flag)
    driver = webdriver.Chrome(
        options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    )
    try:
        driver.get(args.report.resolve().as_uri())
        args.out.mkdir(parents=True, exist_ok=True)
        for name, selector in SHOTS.items():
            if selector is None:
                driver.execute_script("window.scrollTo(0, 0)")
            else:
                section = driver.find_element(By.CSS_SELECTOR, selector)
                driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", section)
            driver.save_screenshot(str(args.out / name))
            print(f"wrote {args.out / name}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
