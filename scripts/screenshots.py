"""Screenshots of a report for the README, taken in Debian's Chromium (offline, headless).

Usage: qkov demo --out /tmp/demo && python scripts/screenshots.py /tmp/demo/report.html docs
Writes docs/report.png (the top: model cards and losses), docs/report-heads.png (the 2-layer
model's head table and cards), docs/report-induction.png (its induction circuits),
docs/report-repetition.png (the repeated-random-tokens test and its loss split),
docs/report-training.png (its training curves and the induction circuit forming) and
docs/report-mlp2.png (the same for the model with MLPs). Needs `selenium` (the test extra)
and chromium + chromium-driver; never downloads a driver.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

# Where each picture starts (CSS selectors of the report's sections), in the README's order.
SHOTS = {
    "report.png": None,
    "report-heads.png": "#m0-heads",
    "report-induction.png": "#m0-induction",
    "report-repetition.png": "#m0-repetition",  # the peers' test and its loss split
    "report-training.png": "#m0-training",  # the circuit forming over training
    "report-mlp2.png": "#m3-induction",  # the 2-layer model with MLPs (the demo's fourth)
}
# A taller window (the browser tests' is 1400 x 1000) for a section that needs it whole.
HEIGHTS = {"report-repetition.png": 1640}  # its six charts, the lifts by training count last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a report.html written by qkov demo / analyze")
    ap.add_argument("out", type=Path, help="folder for the PNG files (docs/)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from selenium.webdriver.common.by import By

    from chromium import start_chromium  # the browser tests' own start-up: one set of flags

    profile = tempfile.mkdtemp(prefix="qkov-chromium-")
    driver = start_chromium(Path(profile))
    try:
        driver.get(args.report.resolve().as_uri())
        args.out.mkdir(parents=True, exist_ok=True)
        for name, selector in SHOTS.items():
            driver.set_window_size(1400, HEIGHTS.get(name, 1000))
            if selector is None:
                driver.execute_script("window.scrollTo(0, 0)")
            else:
                section = driver.find_element(By.CSS_SELECTOR, selector)
                driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", section)
            driver.save_screenshot(str(args.out / name))
            print(f"wrote {args.out / name}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
