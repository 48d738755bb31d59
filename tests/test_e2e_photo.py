"""A real photo in a real browser: Inspect → "Real photo with a pretrained network", ResNet-18
with a local weights file (seeded random torchvision ResNet-18 weights the test saves), upload
a shipped photo, Show: the top-5 (torchvision's own top class among them) and the Grad-CAM
overlay appear; then a class picked by searching the 1,000 names is explained.

`CONVSCOPE_UPDATE_SCREENSHOTS=1` copies the screenshot to assets/screenshot-photo.png."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
PHOTO = ROOT / "assets" / "photos" / "cat.jpg"

pytestmark = pytest.mark.browser



@pytest.fixture()
def weights_and_top1(tmp_path) -> tuple[Path, str]:
    """The weights file and torchvision's top class on the photo, computed before the page
    opens (fx tracing in the app's diagram, on another thread, patches nn.Module.__call__)."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), weights)
    meta = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    with torch.no_grad():
        top1 = int(tv(meta.transforms()(Image.open(PHOTO).convert("RGB"))[None]).argmax())
    return weights, f"{meta.meta['categories'][top1]} · {top1}"


def test_pretrained_resnet18_on_a_shipped_photo(weights_and_top1, page, monkeypatch):
    weights, expected = weights_and_top1
    monkeypatch.setenv("CONVSCOPE_PUBLIC", "0")        # a local app: weights from a path
    page.get_by_role("tab", name="Inspect").click()
    page.get_by_text("Real photo with a pretrained network").click()
    assert page.locator("#cs-photo-preset input").input_value() == "ResNet-18 (ImageNet weights)"
    page.get_by_label("A weights file on this computer").check()
    page.locator("#cs-photo-path textarea").fill(str(weights))
    page.locator("#cs-photo-img input[type=file]").set_input_files(str(PHOTO))
    page.locator("#cs-photo-img img").first.wait_for()
    page.locator("#cs-photo-show").click()
    plot = page.locator("#cs-photo-plot .js-plotly-plot")
    plot.wait_for(timeout=120_000)
    page.locator("#cs-photo-plot").get_by_text("Grad-CAM").first.wait_for()
    assert plot.locator("image").count() >= 2           # the photo and the heatmap over it
    top5 = page.locator("#cs-photo-top5")
    top5.get_by_text(expected).first.wait_for()
    assert top5.get_by_text("%").count() >= 5
    assert "loaded 102 tensors, none new" in page.locator("#cs-photo-note").inner_text()

    # explain another class: search the 1,000 names
    box = page.locator("#cs-photo-class input")
    box.click()
    box.press("Control+a")                               # replace "(the predicted class)"
    box.press_sequentially("tabby")
    page.get_by_role("option", name="tabby · 281").click()
    page.locator("#cs-photo-show").click()
    page.locator("#cs-photo-plot").get_by_text("for 'tabby'").first.wait_for(timeout=120_000)
    errors = page.locator(".toast-body.error")
    assert errors.count() == 0, errors.first.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "screenshot-photo.png"
    page.locator("#cs-photo").screenshot(path=str(shot))
    if os.environ.get("CONVSCOPE_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, ROOT / "assets" / shot.name)
