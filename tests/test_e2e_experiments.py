"""The experiments in a real headless Chromium: the Build tab's block-cost lab (table with the
handbook's figures and the bar chart), a run that watches the CBAM map form (one snapshot per
epoch, replay slider), and a 1-epoch ablation (attention none / SE / CBAM) of a tiny
ResNet-18 + CBAM that ends in Compare. Screenshots go to test-artifacts/ (and, with
CONVSCOPE_UPDATE_SCREENSHOTS=1, to assets/screenshot-cost.png, -watch.png, -ablation.png)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_e2e_browser import ASSETS, UPDATE_ASSETS, no_error_toasts, shot  # noqa: F401

pytestmark = pytest.mark.browser
# ResNet-18 + CBAM with 4-8-16-32 channels: seconds per epoch. The README's pictures use
# CONVSCOPE_E2E_EXP_WIDTH=0.25 CONVSCOPE_E2E_EXP_TRAIN_SIZE=2000 CONVSCOPE_E2E_EXP_EPOCHS=3.
WIDTH = os.environ.get("CONVSCOPE_E2E_EXP_WIDTH", "0.0625")
TRAIN_SIZE = os.environ.get("CONVSCOPE_E2E_EXP_TRAIN_SIZE", "128")
EPOCHS = os.environ.get("CONVSCOPE_E2E_EXP_EPOCHS", "1")


def pick(page, label: str, option: str) -> None:
    """Choose `option` in the Gradio dropdown labelled `label`."""
    box = page.get_by_label(label)
    box.click()
    page.get_by_role("option", name=option).click()


def test_cost_lab_watch_and_ablation(page):
    expect = pytest.importorskip("playwright.sync_api").expect
    shots: list[Path] = []
    page.get_by_text("✓ ResNet-18 + CBAM").wait_for()

    # Block-cost lab: the handbook's 3 -> 30, kernel 10 comparison, measured.
    page.get_by_text("Block-cost lab: conv variants side by side").click()
    page.locator("#cs-cost-btn").click()
    table = page.locator("#cs-cost-table")
    table.get_by_text("depthwise-separable").first.wait_for(timeout=180_000)
    for figure in ("9,030", "3,030", "120", "423"):
        assert table.get_by_text(figure, exact=True).count() >= 1, figure
    page.locator("#cs-cost-plot .js-plotly-plot").wait_for()
    assert page.locator("#cs-cost-plot .js-plotly-plot .barlayer .trace").count() >= 3
    no_error_toasts(page)
    page.locator("#cs-cost").screenshot(path=str(_path("cost", shots)))

    # A tiny ResNet-18 + CBAM.
    page.get_by_label("Width ×").fill(WIDTH)
    page.get_by_role("button", name="Load preset").click()
    page.get_by_text("✓ ResNet-18 + CBAM").wait_for()

    # Watch the CBAM map over 2 epochs: two snapshots, a replay slider.
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Epochs (≤").fill(str(int(EPOCHS) + 1))
    page.get_by_label("Train size").fill(TRAIN_SIZE)
    pick(page, "Watch while training (each epoch)", "Grad-CAM")
    page.locator("#cs-start").click()
    page.locator("#cs-train-status").get_by_text("completed").wait_for(
        timeout=240_000 + 60 * int(EPOCHS) * int(TRAIN_SIZE))
    watch = page.locator("#cs-watch .js-plotly-plot")
    watch.wait_for()
    assert watch.locator(".slider-container").count() == 1
    assert watch.get_by_text(f"epoch {int(EPOCHS) + 1}").count() >= 1
    no_error_toasts(page)
    shot(page, "watch", shots)

    # Ablate: three 1-epoch runs under the same settings, then Compare opens on them.
    page.get_by_label("Epochs (≤").fill(EPOCHS)
    page.locator("#cs-ablate").click()
    compare = page.locator("#cs-compare-table")
    compare.get_by_text("attention cbam").filter(visible=True).first.wait_for(
        timeout=360_000 + 150 * int(EPOCHS) * int(TRAIN_SIZE))
    for variant in ("attention none", "attention se"):
        assert compare.get_by_text(variant).filter(visible=True).count() >= 1
    # opening the tab redraws it once more: wait for that before the picture
    expect(page.get_by_text("processing |")).to_have_count(0, timeout=120_000)
    compare.get_by_text("attention cbam").filter(visible=True).first.wait_for()
    no_error_toasts(page)
    shot(page, "ablation", shots)

    if UPDATE_ASSETS:
        import shutil
        ASSETS.mkdir(exist_ok=True)
        for path in shots:
            shutil.copyfile(path, ASSETS / path.name)


def _path(name: str, shots: list[Path]) -> Path:
    from tests.test_e2e_browser import ARTIFACTS
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"screenshot-{name}.png"
    shots.append(path)
    return path
