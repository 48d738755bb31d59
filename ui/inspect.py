"""The Inspect tab: a run, an image (test set, upload or sketch), a view and a layer."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import gradio as gr

import visual
from lab.serve import session as sess
from lab.serve.limits import Limits
from lab.serve.session import Session
from ui import photo
from ui.common import get_session, keeps_outputs, md_text, user_errors
from ui.runs import refresh_button

QUALITY_IMAGES = 32          # test images the attention-quality view scores

VIEWS: list[tuple[str, str]] = [
    ("Grad-CAM", "gradcam"), ("Integrated Gradients", "ig"), ("Saliency", "saliency"),
    ("Occlusion", "occlusion"), ("Feature maps", "features"), ("Ghost maps", "ghost"),
    ("Redundancy (channel similarity)", "redundancy"), ("Redundancy by layer", "redundancy_layers"),
    ("SE excitation", "se"), ("SE per class", "se_class"), ("CBAM attention", "cbam"),
    ("Attention quality", "quality"), ("Parameters & FLOPs", "params_flops"),
    ("Network diagram", "diagram"), ("Confusion matrix", "confusion"),
]
VIEW_KINDS = {"ghost": ("ghost",), "se": ("se",), "se_class": ("se",), "cbam": ("cbam",)}
VIEW_NAMES = {value: label for label, value in VIEWS}
# Views of the run as a whole (a batch of test images, or the network alone): cached per run.
BATCH_VIEWS = {"redundancy", "redundancy_layers", "se_class", "quality", "params_flops",
               "diagram", "confusion"}
# views that look at the whole network (or only at the input), not at one chosen layer
NO_LAYER = {"ig", "saliency", "occlusion", "redundancy_layers", "quality", "params_flops",
            "diagram", "confusion"}
MARKS = {"cbam": "◆ ", "se": "◆ ", "ghost": "◇ "}
DEFAULT_LAYER = ("(default for the view)", "")


def _layer_label(c: Any) -> str:
    """'◆ layer 3 · block 2 · CBAM · 64×8×8  (layers.3.1.attn)'."""
    shape = "×".join(map(str, c.out_shape))
    return f"{MARKS.get(c.kind, '')}{c.title or c.name} · {shape}  ({c.name})"


def run_layers(rec: Any) -> list:
    """The run's inspectable layers (visual.layer_choices), computed once per run."""
    if "layer_choices" not in rec.cache:
        rec.cache["layer_choices"] = visual.layer_choices(rec.model)
    return rec.cache["layer_choices"]


def view_choices(rec: Any, ds: Any) -> list[tuple[str, str]]:
    """The views this run's model and data set have: no SE views without an SE module, no
    Ghost maps without a Ghost module, no CBAM view without CBAM, no attention quality
    without object masks."""
    kinds = {c.kind for c in run_layers(rec)}
    out = []
    for label, view in VIEWS:
        need = VIEW_KINDS.get(view)
        if need and not set(need) & kinds:
            continue
        if view == "quality" and getattr(ds, "test_masks", None) is None:
            continue
        out.append((label, view))
    return out


def layer_options(rec: Any, view: str) -> list[tuple[str, str]]:
    """The layers a view can look at (its kind only, e.g. CBAM modules for the CBAM view)."""
    if view in NO_LAYER:
        return [("(the view does not use a layer)", "")]
    kinds = VIEW_KINDS.get(view)
    return [DEFAULT_LAYER] + [(_layer_label(c), c.name) for c in run_layers(rec)
                              if not kinds or c.kind in kinds]


@user_errors
def on_pick_run(session_state: Any, run_id: Any, view: str = "gradcam",
                request: gr.Request = None):
    """A run was picked: its test images, the views and layers its model has, the sketchpad
    if it reads digits."""
    s = get_session(session_state, request)
    if not s.runs and not s.run_choices():
        return [s, gr.update(value=[]), gr.update(choices=[("(default)", "")], value=""),
                gr.update(visible=False), None, "Train a network first (Train tab).", gr.skip()]
    rec = s.run(run_id or None)
    ds = s.dataset_for(rec)
    gallery = sess.test_images(ds)
    views = view_choices(rec, ds)
    view = view if view in {v for _, v in views} else "gradcam"
    digits = rec.spec["input"][0] == 1
    note = (f"**{md_text(rec.label)}** — pick a test image (or upload / draw one), a view and a "
            f"layer. ◆ marks attention (SE/CBAM) modules, ◇ Ghost modules.")
    return [s, gr.update(value=gallery, selected_index=None),
            gr.update(choices=layer_options(rec, view), value=""),
            gr.update(visible=digits), {"source": "test", "index": 0}, note,
            gr.update(choices=views, value=view)]


@user_errors
def on_pick_view(session_state: Any, run_id: Any, view: str, layer: Any):
    """A view was picked: the layer picker lists only the layers it can look at."""
    if not isinstance(session_state, Session) or not session_state.run_choices():
        return gr.skip()
    rec = session_state.run(run_id or None)
    options = layer_options(rec, view or "gradcam")
    return gr.update(choices=options, value=layer if layer in {v for _, v in options} else "")


