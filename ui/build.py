"""The Build tab: a preset or an empty network, a layer table, a form per block, the JSON.

Handlers take and return plain values (the spec is a dict in a gr.State); tests call them
without a browser.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import gradio as gr

from blocks import SpecError, edit
from blocks.registry import get_block
from presets import DEFAULT_CLASSES, DEFAULT_INPUT, DEFAULT_PRESET, DEFAULT_WIDTH, list_presets, load_preset
from ui import cost, diagram
from ui.common import EMPTY, get_session, keeps_outputs, spec_of, user_errors

FORM_SLOTS = 10


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
    current = spec_of(spec_state)
    shape, classes = current.get("input", list(DEFAULT_INPUT)), current.get("classes", DEFAULT_CLASSES)
    w = float(width) if width else None
    if not preset or preset == EMPTY:   # the Width box's value, as a preset would get it
        spec = edit.empty_spec(shape, classes, width=w or 1.0)
    else:
        spec = load_preset(preset, input_shape=tuple(shape), classes=classes, width=w)
    return build_views(spec, 0)


@user_errors
def on_select_layer(spec_state: Any, index: Any):
    spec = spec_of(spec_state)
    return form_updates(spec, _selected(spec, index))


@user_errors
def on_add_layer(spec_state: Any, block: str, index: Any):
    if not block:
        raise gr.Error("Pick a block in the palette first.")
    spec = spec_of(spec_state)
    sel = _selected(spec, index)
    at = len(spec["layers"]) if sel is None else sel + 1
    return build_views(edit.add_layer(spec, block, at), at)


@user_errors
def on_remove_layer(spec_state: Any, index: Any):
    spec = spec_of(spec_state)
    sel = _selected(spec, index)
    if sel is None:
        raise gr.Error("The network has no layers to remove.")
    new = edit.remove_layer(spec, sel)
    return build_views(new, min(sel, len(new["layers"]) - 1) if new["layers"] else None)


@user_errors
def on_duplicate_layer(spec_state: Any, index: Any):
    spec = spec_of(spec_state)
    sel = _selected(spec, index)
    if sel is None:
        raise gr.Error("The network has no layers to duplicate.")
    return build_views(edit.duplicate_layer(spec, sel), sel + 1)


def _mover(delta: int) -> Callable:
    @user_errors
    def on_move_layer(spec_state: Any, index: Any):
        spec = spec_of(spec_state)
        sel = _selected(spec, index)
        if sel is None:
            raise gr.Error("The network has no layers to move.")
        new = edit.move_layer(spec, sel, delta)
        return build_views(new, max(0, min(len(new["layers"]) - 1, sel + delta)))
    return on_move_layer


@user_errors
def on_apply_params(spec_state: Any, index: Any, repeat: Any, *slots: Any):
    """Apply the form: slot values (4 per slot) to the selected layer's parameters."""
    spec = spec_of(spec_state)
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
    current = spec_of(spec_state)
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
    current = spec_of(spec_state)
    spec = edit.set_input(spec, current.get("input", DEFAULT_INPUT), current.get("classes", DEFAULT_CLASSES))
    return [s] + build_views(spec, 0)


@user_errors
def on_save_spec(spec_state: Any, session_state: Any = None, request: gr.Request = None):
    """Write the spec to a .json file in the session folder for download."""
    from lab.export.formats import default_name, export_spec
    s = get_session(session_state, request)
    spec = spec_of(spec_state)
    path = export_spec(spec, s.dir / "downloads" / default_name(spec.get("name", "network"), "spec"))
    return s, gr.update(value=str(path), visible=True)


@user_errors
def on_palette_pick(block: str):
    return edit.block_help(block) if block else ""


# ---------------------------------------------------------------------------- layout

