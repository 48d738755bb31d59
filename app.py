"""ConvScope in the browser: build, train, inspect, compare and export CNNs.

`python app.py` serves it locally (127.0.0.1:7860, or GRADIO_SERVER_NAME / _PORT); the same
file is a Hugging Face Space's entry point (0.0.0.0 there). This file is the UI only:
layout and event wiring over plain functions (the `on_*` handlers below, which tests call
without a browser) that delegate to blocks/, presets/, lab/ and visual/. Nothing heavy runs
at import: the UI is built in `build_ui()` and served by `main()`.

State is per browser session: a `gr.State` holds the spec being edited and another one the
`lab.serve.session.Session` (finished runs, data sets, the session's temporary folder).
"""
from __future__ import annotations

import errno
import functools
import html
import inspect
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from lab.serve import zerogpu  # first: `spaces` must be imported before CUDA is touched

import gradio as gr

import visual
from blocks import SpecError, edit
from blocks.registry import get_block
from blocks.summary import human
from lab.serve import session as sess
from lab.datasets import DATASETS, DatasetError, dataset_help
from lab.train.device import available_devices, device_name
from lab.serve.limits import LimitError, Limits
from lab.serve.session import Session, SessionError
from presets import DEFAULT_CLASSES, DEFAULT_INPUT, DEFAULT_PRESET, DEFAULT_WIDTH, list_presets, load_preset

log = logging.getLogger("convscope.app")

ASSETS = Path(__file__).resolve().parent / "assets"
EMPTY = "(empty network)"
UPLOAD = "my images (.zip)"
FORM_SLOTS = 10
QUALITY_IMAGES = 32          # test images the attention-quality view scores
ENERGY_IMAGES = 32           # test images the Compare table scores attention on
CURVE_EVERY_S = 0.5          # the curves figure is redrawn at most twice a second
USER_ERRORS = (SpecError, LimitError, SessionError, DatasetError, ValueError, KeyError,
               FileNotFoundError)

VIEWS: list[tuple[str, str]] = [
    ("Grad-CAM", "gradcam"), ("Integrated Gradients", "ig"), ("Saliency", "saliency"),
    ("Occlusion", "occlusion"), ("Feature maps", "features"), ("Ghost maps", "ghost"),
    ("Redundancy (channel similarity)", "redundancy"), ("Redundancy by layer", "redundancy_layers"),
    ("SE excitation", "se"), ("SE per class", "se_class"), ("CBAM attention", "cbam"),
    ("Attention quality", "quality"), ("Parameters & FLOPs", "params_flops"),
    ("Network diagram", "diagram"), ("Confusion matrix", "confusion"),
]
VIEW_KINDS = {"ghost": ("ghost",), "se": ("se",), "se_class": ("se",), "cbam": ("cbam",)}
MARKS = {"cbam": "◆ ", "se": "◆ ", "ghost": "◇ "}

CSS = """
.cs-progress {height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden;}
.cs-progress > div {height: 100%; background: var(--color-accent); transition: width .2s;}
.cs-progress-text {font-size: var(--text-sm); margin-top: 4px; color: var(--body-text-color-subdued);}
#cs-title h1 {margin-bottom: 0;}
"""


# ============================================================================ errors

def _one_line(e: BaseException) -> str:
    text = str(e).strip().strip("'\"").splitlines()
    return (text[0] if text else type(e).__name__)[:400]


