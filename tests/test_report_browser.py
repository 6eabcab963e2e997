"""report.html in a real browser: headless Chromium (Debian's package) driven by selenium.

Checks that the head cards and plots render, that hovering shows source/destination
tokens (and, as unit tests of assets/report.js, exactly which cells and weights it shows
for synthetic events on known patterns), that the console has no errors, that the page
makes no network request, and that the hostile token strings did not run. Screenshots go
to $QKOV_SCREENSHOT_DIR (or the test's tmp dir). Skipped, with the reason, when Chromium,
chromedriver or selenium is missing: `apt-get install chromium chromium-driver` and
`pip install selenium`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chromium import network_events, requested_urls, skip_reason, start_chromium
from qkov.report import render_report

# Runs before any page script (CDP, not subject to the page's CSP): records alert() calls.
PROBE = "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };"


pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"), logging=True)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def analysis():
    """The hand-written schema-v2 analysis (known tokens and uniform causal attention)."""
    from report_fixture import v2_analysis

    return v2_analysis()


def _shots_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("QKOV_SCREENSHOT_DIR") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _open(driver, path: Path) -> list[dict]:
    """Load the page; returns the CDP network events its load caused."""
    driver.get_log("performance")  # drop events from earlier pages
    driver.get(path.as_uri())
    driver.execute_script("return document.readyState")
    return network_events(driver)


def _requests(events: list[dict], page: str) -> list[str]:
    """URLs the page asked for beyond itself."""
    return [u for u in requested_urls(events) if u != page]


def _screenshot(driver, path: Path) -> None:
    """Full-page PNG through CDP (beyond the viewport)."""
    import base64

    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": min(size["height"], 12000),
                "scale": 1,
            },
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


@pytest.mark.parametrize("csp", [True, False], ids=["with-csp", "escaping-only"])
def test_report_in_chromium(browser, analysis, tmp_path, csp):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    page.write_text(render_report(analysis, csp=csp), encoding="utf-8")
    events = _open(browser, page)
    shots = _shots_dir(tmp_path)

    # Head cards and plots are there and have a size on screen.
    n_heads = sum(len(m.get("heads") or []) for m in analysis["models"])
    cards = browser.find_elements(By.CSS_SELECTOR, ".head-card")
    assert len(cards) == n_heads
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('svg')).map(s => {"
        "const r = s.getBoundingClientRect(); return [r.width, r.height]; });"
    )
    assert len(sizes) > 2 * n_heads and all(w > 0 and h > 0 for w, h in sizes)
    assert browser.execute_script("return document.querySelectorAll('circle.eig').length") > 0
    assert browser.find_elements(By.CSS_SELECTOR, "#m0-composition svg rect.cell")
    assert browser.find_elements(By.CSS_SELECTOR, "#m0-training polyline")

    # Hostile tokens are shown as text and did not run.
    assert browser.execute_script("return window.__pwned") is None
    assert browser.execute_script("return window.__alerts") == []
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "<script>window.__pwned=1</script>" in body
    assert '"><img src=x onerror="window.__pwned=2">' in body
    assert not browser.find_elements(By.CSS_SELECTOR, "main img")

    # Hover: a token of the example text, then a cell of an attention heatmap.
    strip = browser.find_element(By.CSS_SELECTOR, "#m0-attention .qkov-strip")
    tokens = strip.find_elements(By.CSS_SELECTOR, ".tok")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", tokens[-1])
    ActionChains(browser).move_to_element(tokens[-1]).perform()
    tip = browser.find_element(By.CSS_SELECTOR, ".qkov-tip")
    assert tip.is_displayed() and "destination #" in tip.text and "source #" in tip.text
    _screenshot(browser, shots / f"report-hover-token-{'csp' if csp else 'nocsp'}.png")
    _hover_a_cards_first_source(browser, tip)
    browser.save_screenshot(str(shots / f"report-hover-attention-{'csp' if csp else 'nocsp'}.png"))

    _screenshot(browser, shots / f"report-{'csp' if csp else 'nocsp'}.png")

    # No console errors (a CSP violation would be one) and no network requests.
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == []
    events += [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    assert _requests(events, page.as_uri()) == []
    # The load itself was seen, so the network log does work.
    assert any(ev.get("method") == "Network.requestWillBeSent" for ev in events)


def test_demo_report_in_chromium(browser, tmp_path):
    """The README's main job, `qkov demo`, on the shipped models, in the browser: every head
    card and plot renders, no console error, no request. Its screenshots are the README's
    (docs/report.png, docs/report-heads.png, copied from $QKOV_SCREENSHOT_DIR)."""
    from selenium.webdriver.common.by import By

    from qkov.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--eval-seqs", "4"]) == 0
    analysis = json.loads((out / "analysis.json").read_text())
    page = out / "report.html"
    events = _open(browser, page)
    shots = _shots_dir(tmp_path)

    n_heads = sum(len(m.get("heads") or []) for m in analysis["models"])
    configs = [m["config"] for m in analysis["models"]]
    assert n_heads == sum(c["n_layers"] * c["n_heads"] for c in configs)  # a card per head
    assert len(browser.find_elements(By.CSS_SELECTOR, ".head-card")) == n_heads
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('svg')).map(s => {"
        "const r = s.getBoundingClientRect(); return [r.width, r.height]; });"
    )
    assert len(sizes) > 2 * n_heads and all(w > 0 and h > 0 for w, h in sizes)
    for section in ("composition", "training", "heads", "induction", "terms"):
        assert browser.find_elements(By.CSS_SELECTOR, f"#m0-{section} svg"), section
    assert len(browser.find_elements(By.CSS_SELECTOR, "#m0-attention .qkov-strip .tok")) > 10
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "attn0" in body and "attn1" in body and "mlp2" in body
    # the shipped 2-layer model has an induction head: its label cell says so (not a CSS class)
    labels = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#m0-heads td.label")]
    assert "induction" in labels and "previous_token" in labels, labels

    browser.set_window_size(1400, 1000)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shots / "demo-report.png"))
    heads = browser.find_element(By.CSS_SELECTOR, "#m0-heads")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", heads)
    browser.save_screenshot(str(shots / "demo-report-heads.png"))
    _screenshot(browser, shots / "demo-report-full.png")

    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == []
    events += [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    assert _requests(events, page.as_uri()) == []


# ---------------------------------------------------------------------------- report.js
# Synthetic events on the fixture's attention, whose every head attends uniformly to the
# sources 0..i of destination i (weight 1 / (i + 1)), so each painted weight is known.
HOVER_STRIP = """
const [strip, i] = arguments;
const spans = strip.querySelectorAll('.tok');
spans[i].dispatchEvent(new MouseEvent('mouseenter', {clientX: 20, clientY: 20}));
const tip = document.querySelector('.qkov-tip');
return {tip: tip.textContent, on: tip.classList.contains('on'), nodes: tip.children.length,
        bg: Array.from(spans).map(s => s.style.backgroundColor),
        dest: Array.from(spans).map(s => s.classList.contains('dest'))};