def on_gallery_select(evt: gr.SelectData):
    return {"source": "test", "index": int(evt.index)}


@user_errors
def on_upload_image(image: Any):
    """An uploaded picture (Gradio's file payload, a path or an array) becomes the input to
    inspect. Files are decoded here, not by Gradio, so that empty, truncated, non-image and
    decompression-bomb files are refused with one line before any pixel is decoded."""
    if image is None:
        return None
    if isinstance(image, (dict, str, Path)):
        path = image.get("path") if isinstance(image, dict) else image
        if not path:
            raise gr.Error("No image received; upload it again.")
        name = (image.get("orig_name") if isinstance(image, dict) else None) or Path(path).name
        image = sess.read_image_file(path, name=Path(str(name)).name[:80],
                                     max_bytes=Limits.from_env().max_upload_bytes)
    return {"source": "upload", "array": image}


def on_sketch(value: Any):
    return None if value is None else {"source": "sketch", "array": value}


def _inspect_image(s: Session, rec: Any, ds: Any, choice: Any):
    """(uint8 (C, H, W), description, mask or None) of the chosen input."""
    import numpy as np
    choice = choice or {"source": "test", "index": 0}
    if choice.get("source") == "upload":
        return sess.prepare_image(choice.get("array"), rec.spec["input"]), "uploaded image", None
    if choice.get("source") == "sketch":
        img = sess.prepare_sketch(choice.get("array"), rec.spec["input"])
        if img is None:
            raise gr.Error("The sketchpad is empty: draw a digit first.")
        return img, "your drawing", None
    i = int(choice.get("index", 0))
    if not 0 <= i < len(ds.test_y):
        raise gr.Error(f"There is no test image {i}.")
    mask = None if ds.test_masks is None else ds.test_masks[i:i + 1]
    return np.asarray(ds.test_x[i]), f"test image {i} (true class: {ds.classes[int(ds.test_y[i])]})", mask


def batch_view(ds: Any, model: Any, view: str, layer: str | None, classes: list) -> tuple[Any, str]:
    """(View, note) of a view that reads a batch of test images or the network alone (one of
    BATCH_VIEWS): the same whatever image is chosen, so a run computes it once."""
    note = ""
    if view == "redundancy":
        xb, _, _ = sess.test_batch(ds, 64)
        v = visual.redundancy_view(model, xb, layer=layer)
        note = "Channel similarity over the first 64 test images. "
    elif view == "redundancy_layers":
        xb, _, _ = sess.test_batch(ds, 64)
        v = visual.redundancy_by_layer(model, xb)
    elif view == "se_class":
        xb, yb, _ = sess.test_batch(ds, 512)
        v = visual.se_class_view(model, xb, yb, layer=layer, classes=classes)
    elif view == "quality":
        xb, yb, masks = sess.test_batch(ds, QUALITY_IMAGES)
        if masks is None:
            raise gr.Error("Attention quality needs object masks; only the shapes data set has them.")
        v = visual.attention_quality(model, xb, masks, n_steps=16)
        note = f"Scored on the first {QUALITY_IMAGES} test images against their object masks. "
    elif view == "params_flops":
        v = visual.params_flops_view(model)
    elif view == "diagram":
        v = visual.stack_diagram(model)
    elif view == "confusion":
        xb, yb, _ = sess.test_batch(ds, len(ds.test_y))
        v = visual.confusion_view(model, xb, yb, classes=classes)
    else:
        raise gr.Error(f"Unknown view '{view}'.")
    return v, note


def compute_view(s: Session, rec: Any, view: str, image_choice: Any, layer: str | None,
                 progress: Callable | None = None):
    """(View, top-5 {class: p}, note) for one inspection; `progress` (a gr.Progress) is told
    when a run-wide view is computed for the first time."""
    ds = s.dataset_for(rec)
    model, classes = rec.model, list(ds.classes)
    img, what, mask = _inspect_image(s, rec, ds, image_choice)
    x = sess.input_tensor(ds, img)
    kinds = VIEW_KINDS.get(view)
    note = ""
    if layer and kinds:
        allowed = {c.name for c in visual.layer_choices(model, kinds)}
        if layer not in allowed:
            note = f"{layer} is not a {'/'.join(kinds)} layer, so the view uses its default. "
            layer = None
    layer = layer or None
    if view in visual.METHODS:
        v = visual.attribution_view(model, x, img, method=view, layer=layer, classes=classes,
                                    show_top5=False)      # the page shows top-5 beside it
    elif view == "features":
        v = visual.feature_grid(model, x, img, layer=layer)
    elif view == "ghost":
        v = visual.ghost_view(model, x, img, layer=layer)
    elif view == "se":
        v = visual.se_view(model, x, layer=layer)
    elif view == "cbam":
        v = visual.cbam_view(model, x, img, layer=layer)
    elif view in BATCH_VIEWS:
        # Views of the run as a whole (not of the chosen image): computed once per run and
        # layer, kept in the run's record (this session's memory), shown from there after.
        key = ("view", view, layer)
        if key not in rec.cache:
            if progress is not None:
                progress(0, desc=f"Computing the {VIEW_NAMES.get(view, view).lower()} of {rec.id} (once)…")
            rec.cache[key] = batch_view(ds, model, view, layer, classes)
        v, batch_note = rec.cache[key]
        note += batch_note
    else:
        raise gr.Error(f"Unknown view '{view}'.")
    probs = visual.predict(model, x)[0]
    idx, ps = visual.top_probabilities(probs, 5)
    top5 = {classes[i]: float(p) for i, p in zip(idx, ps)}
    return v, top5, f"{note}Prediction for {what}."