def _md_text(text: str) -> str:
    """Text (file names from an upload among it) shown literally inside Markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>])", r"\\\1", html.escape(text, quote=False))


def user_errors(fn: Callable) -> Callable:
    """Turn exceptions into a gr.Error with one readable line; the app keeps serving."""
    def convert(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return gr.Error("The server's disk is full, so nothing could be written; "
                            "try again later.")
        if isinstance(e, USER_ERRORS):
            return gr.Error(_one_line(e))
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Something went wrong: {_one_line(e)}")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every error becomes a message
                raise convert(e) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise convert(e) from None
    return call


# ============================================================================ session

def get_session(state: Any, request: gr.Request | None = None) -> Session:
    """The session held in `state`, or a new one keyed by the browser session."""
    if isinstance(state, Session) and not state.closed:
        return state
    return Session(key=getattr(request, "session_hash", None))


def close_session(value: Any) -> None:
    """gr.State's delete callback: the session's training stops and its folder goes."""
    if isinstance(value, Session):
        value.close()


def on_unload(request: gr.Request) -> None:
    """The tab was closed: close its session at once — the training stops after the current
    batch, runs and data sets are released and the folder is removed. (Gradio keeps a closed
    tab's gr.State for an hour before `close_session` runs; by then it holds nothing.)"""
    key = getattr(request, "session_hash", None) if request is not None else None
    if key:
        sess.close_sessions(key)
        sess.remove_session_dir(key)


def default_spec() -> dict:
    return load_preset(DEFAULT_PRESET, input_shape=DEFAULT_INPUT, classes=DEFAULT_CLASSES,
                       width=DEFAULT_WIDTH)


def _spec(state: Any) -> dict:
    return state if isinstance(state, dict) else default_spec()


# ============================================================================ Build tab

def _layer_choices(spec: dict) -> list[tuple[str, int]]:
    return [(f"{i} · {edit.describe_layer(l)}", i) for i, l in enumerate(spec.get("layers", []))]


def _selected(spec: dict, index: Any) -> int | None:
    n = len(spec.get("layers", []))
    if n == 0:
        return None
    if isinstance(index, (int, float)) and not isinstance(index, bool):
        return max(0, min(n - 1, int(index)))
    return 0


def form_updates(spec: dict, index: int | None) -> list:
    """Updates for the parameter form: help text, repeat, then 4 inputs per slot."""
    hidden = [gr.update(visible=False)] * (4 * FORM_SLOTS)
    if index is None:
        return [gr.update(value="*Select a layer to edit its parameters.*"),
                gr.update(visible=False)] + hidden
    layer = spec["layers"][index]
    try:
        info = get_block(layer.get("block"))
        values = edit.layer_params(spec, index)
    except (KeyError, SpecError, AttributeError):
        return [gr.update(value=f"Layer {index} names an unknown block; fix it in the JSON."),
                gr.update(visible=False)] + hidden
    out = []
    for slot in range(FORM_SLOTS):
        p = info.params[slot] if slot < len(info.params) else None
        kind = edit.widget_kind(p) if p else None
        label = f"{p.name}" if p else ""
        info_text = p.help if p else None
        for k in ("number", "checkbox", "dropdown", "text"):
            if kind != k:
                out.append(gr.update(visible=False))
                continue
            value = edit.form_value(p, values[p.name])
            if k == "number":
                out.append(gr.update(visible=True, label=label, info=info_text, value=value,
                                     precision=0 if p.type == "int" else None))
            elif k == "checkbox":
                out.append(gr.update(visible=True, label=label, info=info_text, value=bool(value)))
            elif k == "dropdown":
                out.append(gr.update(visible=True, label=label, info=info_text,
                                     choices=edit.widget_choices(p), value=value))
            else:
                hint = "comma-separated integers" if p.type == "ints" else "empty = automatic"
                out.append(gr.update(visible=True, label=label, info=f"{p.help} ({hint})",
                                     value=value, placeholder="auto"))
    return [gr.update(value=edit.block_help(info.name)),
            gr.update(visible=True, value=int(layer.get("repeat", 1)))] + out


def build_views(spec: dict, index: Any = None) -> list:
    """Everything the Build tab shows for a spec: state, JSON, table, status, layer picker,
    then the form (help, repeat, slots)."""
    rows, status = edit.layer_table(spec)
    sel = _selected(spec, index)
    shape = "×".join(map(str, spec.get("input", [])))
    status = f"{status}  \n*Input {shape}, {spec.get('classes')} classes — they follow the " \
             f"data set chosen on the Train tab.*"
    return [spec, edit.spec_to_json(spec), rows, status,
            gr.update(choices=_layer_choices(spec), value=sel)] + form_updates(spec, sel)


@user_errors
def on_load_preset(preset: str, width: float, spec_state: Any = None):
    """Load a preset (or start empty) at the current input shape and classes."""
    current = _spec(spec_state)
    shape, classes = current.get("input", list(DEFAULT_INPUT)), current.get("classes", DEFAULT_CLASSES)
    if not preset or preset == EMPTY:
        spec = edit.empty_spec(shape, classes)
    else:
        w = float(width) if width else None
        spec = load_preset(preset, input_shape=tuple(shape), classes=classes, width=w)
    return build_views(spec, 0)


@user_errors
def on_select_layer(spec_state: Any, index: Any):
    spec = _spec(spec_state)
    return form_updates(spec, _selected(spec, index))


@user_errors
def on_add_layer(spec_state: Any, block: str, index: Any):
    if not block:
        raise gr.Error("Pick a block in the palette first.")
    spec = _spec(spec_state)
    sel = _selected(spec, index)
    at = len(spec["layers"]) if sel is None else sel + 1
    return build_views(edit.add_layer(spec, block, at), at)


@user_errors
def on_remove_layer(spec_state: Any, index: Any):
    spec = _spec(spec_state)
    sel = _selected(spec, index)
    if sel is None:
        raise gr.Error("The network has no layers to remove.")
    new = edit.remove_layer(spec, sel)
    return build_views(new, min(sel, len(new["layers"]) - 1) if new["layers"] else None)


@user_errors
def on_duplicate_layer(spec_state: Any, index: Any):
    spec = _spec(spec_state)
    sel = _selected(spec, index)
    if sel is None:
        raise gr.Error("The network has no layers to duplicate.")
    return build_views(edit.duplicate_layer(spec, sel), sel + 1)


def _mover(delta: int) -> Callable:
    @user_errors
    def on_move_layer(spec_state: Any, index: Any):
        spec = _spec(spec_state)
        sel = _selected(spec, index)
        if sel is None:
            raise gr.Error("The network has no layers to move.")
        new = edit.move_layer(spec, sel, delta)
        return build_views(new, max(0, min(len(new["layers"]) - 1, sel + delta)))
    return on_move_layer


@user_errors
def on_apply_params(spec_state: Any, index: Any, repeat: Any, *slots: Any):
    """Apply the form: slot values (4 per slot) to the selected layer's parameters."""
    spec = _spec(spec_state)
    sel = _selected(spec, index)
    if sel is None:
        raise gr.Error("Select a layer first.")
    block = spec["layers"][sel].get("block")
    info = get_block(block)
    raw = {}
    kinds = ("number", "checkbox", "dropdown", "text")
    for slot, p in enumerate(info.params[:FORM_SLOTS]):
        raw[p.name] = slots[4 * slot + kinds.index(edit.widget_kind(p))]
    params = edit.form_to_params(block, raw, layer=sel)
    rep = int(repeat) if isinstance(repeat, (int, float)) and repeat else None
    return build_views(edit.set_layer_params(spec, sel, params, repeat=rep), sel)


def _unicode_checked(spec: dict) -> dict:
    """JSON's "\\ud800" escapes decode to lone surrogates, which no response can carry
    (the reply would die mid-stream): refuse them here, with a message."""
    try:
        json.dumps(spec, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start:e.end].encode("unicode_escape").decode("ascii")
        raise SpecError(f"the spec holds text that is not valid Unicode (a lone surrogate, "
                        f"{bad}); remove it") from None
    return spec


@user_errors
def on_apply_json(text: str, spec_state: Any, index: Any):
    """The JSON editor's text becomes the spec (input/classes kept from the data set)."""
    spec = _unicode_checked(edit.spec_from_json(text or ""))
    current = _spec(spec_state)
    spec = edit.set_input(spec, current.get("input", DEFAULT_INPUT), current.get("classes", DEFAULT_CLASSES))
    return build_views(spec, index)


@user_errors
def on_upload_spec(file: Any, spec_state: Any, session_state: Any = None,
                   request: gr.Request = None):
    """A spec file chosen with the upload button (JSON only, size-limited)."""
    if file is None:
        raise gr.Error("No file received.")
    path = Path(file if isinstance(file, str) else getattr(file, "name", ""))
    if path.suffix.lower() != ".json":
        raise gr.Error(f"{path.name} is not a .json spec file.")
    s = get_session(session_state, request)
    from lab.serve.limits import check_upload
    check_upload(str(path), s.limits)
    if path.stat().st_size > edit.MAX_SPEC_BYTES:
        raise gr.Error(f"{path.name} is larger than {edit.MAX_SPEC_BYTES // 1024} KiB; "
                       f"that is not a network spec.")
    spec = _unicode_checked(edit.spec_from_json(path.read_bytes()))
    current = _spec(spec_state)
    spec = edit.set_input(spec, current.get("input", DEFAULT_INPUT), current.get("classes", DEFAULT_CLASSES))
    return [s] + build_views(spec, 0)


@user_errors
def on_save_spec(spec_state: Any, session_state: Any = None, request: gr.Request = None):
    """Write the spec to a .json file in the session folder for download."""
    from lab.export.formats import default_name, export_spec
    s = get_session(session_state, request)
    spec = _spec(spec_state)
    path = export_spec(spec, s.dir / "downloads" / default_name(spec.get("name", "network"), "spec"))
    return s, gr.update(value=str(path), visible=True)


@user_errors
def on_palette_pick(block: str):
    return edit.block_help(block) if block else ""


# ============================================================================ Train tab

def dataset_meta(dataset: str, upload: Any = None, session: Session | None = None):
    """(input shape, classes) of a data set choice; loads an uploaded zip to find out."""
    if dataset in sess.BUILTIN_META:
        shape, classes = sess.BUILTIN_META[dataset]
        return list(shape), classes
    if dataset == UPLOAD and upload is not None and session is not None:
        ds = session.dataset(_upload_path(upload, session))
        return list(ds.input_shape), len(ds.classes)
    return None


def _upload_path(upload: Any, session: Session) -> str:
    from lab.serve.limits import check_upload
    path = upload if isinstance(upload, str) else getattr(upload, "name", None)
    if not path:
        raise gr.Error("Upload a .zip of an image folder (one sub-folder per class) first.")
    if not str(path).lower().endswith(".zip"):
        raise gr.Error("The upload must be a .zip of an image folder (one sub-folder per class).")
    check_upload(path, session.limits)
    return str(path)


SKIP_KINDS = (("unsafe", "unsafe entries (absolute paths, '..' or links)"),
              ("non_images", "files that are not images"), ("corrupt", "corrupt images"),
              ("too_large", "images with too many pixels"),
              ("outside_classes", "files outside the class folders"))


def skipped_note(report: dict) -> str:
    """One line on what an uploaded zip's reader skipped ('' when nothing was)."""
    parts = []
    for kind, what in SKIP_KINDS:
        n = int(report.get(f"skipped_{kind}", 0) or 0)
        if n:
            examples = report.get("examples", {}).get(kind) or []
            eg = f" (e.g. {examples[0][:80]})" if examples else ""
            parts.append(f"{n:,} {what}{eg}")
    return ("Skipped " + "; ".join(parts) + ".") if parts else ""


def dataset_note(dataset: str) -> str:
    helps = dataset_help()
    if dataset == UPLOAD:
        return ("A .zip of an image folder: one sub-folder per class (`cats/1.png`, `dogs/2.jpg`); "
                "images are resized to 32×32, 20% are held out for testing.")
    return helps.get(dataset, "")


@user_errors
def on_dataset_change(dataset: str, upload: Any, spec_state: Any, index: Any,
                      session_state: Any = None, request: gr.Request = None):
    """The data set decides the network's input shape and classes."""
    s = get_session(session_state, request)
    note = dataset_note(dataset)
    spec = _spec(spec_state)
    try:
        meta = dataset_meta(dataset, upload, s)
    except (DatasetError, LimitError, ValueError) as e:
        gr.Warning(_one_line(e))
        note += f"  \n⚠ {_md_text(_one_line(e))}"
        meta = None
    if meta is not None:
        shape, classes = meta
        if list(spec.get("input", [])) != list(shape) or spec.get("classes") != classes:
            spec = edit.set_input(spec, shape, classes)
        note += f"  \nInput {'×'.join(map(str, shape))}, {classes} classes."
        if dataset == UPLOAD:
            skipped = skipped_note(s.dataset(_upload_path(upload, s)).report)
            if skipped:
                gr.Warning(skipped)
                note += f"  \n{_md_text(skipped)}"
    return [s, gr.update(value=note), gr.update(visible=dataset == UPLOAD)] + build_views(spec, index)


def device_choices() -> list[tuple[str, str]]:
    """(label, value) for the device dropdown, naming the GPU (or "CPU")."""
    import torch
    if zerogpu.on_zerogpu():
        return [("auto — ZeroGPU (a GPU per run)", "auto"), ("CPU", "cpu")]
    out = []
    for kind in available_devices():
        name = device_name(torch.device(kind))
        out.append((name if kind == "cpu" else f"{kind} — {name}", kind))
    first = out[0][0]
    return [(f"auto — {first.split(' — ')[-1]}", "auto")] + out


def progress_html(frac: float, text: str) -> str:
    pct = max(0.0, min(1.0, frac)) * 100
    return (f'<div class="cs-progress" role="progressbar" aria-valuenow="{pct:.0f}" '
            f'aria-valuemin="0" aria-valuemax="100"><div style="width:{pct:.1f}%"></div></div>'
            f'<div class="cs-progress-text">{html.escape(text)}</div>')


def _run_updates(s: Session, select: str | None = None) -> list:
    """Run pickers of the Inspect, Compare and Export tabs."""
    choices = s.run_choices()
    ids = [v for _, v in choices]
    value = select if select in ids else (ids[0] if ids else None)
    compare = [v for v in ids[:4]]
    return [gr.update(choices=choices, value=value), gr.update(choices=choices, value=compare),
            gr.update(choices=choices, value=value)]


def _settings(dataset: str, upload: Any, s: Session, epochs: Any, batch: Any, optimizer: str,
              lr: Any, schedule: str, seed: Any, augment: bool, device: str):
    from lab.train.trainer import TrainSettings
    name = _upload_path(upload, s) if dataset == UPLOAD else dataset
    return TrainSettings(dataset=name, data_root=os.environ.get("CONVSCOPE_DATA_ROOT", "data"),
                         epochs=_int(epochs, "epochs"), batch_size=_int(batch, "batch size"),
                         optimizer=optimizer, lr=float(lr), schedule=schedule,
                         seed=_int(seed, "seed"), augment=bool(augment), device=device or "auto",
                         report_interval=0.25)


def _int(value: Any, what: str) -> int:
    if value is None or value == "":
        raise gr.Error(f"Enter a whole number for {what}.")
    v = float(value)
    if not v.is_integer():
        raise gr.Error(f"{what} must be a whole number, got {value}.")
    return int(v)


def curves(events_by_run: dict[str, list[dict]]):
    return visual.curves_figure(events_by_run).figure


@user_errors
def on_train(session_state: Any, spec_state: Any, dataset: str, upload: Any, train_size: Any,
             epochs: Any, batch: Any, optimizer: str, lr: Any, schedule: str, seed: Any,
             augment: bool, device: str, request: gr.Request = None):
    """Start a run and stream its progress; yields (session, progress, curves, status,
    inspect run, compare runs, export run, start button, stop button)."""
    s = get_session(session_state, request)
    settings = _settings(dataset, upload, s, epochs, batch, optimizer, lr, schedule, seed,
                         augment, device)
    size = _int(train_size, "train size") if train_size not in (None, "", 0) else None
    spec = _spec(spec_state)
    name = spec.get("name", "network")
    running = [gr.update(interactive=False), gr.update(interactive=True)]
    idle = [gr.update(interactive=True), gr.update(interactive=False)]
    keep = [gr.skip()] * 3
    yield [s, progress_html(0, "loading data and building the network…"), gr.skip(),
           f"Training **{html.escape(name)}** on {html.escape(str(dataset))}…"] + keep + running
    try:
        updates = s.start_training(spec, settings, train_size=size)  # checks limits first
    except Exception as e:
        yield [s, progress_html(0, "not started"), gr.skip(),
               f"⚠ Not started: {html.escape(_one_line(e))}"] + keep + idle
        raise
    last_plot = 0.0
    for u in updates:
        plot = gr.skip()
        now = time.monotonic()
        if u.done or (u.new_events and now - last_plot >= CURVE_EVERY_S):
            plot = curves({name: u.events}) if u.events else gr.skip()
            last_plot = now
        if not u.done:
            yield [s, progress_html(u.progress, u.text), plot, gr.skip()] + keep + running
            continue
        if u.run_id is None:
            gr.Warning(f"Training {u.status}: {u.message}")
            yield [s, progress_html(u.progress, u.text), plot,
                   f"⚠ Training {u.status}: {html.escape(u.message)}"] + keep + idle
            return
        if u.warning:
            gr.Warning(u.warning)
        yield [s, progress_html(u.progress, u.text), plot,
               f"✓ {html.escape(u.message)} — open **Inspect** to look inside."] \
            + _run_updates(s, u.run_id) + idle


def on_refresh_runs(session_state: Any, current: Any):
    """A tab was opened: its run picker lists the session's runs (a run finished after a
    Stop that returned early appears here), keeping the current choice."""
    if not isinstance(session_state, Session):
        return gr.skip()
    choices = session_state.run_choices()
    ids = [v for _, v in choices]
    if isinstance(current, list):
        return gr.update(choices=choices, value=[v for v in current if v in ids] or ids[:4])
    return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))