def layout(ui: SimpleNamespace) -> None:
    """Lay out the Build tab; its components go on `ui`."""
    with gr.Tab("Build", id="build"):
        with gr.Row():
            ui.preset_dd = gr.Dropdown([EMPTY] + list_presets(), value=DEFAULT_PRESET,
                                       label="Preset", scale=3)
            ui.width_num = gr.Number(DEFAULT_WIDTH, label="Width ×", minimum=0.01, maximum=4,
                                     step=0.05, scale=1)
            ui.load_btn = gr.Button("Load preset", scale=1)
        ui.status_md = gr.Markdown(elem_id="cs-build-status")
        with gr.Row():
            with gr.Column(scale=3):
                ui.table = gr.Dataframe(headers=edit.TABLE_HEADERS, interactive=False, wrap=True,
                                        label="Summary (per image, float32)", max_height=560,
                                        column_widths=["4%", "30%", "12%", "11%", "9%", "9%",
                                                       "12%", "13%"], elem_id="cs-summary")
                with gr.Row():
                    ui.layer_dd = gr.Dropdown([], label="Selected layer", scale=4)
                    ui.up_btn = gr.Button("↑", scale=0, min_width=40)
                    ui.down_btn = gr.Button("↓", scale=0, min_width=40)
                    ui.dup_btn = gr.Button("Duplicate", scale=0, min_width=90)
                    ui.del_btn = gr.Button("Remove", variant="stop", scale=0, min_width=80)
                with gr.Group():
                    ui.help_md = gr.Markdown()
                    ui.repeat_num = gr.Number(1, label="repeat", precision=0, minimum=1,
                                              maximum=100, visible=False)
                    ui.slots = []
                    with gr.Row():
                        for _ in range(FORM_SLOTS):
                            ui.slots += [gr.Number(visible=False, min_width=140),
                                         gr.Checkbox(visible=False, min_width=140),
                                         gr.Dropdown(visible=False, min_width=140),
                                         gr.Textbox(visible=False, min_width=140)]
                ui.apply_btn = gr.Button("Apply parameters", variant="primary")
                ui.form_note = gr.Markdown(elem_id="cs-form-note")
            with gr.Column(scale=2):
                ui.block_dd = gr.Dropdown(edit.palette_choices(), value="cbam",
                                          label="Palette (block registry)")
                ui.block_md = gr.Markdown(edit.block_help("cbam"))
                ui.add_btn = gr.Button("Add after selected layer")
                with gr.Accordion("All blocks", open=False):
                    gr.Markdown(edit.palette_markdown())
                ui.json_code = gr.Code(language="json", label="Spec (JSON) — edit and apply",
                                       lines=12, max_lines=30, interactive=True, wrap_lines=True,
                                       elem_id="cs-json")
                ui.apply_json_btn = gr.Button("Apply JSON")
                ui.json_note = gr.Markdown(elem_id="cs-json-note")
                with gr.Row():
                    ui.save_btn = gr.Button("Save spec (.json)")
                    ui.upload_btn = gr.UploadButton("Load spec file", file_types=[".json"],
                                                    type="filepath")
                ui.spec_file = gr.File(label="Spec file", interactive=False, visible=False)
        diagram.layout(ui)
        cost.layout(ui)
    ui.form = [ui.help_md, ui.repeat_num] + ui.slots
    # Everything build_views() returns, in its order.
    ui.build_views = [ui.spec_state, ui.json_code, ui.table, ui.status_md, ui.layer_dd] + ui.form


def wire(ui: SimpleNamespace) -> None:
    """The Build tab's events. An expected error (a value out of range, invalid JSON) leaves
    every output as it was and shows its message in the status line and a popup."""
    views = ui.build_views

    notes = [ui.json_note, ui.form_note]

    def kept(fn: Callable, outputs: list, note: Any = None) -> tuple[Callable, list]:
        """The handler with both notes beside the fields cleared on success; an expected
        error keeps every output and goes to the status line (and to `note`)."""
        @functools.wraps(fn)
        def cleared(*args, **kwargs):
            return list(fn(*args, **kwargs)) + ["", ""]
        outs = outputs + notes
        where = (outs.index(ui.status_md),) + ((outs.index(note),) if note is not None else ())
        return keeps_outputs(cleared, len(outs), where), outs

    def click(btn: Any, fn: Callable, inputs: list, note: Any = None, api_name: str = "") -> None:
        handler, outs = kept(fn, views, note)
        btn.click(handler, inputs, outs, api_name=api_name)

    click(ui.load_btn, on_load_preset, [ui.preset_dd, ui.width_num, ui.spec_state],
          api_name="load_preset")
    ui.layer_dd.input(on_select_layer, [ui.spec_state, ui.layer_dd], ui.form,
                      api_visibility="private")
    ui.block_dd.change(on_palette_pick, ui.block_dd, ui.block_md, api_visibility="private")
    click(ui.add_btn, on_add_layer, [ui.spec_state, ui.block_dd, ui.layer_dd], api_name="add_layer")
    click(ui.del_btn, on_remove_layer, [ui.spec_state, ui.layer_dd], api_name="remove_layer")
    click(ui.dup_btn, on_duplicate_layer, [ui.spec_state, ui.layer_dd], api_name="duplicate_layer")
    click(ui.up_btn, _mover(-1), [ui.spec_state, ui.layer_dd], api_name="move_up")
    click(ui.down_btn, _mover(+1), [ui.spec_state, ui.layer_dd], api_name="move_down")
    click(ui.apply_btn, on_apply_params, [ui.spec_state, ui.layer_dd, ui.repeat_num] + ui.slots,
          note=ui.form_note, api_name="apply_params")
    click(ui.apply_json_btn, on_apply_json, [ui.json_code, ui.spec_state, ui.layer_dd],
          note=ui.json_note, api_name="apply_json")
    ui.save_btn.click(on_save_spec, [ui.spec_state, ui.session_state],
                      [ui.session_state, ui.spec_file], api_name="save_spec")
    upload, upload_outputs = kept(on_upload_spec, [ui.session_state] + views, ui.json_note)
    ui.upload_btn.upload(upload, [ui.upload_btn, ui.spec_state, ui.session_state],
                         upload_outputs, api_name="upload_spec")
    diagram.wire(ui)
    cost.wire(ui)