@user_errors
def on_inspect(session_state: Any, run_id: Any, view: str, image_choice: Any, layer: Any,
               request: gr.Request = None, progress: gr.Progress = gr.Progress()):
    """Run one inspection view; returns (session, figure, top-5, note, input preview)."""
    s = get_session(session_state, request)
    rec = s.run(run_id or None)
    ds = s.dataset_for(rec)
    img, _, _ = _inspect_image(s, rec, ds, image_choice)
    v, top5, note = compute_view(s, rec, view or "gradcam", image_choice, layer or None, progress)
    preview = img.transpose(1, 2, 0)
    zoom = max(1, 128 // max(preview.shape[:2]))       # what the network sees, enlarged
    preview = preview.repeat(zoom, axis=0).repeat(zoom, axis=1)
    return [s, v.figure, top5, note, preview[:, :, 0] if preview.shape[2] == 1 else preview]


# ---------------------------------------------------------------------------- layout

def layout(ui: SimpleNamespace) -> None:
    """Lay out the Inspect tab; its components go on `ui`."""
    with gr.Tab("Inspect", id="inspect") as ui.inspect_tab:
        ui.inspect_note = gr.Markdown("Train a network first (Train tab).")
        with gr.Row():
            with gr.Column(scale=2, min_width=420):
                with gr.Row():
                    ui.run_dd = gr.Dropdown([], label="Run", scale=4)
                    ui.refresh_btns.append(refresh_button())
                ui.gallery = gr.Gallery(label="Test images (click one)", columns=4, height=300,
                                        object_fit="contain", allow_preview=False,
                                        elem_id="cs-gallery")
                with gr.Accordion("Your own image", open=False):
                    ui.upload_img = gr.Image(label="Upload", type="numpy", height=160,
                                             sources=["upload", "clipboard"])
                    ui.sketch = gr.Sketchpad(label="Draw a digit", type="numpy", visible=False,
                                             canvas_size=(280, 280), height=300,
                                             image_mode="RGBA")
                ui.view_dd = gr.Dropdown(VIEWS, value="gradcam", label="View", elem_id="cs-view")
                ui.layer_pick = gr.Dropdown([DEFAULT_LAYER], value="", label="Layer",
                                            elem_id="cs-layer")
                ui.show_btn = gr.Button("Show", variant="primary", elem_id="cs-show")
                ui.preview = gr.Image(label="Input", height=120, interactive=False)
            with gr.Column(scale=3):
                ui.view_plot = gr.Plot(label="View", elem_id="cs-view-plot")
                with gr.Row():
                    ui.top5 = gr.Label(num_top_classes=5, label="Top-5 prediction",
                                       elem_id="cs-top5")
                    ui.view_note = gr.Markdown()
        photo.layout(ui)       # a pretrained network on a real photo (ui/photo.py)


def wire(ui: SimpleNamespace) -> None:
    """The Inspect tab's events."""
    from ui.common import on_refresh_runs
    pick_outputs = [ui.session_state, ui.gallery, ui.layer_pick, ui.sketch, ui.image_state,
                    ui.inspect_note, ui.view_dd]
    ui.run_dd.change(keeps_outputs(on_pick_run, len(pick_outputs), 5),
                     [ui.session_state, ui.run_dd, ui.view_dd], pick_outputs, api_name="pick_run")
    ui.view_dd.input(on_pick_view, [ui.session_state, ui.run_dd, ui.view_dd, ui.layer_pick],
                     ui.layer_pick, api_visibility="private")
    ui.gallery.select(on_gallery_select, None, ui.image_state, api_visibility="private")
    # preprocess=False: the handler decodes the file itself, under its own limits.
    ui.upload_img.upload(on_upload_image, ui.upload_img, ui.image_state, api_name="upload_image",
                         preprocess=False)
    ui.sketch.change(on_sketch, ui.sketch, ui.image_state, api_visibility="private")
    inputs = [ui.session_state, ui.run_dd, ui.view_dd, ui.image_state, ui.layer_pick]
    outputs = [ui.session_state, ui.view_plot, ui.top5, ui.view_note, ui.preview]
    ui.show_btn.click(keeps_outputs(on_inspect, len(outputs), 3), inputs, outputs,
                      api_name="inspect")
    ui.inspect_tab.select(on_refresh_runs, [ui.session_state, ui.run_dd], ui.run_dd,
                          api_visibility="private")
    photo.wire(ui)