@user_errors
def on_stop(session_state: Any):
    """Stop the session's training: it ends after the current batch and is kept as a run."""
    idle = [gr.update(interactive=True), gr.update(interactive=False)]
    if not isinstance(session_state, Session):
        return [gr.skip(), gr.skip(), "Nothing is training."] + [gr.skip()] * 3 + idle
    s = session_state
    run_id = s.stop_training(wait=3.0)
    if run_id is None:
        return [gr.skip(), gr.skip(), "Nothing is training (or it is still stopping)."] \
            + [gr.skip()] * 3 + idle
    rec = s.run(run_id)
    plot = curves({rec.spec.get("name", "network"): rec.events})
    acc = rec.end.get("test_acc")
    acc_text = "" if acc is None else f", test accuracy {100 * acc:.1f}%"
    frac = next((e.get("progress", 0) for e in reversed(rec.events) if e.get("type") == "step"), 0)
    return [progress_html(frac, f"stopped — {rec.end.get('message', '')}"), plot,
            f"■ {run_id} stopped: the model trained so far is kept{acc_text}."] \
        + _run_updates(s, run_id) + idle


# ============================================================================ Inspect tab

def _layer_label(c: Any) -> str:
    return MARKS.get(c.kind, "") + c.label


@user_errors
def on_pick_run(session_state: Any, run_id: Any, request: gr.Request = None):
    """A run was picked: its test images, its layers, the sketchpad if it reads digits."""
    s = get_session(session_state, request)
    if not s.runs:
        return [s, gr.update(value=[]), gr.update(choices=[("(default)", "")], value=""),
                gr.update(visible=False), None, "Train a network first (Train tab)."]
    rec = s.run(run_id or None)
    ds = s.dataset_for(rec)
    gallery = sess.test_images(ds)
    layers = [("(default for the view)", "")] + [(_layer_label(c), c.name)
                                                 for c in visual.layer_choices(rec.model)]
    digits = rec.spec["input"][0] == 1
    note = (f"**{rec.label}** — pick a test image (or upload / draw one), a view and a layer. "
            f"◆ marks attention (SE/CBAM) modules, ◇ Ghost modules.")
    return [s, gr.update(value=gallery, selected_index=None), gr.update(choices=layers, value=""),
            gr.update(visible=digits), {"source": "test", "index": 0}, note]


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


