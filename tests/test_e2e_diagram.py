"""The Build tab's diagram in a real headless Chromium: load "ResNet-18 + CBAM", expand layer 1,
select another layer, click the CBAM spatial-attention node inside layer 1: the editor shows
layer 1 and the diagram highlights it. The screenshot goes to test-artifacts/ (and to
assets/screenshot-diagram.png with CONVSCOPE_UPDATE_SCREENSHOTS=1)."""
from __future__ import annotations

import shutil
import time

import pytest

from test_e2e_browser import ARTIFACTS, ASSETS, UPDATE_ASSETS, no_error_toasts  # noqa: F401

pytestmark = pytest.mark.browser


def _wait_value(locator, prefix: str, timeout: float = 60) -> str:
    end = time.monotonic() + timeout
    while True:
        value = locator.input_value()
        if value.startswith(prefix) or time.monotonic() > end:
            return value
        time.sleep(0.2)


def test_click_a_node_of_an_expanded_block_selects_its_layer(page):  # noqa: F811
    page.get_by_text("✓ ResNet-18 + CBAM").wait_for()
    diagram = page.locator("#cs-diagram")
    diagram.locator("g.cs-layer").first.wait_for()
    assert diagram.locator("g.cs-layer").count() == 7          # one box per layer
    picker = page.get_by_label("Selected layer")

    diagram.locator("g.cs-layer[data-layer='1']").click()          # select layer 1 by its box
    assert _wait_value(picker, "1 ·").startswith("1 · basic_residual")
    page.get_by_role("button", name="Expand / collapse selected layer").click()
    cbam = diagram.locator("g.cs-node[data-layer='1'][data-node='0.attn.spatial.conv']")
    cbam.wait_for()
    assert diagram.locator("g.cs-node[data-layer='1']").count() > 30

    diagram.locator("g.cs-layer[data-layer='3']").click()          # select another layer
    assert _wait_value(picker, "3 ·").startswith("3 · basic_residual")
    cbam.scroll_into_view_if_needed()
    cbam.click()                                                   # the CBAM node inside layer 1
    assert _wait_value(picker, "1 ·").startswith("1 · basic_residual(out=64, attention=\"cbam\")")
    page.get_by_text("ResNet basic block").first.wait_for()        # the form shows that block
    diagram.locator("g.cs-layer.cs-selected[data-layer='1']").wait_for()
    no_error_toasts(page)

    with page.expect_download() as png:                            # PNG drawn in the browser
        page.get_by_role("button", name="Download PNG").click()
    assert png.value.suggested_filename == "diagram.png"
    with open(png.value.path(), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "screenshot-diagram.png"
    # the selected, expanded layer at the top of the scrolling box; clip to the drawing's width
    diagram.evaluate("""el => { const box = el.querySelector('.cs-diagram-box');
        const g = el.querySelector("g.cs-layer[data-layer='1'] rect");
        box.scrollTop = g.getBBox().y - 12; }""")
    box = diagram.locator(".cs-diagram-box").bounding_box()
    width = diagram.locator("svg").bounding_box()["width"]
    page.screenshot(path=str(path), clip={"x": box["x"], "y": box["y"], "width": min(box["width"], width + 2),
                                          "height": box["height"]})
    if UPDATE_ASSETS:
        shutil.copy(path, ASSETS / path.name)

    page.get_by_role("button", name="Duplicate").click()           # an edit redraws the diagram
    diagram.locator("g.cs-layer[data-layer='7']").wait_for()
    assert diagram.locator("g.cs-layer").count() == 8
