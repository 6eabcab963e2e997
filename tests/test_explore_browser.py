"""`qkov explore` in a real browser: Debian's Chromium through selenium against a real
server on 127.0.0.1. Types a text; the tokens and a pattern render; hovering a token
changes the view; switching models works; no console error; no request leaves
127.0.0.1; `<script>alert(1)</script>` typed in the box shows as text. Screenshots go to
$QKOV_SCREENSHOT_DIR (or the test's tmp dir); the README's docs/explore.png is its
explore-hover.png, docs/explore-escaped.png its explore-escaped.png."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chromium import network_events, requested_urls, skip_reason, start_chromium

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from explore_server import running_server  # noqa: E402
from qkov.explore import Explorer  # noqa: E402

PROBE = "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };"
HOSTILE = "<script>alert(1)</script>"
TEXT = (
    "from collections import OrderedDict\n\ndef build(items):\n    table = OrderedDict()\n"
    "    for key, value in items:\n        table[key] = value\n    return table\n"
)


def _repeat_position(ids: list[int]) -> int:
    """The last position i whose token occurred before at j with ids[j + 1] == ids[i + 1]:
    where an induction head attends to the token after the earlier occurrence."""
    for i in range(len(ids) - 2, 0, -1):
        if any(ids[j] == ids[i] and ids[j + 1] == ids[i + 1] for j in range(i - 1)):
            return i
    raise AssertionError("the text has no repeated bigram")


pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


def _wait(driver, script: str, what: str, *args, timeout: float = 60):
    """Poll a JS condition until it is truthy (the page fetches asynchronously)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(script, *args), message=what
    )


def _canvas_signature(driver) -> str:
    return driver.execute_script(
        "const c = document.getElementById('pattern'); return c.toDataURL().slice(-200);"
    )


