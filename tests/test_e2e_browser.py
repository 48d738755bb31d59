"""A new user's first visit, clicked through in a real headless Chromium: the page opens on
the default preset, Train (1 epoch), the curves appear, Inspect, pick a test image,
Grad-CAM, the heatmap appears. Screenshots go to test-artifacts/.

Needs Chromium at /usr/bin/chromium (or $CONVSCOPE_CHROMIUM) and the playwright package
(tests/conftest.py: the test fails without them). The README's pictures come from this test, trained long enough to show
something (about 6 minutes on 2 CPU cores):

    CONVSCOPE_UPDATE_SCREENSHOTS=1 CONVSCOPE_E2E_EPOCHS=5 CONVSCOPE_E2E_TRAIN_SIZE=3000 \
        python -m pytest tests/test_e2e_browser.py

which, when the test passes, copies them to assets/screenshot-*.png."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
ASSETS = ROOT / "assets"
EPOCHS = os.environ.get("CONVSCOPE_E2E_EPOCHS", "1")
TRAIN_SIZE = os.environ.get("CONVSCOPE_E2E_TRAIN_SIZE", "512")
UPDATE_ASSETS = os.environ.get("CONVSCOPE_UPDATE_SCREENSHOTS") == "1"

pytestmark = pytest.mark.browser



def shot(page, name: str, shots: list[Path]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"screenshot-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shots.append(path)


def no_error_toasts(page) -> None:
    errors = page.locator(".toast-body.error")
    assert errors.count() == 0, errors.first.inner_text()


def test_new_user_trains_and_sees_grad_cam(page):
    shots: list[Path] = []
    # Open: the default preset is loaded and summarised.
    page.get_by_text("✓ ResNet-18 + CBAM").wait_for()
    assert page.locator("#cs-summary").get_by_text("basic_residual").count() >= 4
    shot(page, "build", shots)

    # Train one epoch on shapes.
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Epochs (≤").fill(EPOCHS)
    page.get_by_label("Train size").fill(TRAIN_SIZE)
    page.locator("#cs-start").click()
    page.locator("#cs-curves .js-plotly-plot").wait_for(timeout=120_000)
    budget_ms = 120_000 + int(EPOCHS) * int(TRAIN_SIZE) * 50   # ≥ 20 images/s, loaded CPU
    page.locator("#cs-train-status").get_by_text("completed").wait_for(timeout=budget_ms)
    assert page.locator("#cs-curves .js-plotly-plot .scatterlayer .trace").count() >= 2
    assert "100%" in page.locator("#cs-progress").inner_text()
    no_error_toasts(page)
    shot(page, "train", shots)

    # Inspect: pick a test image, Grad-CAM (the default view), Show.
    page.get_by_role("tab", name="Inspect").click()
    thumbs = page.locator("#cs-gallery .thumbnail-item")
    thumbs.nth(2).wait_for()
    assert thumbs.count() == 24
    thumbs.nth(2).click()
    page.locator("#cs-show").click()
    plot = page.locator("#cs-view-plot .js-plotly-plot")
    plot.wait_for(timeout=120_000)
    page.locator("#cs-view-plot").get_by_text("Grad-CAM").first.wait_for()
    # The input and the heatmap overlay are drawn as images inside the figure.
    assert plot.locator("image").count() >= 2
    assert page.locator("#cs-top5").get_by_text("%").count() >= 5
    no_error_toasts(page)
    shot(page, "inspect", shots)

    # Compare: the finished run is listed with its numbers.
    page.get_by_role("tab", name="Compare").click()
    table = page.locator("#cs-compare-table")
    table.get_by_text("run-1").filter(visible=True).first.wait_for(timeout=120_000)
    assert table.get_by_text("(CBAM)").filter(visible=True).count() >= 1
    no_error_toasts(page)
    shot(page, "compare", shots)

    if UPDATE_ASSETS:
        ASSETS.mkdir(exist_ok=True)
        for path in shots:
            shutil.copyfile(path, ASSETS / path.name)
