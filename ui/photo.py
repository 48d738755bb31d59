"""The Inspect tab's "Real photo" section: a pretrained preset (ImageNet weights from
torchvision's download, a file on this computer or an upload) on any photo, with its top-5
ImageNet classes and a view at 224×224 — Grad-CAM, Integrated Gradients, Saliency, Occlusion
for any of the 1,000 classes, or a layer's feature maps — overlaid on the photo as cropped.

The loaded network is kept in the visitor's own gr.State (nothing shared between visitors)
and reused while the preset and weights stay the same.
"""
from __future__ import annotations

import functools

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr

from ui.common import md_text, user_errors

PHOTOS = sorted((Path(__file__).resolve().parents[1] / "assets" / "photos").glob("*.jpg"))
PHOTO_VIEWS = [("Grad-CAM", "gradcam"), ("Integrated Gradients (16 steps)", "ig"),
               ("Saliency", "saliency"), ("Occlusion (slow on a CPU)", "occlusion"),
               ("Feature maps", "features")]
SOURCES = [("ImageNet (torchvision download, cached)", "imagenet"),
           ("A weights file on this computer", "path"), ("Upload a weights file", "upload")]
IG_STEPS = 16
PREDICTED_CLASS = ("(the predicted class)", -1)


def preset_choices() -> list[tuple[str, str]]:
    """("ResNet-18 (ImageNet weights)", "ResNet-18") for every preset torchvision's weights fit."""
    from presets import all_presets
    return [(f"{p.name} (ImageNet weights)", p.name) for p in all_presets() if p.torchvision]


@functools.lru_cache(maxsize=1)
def class_choices() -> list[tuple[str, int]]:
    """The 1,000 ImageNet classes (from torchvision's weights metadata, offline), searchable."""
    import torchvision
    names = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    return [PREDICTED_CLASS] + [(f"{n} · {i}", i) for i, n in enumerate(names)]


def on_page_load():
    """The class picker's 1,000 choices (torchvision is imported on the first page load,
    after the server listens, not while it starts)."""
    return gr.update(choices=class_choices())


def local_paths_allowed() -> bool:
    """Reading a path on the server is for a local app, not a public host (a Space or
    CONVSCOPE_PUBLIC=1, lab/serve/session.py's public mode)."""
    from lab.serve.session import public_mode
    return not public_mode() and os.environ.get("CONVSCOPE_LOCAL_WEIGHTS", "1") != "0"