def _screenshot(driver, path: Path) -> None:
    """The whole page as a PNG (CDP), not only the viewport."""
    import base64

    m = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = m.get("cssContentSize") or m["contentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000)}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def test_explore_in_chromium(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    shots = Path(os.environ.get("QKOV_SCREENSHOT_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    explorer = Explorer.from_dirs([])
    n_heads = {  # head buttons each model shows: every head of every layer
        name: m.model.cfg.n_layers * m.model.cfg.n_heads for name, m in explorer.models.items()
    }
    driver = start_chromium(tmp_path / "profile", logging=True)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
        driver.set_window_size(1500, 1100)
        with running_server(explorer) as base:
            driver.get_log("performance")  # drop the blank start page's events
            driver.get(base + "/")
            _wait(
                driver,
                "return document.querySelectorAll('#heads button.head').length == arguments[0]",
                "the attn2 head buttons",
                n_heads["attn2"],
            )

            # Type a text: the tokens and a pattern render.
            box = driver.find_element(By.ID, "text")
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.DELETE)
            box.send_keys(TEXT)
            ids = explorer.models["attn2"].model.tokenizer.encode(TEXT).ids
            _wait(
                driver,
                "const t = Array.from(document.querySelectorAll('#tokens .tok'));"
                "return t.length == arguments[0] && t.map(s => s.textContent).join('')"
                " == arguments[1] && !document.getElementById('status').textContent",
                "the typed text's tokens",
                len(ids),
                TEXT.replace("\n", "\u21b5"),
            )
            toks = driver.find_elements(By.CSS_SELECTOR, "#tokens .tok")
            assert "".join(t.get_attribute("textContent") for t in toks) == TEXT.replace(
                "\n", "\u21b5"
            )
            canvas = driver.find_element(By.ID, "pattern")
            assert canvas.is_displayed() and canvas.size["width"] > 100
            painted = driver.execute_script(
                "const c = document.getElementById('pattern'), x = c.getContext('2d');"
                "const d = x.getImageData(0, 0, c.width, c.height).data; let n = 0;"
                "for (let k = 0; k < d.length; k += 4) if (d[k + 2] > 150 && d[k] < 120) n++;"
                "return n;"
            )
            assert painted > 100  # blue cells of the attention pattern
            assert "L" in driver.find_element(By.ID, "pattern-title").text
            _wait(
                driver,
                "return document.querySelectorAll('#head-panel .trigrams tr').length > 0",
                "the head panel",
            )
            # the two eigenvalue plots fit inside the head panel (at 1280 px they spilled out)
            driver.set_window_size(1280, 1100)
            panel, figs = driver.execute_script(
                "const p = document.getElementById('head-panel').getBoundingClientRect();"
                "const f = Array.from(document.querySelectorAll('#head-panel figure canvas'));"
                "return [p.right, f.map(c => c.getBoundingClientRect().right)];"
            )
            assert len(figs) == 2 and max(figs) <= panel, (panel, figs)
            driver.set_window_size(1500, 1100)
            _screenshot(driver, shots / "explore.png")

            # Hovering a token changes the view: its sources light up, the prediction panel
            # explains the next token, the pattern's destination row moves.
            before_panel = driver.find_element(By.ID, "prediction").text
            before_canvas = _canvas_signature(driver)
            # a token of the repeat whose first occurrence the induction head L1H0 looks after
            target = toks[_repeat_position(ids)]
            ActionChains(driver).move_to_element(target).perform()
            _wait(driver, "return arguments[0].classList.contains('dest')", "hovered dest", target)
            lit = driver.execute_script(
                "return Array.from(document.querySelectorAll('#tokens .tok'))"
                ".filter(s => s.style.backgroundColor).length"
            )
            assert lit >= 1
            after_panel = driver.find_element(By.ID, "prediction").text
            assert after_panel != before_panel and "paths pushing" in after_panel
            assert "sum = logit" in after_panel
            assert _canvas_signature(driver) != before_canvas
            _screenshot(driver, shots / "explore-hover.png")
            # Choosing another head repaints the pattern and the sources lit up.
            heads = driver.find_elements(By.CSS_SELECTOR, "#heads button.head")
            heads[3].click()
            _wait(
                driver,
                "return document.getElementById('pattern-title').textContent.startsWith('L0H3')",
                "head L0H3 chosen",
            )
            assert _canvas_signature(driver) != before_canvas

            # Switching models works: mlp2 (its heads), then attn0 (no heads: the direct path).
            Select(driver.find_element(By.ID, "model")).select_by_value("mlp2")
            _wait(
                driver,
                "return document.getElementById('model-info').textContent.includes('MLPs')",
                "mlp2 chosen",
            )
            _wait(
                driver,
                "return document.querySelectorAll('#heads button.head').length == arguments[0]"
                " && document.body.dataset.run == 'mlp2'",
                "mlp2's heads and reading",
                n_heads["mlp2"],
            )
            ActionChains(driver).move_to_element(
                driver.find_elements(By.CSS_SELECTOR, "#tokens .tok")[5]
            ).perform()
            _wait(
                driver,
                "return document.getElementById('prediction').textContent.includes('[mlp')",
                "an MLP path in the attribution",
            )
            Select(driver.find_element(By.ID, "model")).select_by_value("attn0")
            _wait(
                driver,
                "return document.getElementById('heads').textContent.includes('no heads')",
                "attn0: no heads",
            )
            _wait(
                driver,
                "return document.body.dataset.run == 'attn0'"
                " && document.querySelectorAll('#tokens .tok').length > 0",
                "attn0's reading",
            )

            # A hostile text is shown as text and never runs.
            Select(driver.find_element(By.ID, "model")).select_by_value("attn1")
            _wait(
                driver,
                "return document.querySelectorAll('#heads button.head').length == arguments[0]"
                " && document.body.dataset.run == 'attn1'",
                "attn1's heads and reading",
                n_heads["attn1"],
            )
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.DELETE)
            box.send_keys(HOSTILE)
            _wait(
                driver,
                "return Array.from(document.querySelectorAll('#tokens .tok'))"
                ".map(s => s.textContent).join('') == arguments[0]",
                "hostile tokens",
                HOSTILE,
            )
            assert driver.find_element(By.ID, "tokens").text.replace("\n", "") == HOSTILE
            assert driver.execute_script("return window.__alerts") == []
            assert (
                driver.execute_script(
                    "return document.querySelectorAll('#tokens script, main script').length"
                )
                == 0
            )
            driver.save_screenshot(str(shots / "explore-escaped.png"))

            # No console error; every request went to this server on 127.0.0.1.
            errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
            assert errors == []
            urls = requested_urls(network_events(driver))
            assert urls and all(u.startswith(base + "/") for u in urls), urls
            assert any(u.endswith("/api/run") for u in urls)
    finally:
        driver.quit()