"""

HOVER_CELL = """
const [g, i, j] = arguments;
const svg = g.ownerSVGElement, cell = +g.dataset.cell, margin = +g.dataset.margin;
const pt = svg.createSVGPoint();
pt.x = margin + (j + 0.5) * cell; pt.y = margin + (i + 0.5) * cell;
const p = pt.matrixTransform(svg.getScreenCTM());
svg.dispatchEvent(new MouseEvent('mousemove', {clientX: p.x, clientY: p.y, bubbles: true}));
const tip = document.querySelector('.qkov-tip');
return {tip: tip.textContent, on: tip.classList.contains('on')};
"""


def _alpha(css: str) -> float | None:
    """The alpha of 'rgba(8, 81, 156, a)' (None for no colour)."""
    if not css:
        return None
    return float(css.rsplit(",", 1)[1].rstrip(") "))


def test_report_js_hover_details(browser, analysis, tmp_path):
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    page.write_text(render_report(analysis), encoding="utf-8")
    _open(browser, page)
    from qkov.report.escape import visible_token

    # the page shows tokens as visible_token writes them (U+2028 as the text "\\u2028")
    tokens = [visible_token(t) for t in analysis["models"][0]["attention"]["tokens"]]
    strip = browser.find_element(By.CSS_SELECTOR, "#m0-attention .qkov-strip")

    # Strip: destination i paints sources 0..i with alpha 0.9 w + 0.05, w = 1 / (i + 1).
    i = 3
    got = browser.execute_script(HOVER_STRIP, strip, i)
    want = [round(0.9 / (i + 1) + 0.05, 3) if j <= i else None for j in range(len(tokens))]
    assert [None if a is None else round(a, 3) for a in map(_alpha, got["bg"])] == want
    assert got["dest"] == [j == i for j in range(len(tokens))]
    assert got["on"] and got["nodes"] == 0  # text only, never markup
    assert got["tip"] == (
        f"destination #{i} \u201c{tokens[i]}\u201d attends most to source #0 "
        f"\u201c{tokens[0]}\u201d ({1 / (i + 1):.3f})"
    )
    # Choosing another head clears the painting.
    browser.execute_script(
        "const s = arguments[0].querySelector('select'); s.value = '1.0';"
        "s.dispatchEvent(new Event('change'));",
        strip,
    )
    assert browser.execute_script(
        "return Array.from(arguments[0].querySelectorAll('.tok'))"
        ".every(s => !s.style.backgroundColor && !s.classList.contains('dest'))",
        strip,
    )

    # Heatmap: the cell under the pointer, named by destination and source; none above the
    # diagonal (a source after its destination) and none after the pointer leaves.
    g = browser.find_element(By.CSS_SELECTOR, "#m0-L1H0 g[data-attn]")
    got = browser.execute_script(HOVER_CELL, g, 5, 2)
    assert got["on"] and got["tip"] == (
        f"L1H0  destination #5 \u201c{tokens[5]}\u201d  \u2190  source #2 "
        f"\u201c{tokens[2]}\u201d:  {1 / 6:.3f}"
    )
    assert not browser.execute_script(HOVER_CELL, g, 2, 5)["on"]
    browser.execute_script(HOVER_CELL, g, 5, 2)
    browser.execute_script(
        "arguments[0].ownerSVGElement.dispatchEvent(new MouseEvent('mouseleave'))", g
    )
    assert not browser.execute_script(
        "return document.querySelector('.qkov-tip').classList.contains('on')"
    )
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == []


@pytest.mark.parametrize("csp", [True, False], ids=["with-csp", "escaping-only"])
def test_path_sections_in_chromium(browser, analysis, tmp_path, csp):
    """The QK terms, virtual heads, positional QK and attribution sections render; hovering
    an attribution token lists its top paths; changing the path recolours the text; hostile
    tokens of the attributed text are text; no request, no console error."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from report_fixture import HOSTILE

    page = tmp_path / "report.html"
    page.write_text(render_report(analysis, csp=csp), encoding="utf-8")
    events = _open(browser, page)
    for sec in ("qk-terms", "positional-qk"):
        svgs = browser.find_elements(By.CSS_SELECTOR, f"#m0-{sec} svg")
        assert svgs and all(s.rect["width"] > 0 and s.rect["height"] > 0 for s in svgs)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#m0-virtual-heads tbody tr")) == 2

    view = browser.find_element(By.CSS_SELECTOR, "#m0-attribution .qkov-attrib")
    spans = view.find_elements(By.CSS_SELECTOR, ".tok")
    assert spans[3].text == HOSTILE[0] and spans[4].text == HOSTILE[1]  # shown as text
    assert browser.execute_script("return window.__pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "main img")
    # Coloured by the selected path (L0H0: +0.25 at most positions, -0.75 at position 5).
    colour = spans[5].value_of_css_property("background-color")
    assert colour.startswith("rgba(214, 39, 40")  # red: L0H0 pushes " =" down there
    Select(view.find_element(By.TAG_NAME, "select")).select_by_visible_text("L1H0")
    assert spans[5].value_of_css_property("background-color").startswith("rgba(8, 81, 156")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", spans[5])
    ActionChains(browser).move_to_element(spans[5]).perform()
    tip = browser.find_element(By.CSS_SELECTOR, ".qkov-tip")
    assert tip.is_displayed()
    assert (
        "next \u201c =\u201d" in tip.text
        and "up: L1H0 +6.50, direct +1.00, L0H0>L1H0 +0.50" in tip.text
    )
    assert "down: L0H0 -0.75" in tip.text
    _screenshot(
        browser, _shots_dir(tmp_path) / f"report-attribution-{'csp' if csp else 'nocsp'}.png"
    )

    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == []
    events += [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    assert _requests(events, page.as_uri()) == []


@pytest.mark.parametrize("width", [1280, 800])
def test_report_never_scrolls_sideways(browser, analysis, tmp_path, width):
    """At a laptop's width and a narrow one the page is no wider than the window: the head
    table scrolls in its own box, the token strips wrap between tokens, and nothing in a head
    card spills out of it."""
    page = tmp_path / "report.html"
    page.write_text(render_report(analysis), encoding="utf-8")
    size = browser.get_window_size()
    try:
        browser.set_window_size(width, 900)
        _open(browser, page)
        _assert_no_sideways_scroll(browser)
        strips = browser.execute_script(
            "return Array.from(document.querySelectorAll('.qkov-strip .tokens, .qkov-attrib "
            ".tokens')).map(t => [t.scrollWidth, t.clientWidth]);"
        )
        assert strips and all(s <= c + 1 for s, c in strips), strips
    finally:
        browser.set_window_size(size["width"], size["height"])


@pytest.mark.parametrize("width", [1280, 800])
def test_gpt2_sized_report_in_chromium(browser, tmp_path, width):
    """144 heads: the page loads with a few tens of thousands of elements, never scrolls
    sideways (a 132-column composition heatmap of 34 px cells once made it 4,584 px wide),
    makes no request, and hovering a composition map or a card's attention image shows the
    value stored in analysis.json."""
    from selenium.webdriver.common.by import By

    from report_fixture import gpt2_shaped

    analysis = gpt2_shaped()
    page = tmp_path / "report.html"
    page.write_text(render_report(analysis), encoding="utf-8")
    size = browser.get_window_size()
    try:
        browser.set_window_size(width, 900)
        events = _open(browser, page)
        nodes = browser.execute_script("return document.getElementsByTagName('*').length")
        assert nodes < 40_000, nodes
        _assert_no_sideways_scroll(browser)
        # the composition maps are drawn: each image has a size on screen
        boxes = browser.execute_script(
            "return Array.from(document.querySelectorAll('#m0-composition image')).map(i => {"
            "const r = i.getBoundingClientRect(); return [r.width, r.height]; });"
        )
        assert len(boxes) == 3 and all(w >= 264 and h >= 264 for w, h in boxes), boxes
        # hover cells of the K map (a mouse event at the cell's centre): the tip names both
        # heads and shows the score from analysis.json; above the diagonal: not defined
        g = browser.find_element(By.CSS_SELECTOR, "#m0-composition g[data-grid='k']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", g)
        hover = (
            "const g = arguments[0], svg = g.ownerSVGElement, c = +g.dataset.cell;"
            "const p = svg.createSVGPoint();"
            "p.x = +g.dataset.x0 + c * (arguments[2] + 0.5);"
            "p.y = +g.dataset.y0 + c * (arguments[1] + 0.5);"
            "const q = p.matrixTransform(svg.getScreenCTM());"
            "svg.dispatchEvent(new MouseEvent('mousemove', {clientX: q.x, clientY: q.y,"
            " bubbles: true}));"
            "return document.querySelector('.qkov-tip').textContent;"
        )
        k = analysis["models"][0]["composition"]["k"]
        for (i, j), (l1, h1, l0, h0) in (
            ((0, 0), (1, 0, 0, 0)),
            ((131, 131), (11, 11, 10, 11)),
            ((30, 17), (3, 6, 1, 5)),
        ):
            want = f"K  L{l1}H{h1} \u2190 L{l0}H{h0}:  {k[l0][h0][l1][h1]:.3f}"
            assert browser.execute_script(hover, g, i, j) == want
        assert browser.execute_script(hover, g, 0, 12) == "K  L1H0 \u2190 L1H0:  not defined"
        tip = browser.find_element(By.CSS_SELECTOR, ".qkov-tip")
        assert tip.is_displayed()
        _screenshot(browser, _shots_dir(tmp_path) / f"report-gpt2-{width}.png")
        # a card's attention image: bottom-left is destination late, source early
        _hover_a_cards_first_source(browser, tip)
        errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == []
        events += [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
        assert _requests(events, page.as_uri()) == []
    finally:
        browser.set_window_size(size["width"], size["height"])


def _assert_no_sideways_scroll(browser) -> None:
    sizes = browser.execute_script(
        "const d = document.documentElement; return [d.scrollWidth, d.clientWidth];"
    )
    assert sizes[0] <= sizes[1], sizes


def _hover_a_cards_first_source(browser, tip) -> None:
    """Point at the bottom-left of the first head card's attention map (destination late,
    source early): the tip names source #0."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    heat = browser.find_element(By.CSS_SELECTOR, "#m0-heads svg.attn")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", heat)
    box = heat.rect
    ActionChains(browser).move_to_element_with_offset(
        heat, -box["width"] / 2 + 8, box["height"] / 2 - 8
    ).perform()
    assert tip.is_displayed() and "\u2190  source #0" in tip.text, tip.text