def compute_view(s: Session, rec: Any, view: str, image_choice: Any, layer: str | None):
    """(View, top-5 {class: p}, note) for one inspection."""
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
        v = visual.attribution_view(model, x, img, method=view, layer=layer, classes=classes)
    elif view == "features":
        v = visual.feature_grid(model, x, img, layer=layer)
    elif view == "ghost":
        v = visual.ghost_view(model, x, img, layer=layer)
    elif view == "redundancy":
        xb, _, _ = sess.test_batch(ds, 64)
        v = visual.redundancy_view(model, xb, layer=layer)
        note += "Channel similarity over the first 64 test images. "
    elif view == "redundancy_layers":
        xb, _, _ = sess.test_batch(ds, 64)
        v = visual.redundancy_by_layer(model, xb)
    elif view == "se":
        v = visual.se_view(model, x, layer=layer)
    elif view == "se_class":
        xb, yb, _ = sess.test_batch(ds, 512)
        v = visual.se_class_view(model, xb, yb, layer=layer, classes=classes)
    elif view == "cbam":
        v = visual.cbam_view(model, x, img, layer=layer)
    elif view == "quality":
        xb, yb, masks = sess.test_batch(ds, QUALITY_IMAGES)
        if masks is None:
            raise gr.Error("Attention quality needs object masks; only the shapes data set has them.")
        v = visual.attention_quality(model, xb, masks, n_steps=16)
        note += f"Scored on the first {QUALITY_IMAGES} test images against their object masks. "
    elif view == "params_flops":
        v = visual.params_flops_view(model)
    elif view == "diagram":
        v = visual.stack_diagram(model)
    elif view == "confusion":
        xb, yb, _ = sess.test_batch(ds, len(ds.test_y))
        v = visual.confusion_view(model, xb, yb, classes=classes)
    else:
        raise gr.Error(f"Unknown view '{view}'.")
    probs = visual.predict(model, x)[0]
    idx, ps = visual.top_probabilities(probs, 5)
    top5 = {classes[i]: float(p) for i, p in zip(idx, ps)}
    return v, top5, f"{note}Prediction for {what}."


