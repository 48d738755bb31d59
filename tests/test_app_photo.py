"""The Inspect tab's photo section (ui/photo.py) through its handlers, without a browser:
refusals are one line, a features view and the cached network per visitor state."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
import torch
import torchvision

from ui import photo

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "photos" / "coffee.jpg")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return str(path)


def test_choices_cover_the_torchvision_presets_and_the_1000_classes():
    names = [v for _, v in photo.preset_choices()]
    assert {"ResNet-18", "ResNet-50", "VGG-11", "DenseNet-121", "MobileNetV2", "AlexNet",
            "ResNet-18 + CBAM", "CoordConv ResNet-18"} <= set(names) and "GoogLeNet" not in names
    classes = photo.class_choices()
    assert len(classes) == 1001 and classes[282] == ("tabby · 281", 281)
    assert [p.name for p in photo.PHOTOS] == ["astronaut.jpg", "cat.jpg", "coffee.jpg"]


def test_photo_handler_refusals_are_one_line(tmp_path, weights, monkeypatch):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a photo")
    with pytest.raises(gr.Error, match="cannot be read as an image"):
        photo.on_photo({"path": str(bad)})
    assert photo.on_photo({"path": PHOTO}) == PHOTO
    args = ("ResNet-18", "path", weights, None)
    with pytest.raises(gr.Error, match="Upload a photo"):
        photo.on_show_photo(None, *args, None, "gradcam", -1, "")
    monkeypatch.setenv("CONVSCOPE_PUBLIC", "1")
    with pytest.raises(gr.Error, match="upload the file instead"):
        photo.on_show_photo(None, *args, PHOTO, "gradcam", -1, "")
    monkeypatch.setenv("CONVSCOPE_PUBLIC", "0")
    with pytest.raises(gr.Error, match="do not fit VGG-11"):
        photo.on_show_photo(None, "VGG-11", "path", weights, None, PHOTO, "gradcam", -1, "")


def test_features_view_and_the_network_kept_in_the_visitors_state(weights, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_PUBLIC", "0")
    state, fig, top5, note, layers = photo.on_show_photo(None, "ResNet-18", "path", weights, None, PHOTO,
                                                         "features", -1, "layers.2")
    probs = list(top5.values())
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert "loaded 102 tensors" in note
    assert layers["value"] == "layers.2" and fig.data
    again = photo.on_show_photo(state, "ResNet-18", "path", weights, None, PHOTO, "saliency", 281, "")
    assert again[0] is state                          # same preset and weights: not reloaded
    assert "for 'tabby'" in again[1].layout.annotations[1].text
