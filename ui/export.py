"""The Export tab: a run as a spec, a standalone .py, weights, ONNX, its metrics or the
whole run as a .zip (which the app opens again, here or elsewhere); and the Manage runs
panel (ui/runs.py)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import gradio as gr

from lab.serve.session import Session
from ui.common import get_session, keeps_outputs, on_refresh_runs, user_errors
from ui.runs import manage_layout, refresh_button


FORMAT_LABELS = {"spec": "spec (.json)", "py": "PyTorch (.py)", "safetensors": "weights (.safetensors)",
                 "onnx": "ONNX (.onnx)", "csv": "metrics (.csv)", "run": "run (.zip)"}


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
    if fmt == "run":
        return s.export_run_zip(rec.id, target.with_name(f"{rec.id}.zip"))
    if fmt == "py":
        info = rec.dataset_info or {}
        return export.export_py(rec.model, target, mean=info.get("mean"), std=info.get("std"),
                                classes=info.get("classes"))
    raise gr.Error(f"Unknown export format '{fmt}'.")


# What to do with a file next: the hand-over to torchrun for the spec and the .py.
NEXT_STEPS = {
    "spec": "Train it beyond the app, on every GPU of a machine: "
            "`torchrun --standalone --nproc_per_node=gpu -m lab train --spec {name} --dataset cifar10`.",
    "py": "Torch alone runs it: download the trained weights too (**{weights_label}**) and run "
          "`python {name} check --weights {weights}` (without `--weights` it checks an untrained "
          "copy); train it on several GPUs without ConvScope: "
          "`torchrun --standalone --nproc_per_node=gpu {name} train --data data.npz`.",
    "safetensors": "The trained weights for the PyTorch (.py) export: "
                   "`python {py} check --weights {name}`.",
}


def exporter(fmt: str) -> Callable:
    @user_errors
    def on_export(session_state: Any, run_id: Any, request: gr.Request = None):
        s = get_session(session_state, request)
        path = export_file(s, run_id, fmt)
        note = f"Wrote {FORMAT_LABELS[fmt]}: `{path.name}` ({path.stat().st_size / 1024:,.1f} KiB)."
        if fmt in NEXT_STEPS:
            from lab.export.formats import default_name
            net = s.run(run_id or None).spec.get("name", "network")
            note += " " + NEXT_STEPS[fmt].format(
                name=path.name, weights=default_name(net, "safetensors"),
                weights_label=FORMAT_LABELS["safetensors"], py=default_name(net, "py"))
        return [s, str(path), note]
    on_export.__name__ = f"on_export_{fmt}"
    return on_export


# ---------------------------------------------------------------------------- layout

def layout(ui: SimpleNamespace) -> None:
    """Lay out the Export tab; its components go on `ui`."""
    with gr.Tab("Export", id="export") as ui.export_tab:
        with gr.Row():
            ui.export_run = gr.Dropdown([], label="Run", scale=4)
            ui.refresh_btns.append(refresh_button())
        with gr.Row():
            ui.export_btns = {fmt: gr.Button(label) for fmt, label in FORMAT_LABELS.items()}
        ui.export_out = gr.File(label="Download", interactive=False)
        ui.export_note = gr.Markdown()
        manage_layout(ui)


def wire(ui: SimpleNamespace) -> None:
    """The Export tab's events: one button per format."""
    ui.export_tab.select(on_refresh_runs, [ui.session_state, ui.export_run], ui.export_run,
                         api_visibility="private")
    for fmt, btn in ui.export_btns.items():
        btn.click(keeps_outputs(exporter(fmt), 3, 2), [ui.session_state, ui.export_run],
                  [ui.session_state, ui.export_out, ui.export_note], api_name=f"export_{fmt}")