@user_errors
def on_inspect(session_state: Any, run_id: Any, view: str, image_choice: Any, layer: Any,
               request: gr.Request = None):
    """Run one inspection view; returns (session, figure, top-5, note, input preview)."""
    s = get_session(session_state, request)
    rec = s.run(run_id or None)
    ds = s.dataset_for(rec)
    img, _, _ = _inspect_image(s, rec, ds, image_choice)
    v, top5, note = compute_view(s, rec, view or "gradcam", image_choice, layer or None)
    preview = img.transpose(1, 2, 0)
    zoom = max(1, 128 // max(preview.shape[:2]))       # what the network sees, enlarged
    preview = preview.repeat(zoom, axis=0).repeat(zoom, axis=1)
    return [s, v.figure, top5, note, preview[:, :, 0] if preview.shape[2] == 1 else preview]


# ============================================================================ Compare tab

def attention_energy(s: Session, rec: Any) -> str:
    """Energy-in-mask of the run's CBAM maps (where it has CBAM) and Grad-CAM on the first
    test images, beside a uniform map's; cached per run."""
    if "energy" in rec.cache:
        return rec.cache["energy"]
    ds = s.dataset_for(rec)
    text = "–"
    if ds.test_masks is not None:
        xb, _, masks = sess.test_batch(ds, ENERGY_IMAGES)
        data = visual.attention_quality(rec.model, xb, masks, methods=("cbam", "gradcam")).data
        methods = data["methods"]
        parts = [f"{methods[key]['energy_in_mask']:.3f} ({name})"
                 for key, name in (("cbam", "CBAM"), ("gradcam", "Grad-CAM")) if key in methods]
        text = " · ".join(parts + [f"uniform {methods['uniform']['energy_in_mask']:.3f}"])
    rec.cache["energy"] = text
    return text


COMPARE_HEADERS = ["run", "network", "data set", "status", "parameters", "FLOPs / image",
                   "best test acc", "images / s", "attention energy-in-mask"]


@user_errors
def on_compare(session_state: Any, run_ids: Any, request: gr.Request = None):
    """Overlaid curves and a table of the chosen runs."""
    s = get_session(session_state, request)
    ids = list(run_ids or [])
    if not ids:
        return [s, curves({}), []]
    recs = [s.run(i) for i in ids]
    fig = curves({r.id + " · " + r.spec.get("name", ""): r.events for r in recs})
    rows = []
    for r in recs:
        acc, ips = r.best_test_acc, r.images_per_sec
        rows.append([r.id, r.spec.get("name", ""), r.settings.get("dataset", ""), r.status,
                     f"{r.start.get('params', 0):,}", human(r.start.get("flops", 0)),
                     "–" if acc is None else f"{100 * acc:.1f}%",
                     "–" if ips is None else f"{ips:,.0f}", attention_energy(s, r)])
    return [s, fig, rows]


# ============================================================================ Export tab

FORMAT_LABELS = {"spec": "spec (.json)", "py": "PyTorch (.py)", "safetensors": "weights (.safetensors)",
                 "onnx": "ONNX (.onnx)", "csv": "metrics (.csv)"}


def export_file(s: Session, run_id: Any, fmt: str) -> Path:
    """Write one export of a run into the session's downloads folder."""
    from lab.export import formats as export
    rec = s.run(run_id or None)
    name = export.default_name(rec.spec.get("name", "network"), fmt)
    target = s.dir / "downloads" / rec.id / name
    if fmt == "spec":
        return export.export_spec(rec.spec, target)
    if fmt == "csv":
        return export.export_metrics_csv(rec.events, target)
    if fmt == "safetensors":
        return export.export_safetensors(rec.model, target)
    if fmt == "onnx":
        return export.export_onnx(rec.model, target)
    if fmt == "py":
        info = rec.dataset_info or {}
        return export.export_py(rec.model, target, mean=info.get("mean"), std=info.get("std"),
                                classes=info.get("classes"))
    raise gr.Error(f"Unknown export format '{fmt}'.")


# What to do with a file next: the hand-over to torchrun for the spec and the .py.
NEXT_STEPS = {
    "spec": "Train it beyond the app, on every GPU of a machine: "
            "`torchrun --standalone --nproc_per_node=gpu -m lab train --spec {name} --dataset cifar10`.",
    "py": "Torch alone runs it: `python {name} check`; train it on several GPUs without ConvScope: "
          "`torchrun --standalone --nproc_per_node=gpu {name} train --data data.npz`.",
}


def _exporter(fmt: str) -> Callable:
    @user_errors
    def on_export(session_state: Any, run_id: Any, request: gr.Request = None):
        s = get_session(session_state, request)
        path = export_file(s, run_id, fmt)
        note = f"Wrote {FORMAT_LABELS[fmt]}: `{path.name}` ({path.stat().st_size / 1024:,.1f} KiB)."
        if fmt in NEXT_STEPS:
            note += " " + NEXT_STEPS[fmt].format(name=path.name)
        return [s, str(path), note]
    on_export.__name__ = f"on_export_{fmt}"
    return on_export


# ============================================================================ the page

@user_errors
def on_load(request: gr.Request = None):
    """Page opened: a fresh session and the default preset."""
    s = Session(key=getattr(request, "session_hash", None))
    return [s] + build_views(default_spec(), 0)


def build_ui(limits: Limits | None = None) -> gr.Blocks:
    """The whole app as a gr.Blocks (not launched)."""
    from lab.train.trainer import TrainSettings
    limits = limits or Limits.from_env()
    presets = [EMPTY] + list_presets()
    env_train_size = sess.default_train_size("shapes") or 0
    # delete_cache: files Gradio served (exports, images) go after an hour, checked hourly.
    with gr.Blocks(title="ConvScope", delete_cache=(3600, 3600)) as demo:
        session_state = gr.State(None, delete_callback=close_session)
        spec_state = gr.State(None)
        image_state = gr.State(None)
        gr.Markdown("# ConvScope\nBuild a CNN from blocks, train it, and look inside.",
                    elem_id="cs-title")
        with gr.Tabs() as tabs:
            # ------------------------------------------------------------ Build
            with gr.Tab("Build", id="build"):
                with gr.Row():
                    preset_dd = gr.Dropdown(presets, value=DEFAULT_PRESET, label="Preset", scale=3)
                    width_num = gr.Number(DEFAULT_WIDTH, label="Width ×", minimum=0.01, maximum=4,
                                          step=0.05, scale=1)
                    load_btn = gr.Button("Load preset", scale=1)
                status_md = gr.Markdown()
                with gr.Row():
                    with gr.Column(scale=3):
                        table = gr.Dataframe(headers=edit.TABLE_HEADERS, interactive=False, wrap=True,
                                             label="Summary (per image, float32)", max_height=560,
                                             column_widths=["6%", "38%", "12%", "11%", "10%", "11%",
                                                            "12%"], elem_id="cs-summary")
                        with gr.Row():
                            layer_dd = gr.Dropdown([], label="Selected layer", scale=4)
                            up_btn = gr.Button("↑", scale=0, min_width=40)
                            down_btn = gr.Button("↓", scale=0, min_width=40)
                            dup_btn = gr.Button("Duplicate", scale=0, min_width=90)
                            del_btn = gr.Button("Remove", variant="stop", scale=0, min_width=80)
                        with gr.Group():
                            help_md = gr.Markdown()
                            repeat_num = gr.Number(1, label="repeat", precision=0, minimum=1,
                                                   maximum=100, visible=False)
                            slots = []
                            with gr.Row():
                                for _ in range(FORM_SLOTS):
                                    slots += [gr.Number(visible=False, min_width=140),
                                              gr.Checkbox(visible=False, min_width=140),
                                              gr.Dropdown(visible=False, min_width=140),
                                              gr.Textbox(visible=False, min_width=140)]
                        apply_btn = gr.Button("Apply parameters", variant="primary")
                    with gr.Column(scale=2):
                        block_dd = gr.Dropdown(edit.palette_choices(), value="cbam",
                                               label="Palette (block registry)")
                        block_md = gr.Markdown(edit.block_help("cbam"))
                        add_btn = gr.Button("Add after selected layer")
                        with gr.Accordion("All blocks", open=False):
                            gr.Markdown(edit.palette_markdown())
                        json_code = gr.Code(language="json", label="Spec (JSON) — edit and apply",
                                            lines=12, max_lines=30, interactive=True, wrap_lines=True)
                        apply_json_btn = gr.Button("Apply JSON")
                        with gr.Row():
                            save_btn = gr.Button("Save spec (.json)")
                            upload_btn = gr.UploadButton("Load spec file", file_types=[".json"],
                                                         type="filepath")
                        spec_file = gr.File(label="Spec file", interactive=False, visible=False)
            # ------------------------------------------------------------ Train
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    with gr.Column(scale=1):
                        dataset_dd = gr.Dropdown(list(DATASETS) + [UPLOAD], value="shapes",
                                                 label="Data set")
                        dataset_md = gr.Markdown(dataset_note("shapes"))
                        zip_file = gr.File(label=f"Image folder .zip (≤ {limits.max_upload_mb:g} MB)",
                                           file_types=[".zip"], visible=False)
                        defaults = TrainSettings()  # one source for the trainer's tuned defaults
                        train_size = gr.Number(env_train_size, label="Train size (0 = all)",
                                               precision=0, minimum=0)
                        with gr.Row():
                            epochs = gr.Number(3, label=f"Epochs (≤ {limits.max_epochs})", precision=0,
                                               minimum=1, maximum=limits.max_epochs)
                            batch = gr.Number(defaults.batch_size, label=f"Batch size (≤ {limits.max_batch})",
                                              precision=0, minimum=1, maximum=limits.max_batch)
                        with gr.Row():
                            optimizer = gr.Dropdown(["adam", "adamw", "sgd"], value="adam", label="Optimizer")
                            lr = gr.Number(defaults.lr, label="Learning rate", minimum=0)
                        with gr.Row():
                            schedule = gr.Dropdown(["onecycle", "cosine", "constant"], value="onecycle",
                                                   label="Schedule")
                            seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                        augment = gr.Checkbox(False, label="Augment (flips, pad-and-crop)")
                        choices = device_choices()
                        device = gr.Dropdown(choices, value="auto", label="Device")
                        with gr.Row():
                            start_btn = gr.Button("Start", variant="primary", elem_id="cs-start")
                            stop_btn = gr.Button("Stop", variant="stop", interactive=False,
                                                 elem_id="cs-stop")
                    with gr.Column(scale=2):
                        progress = gr.HTML(progress_html(0, "not started"), elem_id="cs-progress")
                        curves_plot = gr.Plot(label="Training curves", elem_id="cs-curves")
                        train_status = gr.Markdown(elem_id="cs-train-status")
            # ------------------------------------------------------------ Inspect
            with gr.Tab("Inspect", id="inspect") as inspect_tab:
                inspect_note = gr.Markdown("Train a network first (Train tab).")
                with gr.Row():
                    with gr.Column(scale=2, min_width=420):
                        run_dd = gr.Dropdown([], label="Run")
                        gallery = gr.Gallery(label="Test images (click one)", columns=4, height=300,
                                             object_fit="contain",
                                             allow_preview=False, elem_id="cs-gallery")
                        with gr.Accordion("Your own image", open=False):
                            upload_img = gr.Image(label="Upload", type="numpy", height=160,
                                                  sources=["upload", "clipboard"])
                            sketch = gr.Sketchpad(label="Draw a digit", type="numpy", visible=False,
                                                  canvas_size=(280, 280), height=300,
                                                  image_mode="RGBA")
                        view_dd = gr.Dropdown(VIEWS, value="gradcam", label="View", elem_id="cs-view")
                        layer_pick = gr.Dropdown([("(default for the view)", "")], value="",
                                                 label="Layer")
                        show_btn = gr.Button("Show", variant="primary", elem_id="cs-show")
                        preview = gr.Image(label="Input", height=120, interactive=False)
                    with gr.Column(scale=3):
                        view_plot = gr.Plot(label="View", elem_id="cs-view-plot")
                        with gr.Row():
                            top5 = gr.Label(num_top_classes=5, label="Top-5 prediction",
                                            elem_id="cs-top5")
                            view_note = gr.Markdown()
            # ------------------------------------------------------------ Compare
            with gr.Tab("Compare", id="compare") as compare_tab:
                compare_runs = gr.CheckboxGroup([], label="Runs")
                compare_btn = gr.Button("Compare")
                compare_plot = gr.Plot(label="Curves")
                compare_table = gr.Dataframe(headers=COMPARE_HEADERS, interactive=False, wrap=True,
                                             elem_id="cs-compare-table")
            # ------------------------------------------------------------ Export
            with gr.Tab("Export", id="export") as export_tab:
                export_run = gr.Dropdown([], label="Run")
                with gr.Row():
                    export_btns = {fmt: gr.Button(label) for fmt, label in FORMAT_LABELS.items()}
                export_out = gr.File(label="Download", interactive=False)
                export_note = gr.Markdown()

        # ---------------------------------------------------------------- wiring
        form = [help_md, repeat_num] + slots
        views = [spec_state, json_code, table, status_md, layer_dd] + form
        demo.load(on_load, outputs=[session_state] + views, api_visibility="private")
        demo.unload(on_unload)

        load_btn.click(on_load_preset, [preset_dd, width_num, spec_state], views,
                       api_name="load_preset")
        layer_dd.input(on_select_layer, [spec_state, layer_dd], form, api_visibility="private")
        block_dd.change(on_palette_pick, block_dd, block_md, api_visibility="private")
        add_btn.click(on_add_layer, [spec_state, block_dd, layer_dd], views, api_name="add_layer")
        del_btn.click(on_remove_layer, [spec_state, layer_dd], views, api_name="remove_layer")
        dup_btn.click(on_duplicate_layer, [spec_state, layer_dd], views, api_name="duplicate_layer")
        up_btn.click(_mover(-1), [spec_state, layer_dd], views, api_name="move_up")
        down_btn.click(_mover(+1), [spec_state, layer_dd], views, api_name="move_down")
        apply_btn.click(on_apply_params, [spec_state, layer_dd, repeat_num] + slots, views,
                        api_name="apply_params")
        apply_json_btn.click(on_apply_json, [json_code, spec_state, layer_dd], views,
                             api_name="apply_json")
        save_btn.click(on_save_spec, [spec_state, session_state], [session_state, spec_file],
                       api_name="save_spec")
        upload_btn.upload(on_upload_spec, [upload_btn, spec_state, session_state],
                          [session_state] + views, api_name="upload_spec")

        dataset_inputs = [dataset_dd, zip_file, spec_state, layer_dd, session_state]
        dataset_outputs = [session_state, dataset_md, zip_file] + views
        dataset_dd.change(on_dataset_change, dataset_inputs, dataset_outputs, api_name="set_dataset")
        zip_file.upload(on_dataset_change, dataset_inputs, dataset_outputs, api_visibility="private")

        run_pickers = [run_dd, compare_runs, export_run]
        train_event = start_btn.click(
            on_train,
            [session_state, spec_state, dataset_dd, zip_file, train_size, epochs, batch, optimizer,
             lr, schedule, seed, augment, device],
            [session_state, progress, curves_plot, train_status] + run_pickers + [start_btn, stop_btn],
            api_name="train", concurrency_limit=limits.max_concurrent_trainings,
            concurrency_id="train", show_progress="hidden")
        stop_btn.click(on_stop, [session_state],
                       [progress, curves_plot, train_status] + run_pickers + [start_btn, stop_btn],
                       cancels=[train_event], api_name="stop", concurrency_limit=None)

        pick_outputs = [session_state, gallery, layer_pick, sketch, image_state, inspect_note]
        run_dd.change(on_pick_run, [session_state, run_dd], pick_outputs, api_name="pick_run")
        gallery.select(on_gallery_select, None, image_state, api_visibility="private")
        # preprocess=False: the handler decodes the file itself, under its own limits.
        upload_img.upload(on_upload_image, upload_img, image_state, api_name="upload_image",
                          preprocess=False)
        sketch.change(on_sketch, sketch, image_state, api_visibility="private")
        inspect_inputs = [session_state, run_dd, view_dd, image_state, layer_pick]
        inspect_outputs = [session_state, view_plot, top5, view_note, preview]
        show_btn.click(on_inspect, inspect_inputs, inspect_outputs, api_name="inspect")

        inspect_tab.select(on_refresh_runs, [session_state, run_dd], run_dd,
                           api_visibility="private")
        export_tab.select(on_refresh_runs, [session_state, export_run], export_run,
                          api_visibility="private")
        compare_tab.select(on_refresh_runs, [session_state, compare_runs], compare_runs,
                           api_visibility="private").then(
            on_compare, [session_state, compare_runs], [session_state, compare_plot, compare_table],
            api_visibility="private")
        compare_btn.click(on_compare, [session_state, compare_runs],
                          [session_state, compare_plot, compare_table], api_name="compare")
        for fmt, btn in export_btns.items():
            btn.click(_exporter(fmt), [session_state, export_run],
                      [session_state, export_out, export_note], api_name=f"export_{fmt}")
    return demo


def launch_options(limits: Limits | None = None, env: dict | None = None) -> dict:
    """Keyword arguments for `demo.launch()` from the environment."""
    env = os.environ if env is None else env
    limits = limits or Limits.from_env()
    on_space = bool(env.get("SPACE_ID"))
    return {
        "server_name": env.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space else "127.0.0.1"),
        "server_port": int(env.get("GRADIO_SERVER_PORT") or 7860),
        "max_file_size": limits.gradio_max_file_size(),
        "allowed_paths": [str(ASSETS)] if ASSETS.is_dir() else [],
        "css": CSS,
        "show_error": True,
    }


def make_demo(limits: Limits | None = None) -> gr.Blocks:
    """The app with its queue configured (what `main()` and the tests launch)."""
    limits = limits or Limits.from_env()
    demo = build_ui(limits)
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    limits = Limits.from_env()
    make_demo(limits).launch(**launch_options(limits))


if __name__ == "__main__":
    main()