def _payload_path(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get("path")
    if isinstance(value, (list, tuple)):
        return _payload_path(value[0]) if value else None
    return str(getattr(value, "path", value))


@user_errors
def on_photo(value: Any):
    """A photo was uploaded or an example picked: check it can be read (one line if not) and
    keep its path for Show."""
    from lab.pretrained import open_photo
    from lab.serve.limits import Limits
    path = _payload_path(value)
    if not path:
        return None
    size = Path(path).stat().st_size
    if size > Limits.from_env().max_upload_bytes:
        raise gr.Error(f"The photo is {size / 2**20:.1f} MB; the limit is "
                       f"{Limits.from_env().max_upload_bytes / 2**20:g} MB.")
    open_photo(path)
    return path


def weights_source(source: str, path_text: str | None, upload: Any) -> str:
    """The `source` lab.pretrained takes: "imagenet" or a file path."""
    if source == "imagenet":
        return "imagenet"
    if source == "path":
        if not local_paths_allowed():
            raise gr.Error("Weights from a path on the server are off here; upload the file instead.")
        text = (path_text or "").strip()
        if not text:
            raise gr.Error("Type the path of a .pth or .safetensors file, or choose ImageNet.")
        return str(Path(text).expanduser())
    path = _payload_path(upload)
    if not path:
        raise gr.Error("Upload a .pth or .safetensors weights file first.")
    if Path(path).suffix.lower() not in upload_kinds():
        raise gr.Error("On a public host weights are uploaded as .safetensors only (a .pth is a "
                       "pickle); convert it with safetensors.torch.save_file, or run the app locally.")
    return path


def upload_kinds() -> list[str]:
    """Weights files a visitor may upload: a public host takes no pickle at all, not even
    through torch.load(weights_only=True); a local app (your own files) takes .pth too."""
    return [".pth", ".pt", ".safetensors"] if local_paths_allowed() else [".safetensors"]


def load_network(net_state: Any, preset: str, source: str):
    """The Pretrained network for (preset, source), reused from this visitor's state."""
    from lab.pretrained import pretrained
    key = (preset, source)
    if isinstance(net_state, dict) and net_state.get("key") == key:
        return net_state
    return {"key": key, "net": pretrained(preset, source)}


@user_errors
def on_show_photo(net_state: Any, preset: str, source: str, path_text: str, upload: Any,
                  photo: Any, view: str, target: Any, layer: Any):
    """(state, figure, top-5 {label: p}, note, layer choices) for one photo view."""
    import visual
    from lab.pretrained import open_photo, photo_tensors, top_k
    if not photo:
        raise gr.Error("Upload a photo (or pick one of the examples) first.")
    if not preset:
        raise gr.Error("Choose a network.")
    state = load_network(net_state, preset, weights_source(source or "imagenet", path_text, upload))
    net = state["net"]
    image, x = photo_tensors(open_photo(photo), net.weights)
    layers = [("(default for the view)", "")] + [(c.label, c.name) for c in visual.layer_choices(net.model)]
    names = {name for _, name in layers}
    layer = layer if layer in names and layer else None
    t = None if target in (None, "", -1, "-1") else int(target)
    if view == "features":
        v = visual.feature_grid(net.model, x, image, layer=layer)
    else:
        v = visual.attribution_view(net.model, x, image, method=view or "gradcam", target=t, layer=layer,
                                    n_steps=IG_STEPS, classes=net.classes, show_top5=False)
    top5 = {f"{r['label']} · {r['index']}": r["prob"] for r in top_k(net.model, x, net.classes)}
    where = "ImageNet" if net.source == "imagenet" else Path(net.source).name
    note = (f"**{md_text(net.spec['name'])}** with {md_text(str(net.weights))} weights from "
            f"{md_text(where)}: {md_text(net.report.summary())}. The photo is resized and "
            f"centre-cropped to 224×224 with the weights' own preprocessing.")
    return [state, v.figure, top5, note, gr.update(choices=layers, value=layer or "")]


def on_source_change(source: str):
    return (gr.update(visible=source == "path" and local_paths_allowed()),
            gr.update(visible=source == "upload"))


# ---------------------------------------------------------------------------- layout

def layout(ui: SimpleNamespace) -> None:
    """The section's components, on `ui` (placed inside the Inspect tab)."""
    with gr.Accordion("Real photo with a pretrained network", open=False, elem_id="cs-photo"):
        ui.photo_net_state = gr.State(None)
        ui.photo_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2, min_width=420):
                ui.photo_preset = gr.Dropdown(preset_choices(), value="ResNet-18", label="Network",
                                              elem_id="cs-photo-preset")
                ui.photo_source = gr.Radio(SOURCES, value="imagenet", label="Weights",
                                           elem_id="cs-photo-source")
                ui.photo_path = gr.Textbox(label="Weights file (.pth or .safetensors) on this computer",
                                           placeholder="~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth",
                                           visible=False, elem_id="cs-photo-path")
                ui.photo_weights = gr.File(label="Weights file (.pth or .safetensors)",
                                           file_types=upload_kinds(), visible=False)
                ui.photo_img = gr.Image(label="Photo (JPEG, PNG, WebP)", type="filepath", height=220,
                                        sources=["upload", "clipboard"], elem_id="cs-photo-img")
                if PHOTOS:
                    gr.Examples([[str(p)] for p in PHOTOS], inputs=ui.photo_img, label="Example photos")
                ui.photo_view = gr.Dropdown(PHOTO_VIEWS, value="gradcam", label="View",
                                            elem_id="cs-photo-view")
                # The 1,000 classes come with the page load (on_page_load): importing
                # torchvision for them would delay the server's start by seconds.
                ui.photo_class = gr.Dropdown([PREDICTED_CLASS], value=-1, filterable=True,
                                             label="Class to explain (type to search the 1,000)",
                                             elem_id="cs-photo-class")
                ui.photo_layer = gr.Dropdown([("(default for the view)", "")], value="", label="Layer")
                ui.photo_btn = gr.Button("Show on the photo", variant="primary", elem_id="cs-photo-show")
            with gr.Column(scale=3):
                ui.photo_plot = gr.Plot(label="View", elem_id="cs-photo-plot")
                with gr.Row():
                    ui.photo_top5 = gr.Label(num_top_classes=5, label="Top-5 ImageNet classes",
                                             elem_id="cs-photo-top5")
                    ui.photo_note = gr.Markdown(elem_id="cs-photo-note")


def wire(ui: SimpleNamespace) -> None:
    ui.photo_source.change(on_source_change, ui.photo_source, [ui.photo_path, ui.photo_weights],
                           api_visibility="private")
    # preprocess=False: the handler opens the file itself, under its own limits.
    ui.photo_img.change(on_photo, ui.photo_img, ui.photo_state, preprocess=False,
                        api_visibility="private")
    ui.photo_btn.click(on_show_photo,
                       [ui.photo_net_state, ui.photo_preset, ui.photo_source, ui.photo_path,
                        ui.photo_weights, ui.photo_state, ui.photo_view, ui.photo_class, ui.photo_layer],
                       [ui.photo_net_state, ui.photo_plot, ui.photo_top5, ui.photo_note, ui.photo_layer],
                       api_name="inspect_photo")
