"""The Compare tab: overlaid curves and a table of the chosen runs."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gradio as gr

import visual
from blocks.summary import human
from lab.serve import session as sess
from lab.serve.session import Session
from ui.common import curves, get_session, keeps_outputs, on_refresh_runs, user_errors
from ui.runs import refresh_button

ENERGY_IMAGES = 32           # test images the Compare table scores attention on


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
def on_compare(session_state: Any, run_ids: Any, log_loss: bool = False,
               request: gr.Request = None):
    """Overlaid curves (loss on a log axis with `log_loss`) and a table of the chosen runs."""
    s = get_session(session_state, request)
    ids = list(run_ids or [])
    if not ids:
        return [s, curves({}, log_loss), []]
    recs = [s.run(i) for i in ids]
    fig = curves({r.id + " · " + r.spec.get("name", ""): r.events for r in recs}, log_loss)
    rows = []
    for r in recs:
        acc, ips = r.best_test_acc, r.images_per_sec
        rows.append([r.id, r.spec.get("name", ""), r.dataset_name, r.status,
                     f"{r.start.get('params', 0):,}", human(r.start.get("flops", 0)),
                     "–" if acc is None else f"{100 * acc:.1f}%",
                     "–" if ips is None else f"{ips:,.0f}", attention_energy(s, r)])
    return [s, fig, rows]


# ---------------------------------------------------------------------------- layout

def layout(ui: SimpleNamespace) -> None:
    """Lay out the Compare tab; its components go on `ui`."""
    with gr.Tab("Compare", id="compare") as ui.compare_tab:
        with gr.Row():
            ui.compare_runs = gr.CheckboxGroup([], label="Runs", scale=4)
            ui.refresh_btns.append(refresh_button())
        with gr.Row():
            ui.compare_btn = gr.Button("Compare", scale=3)
            ui.compare_log = gr.Checkbox(False, label="log-scale loss", scale=1,
                                         elem_id="cs-compare-log")
        ui.compare_plot = gr.Plot(curves({}), label="Curves", elem_id="cs-compare-curves")
        ui.compare_table = gr.Dataframe(headers=COMPARE_HEADERS, interactive=False, wrap=True,
                                        elem_id="cs-compare-table")


def wire(ui: SimpleNamespace) -> None:
    """The Compare tab's events: opening it refreshes the runs and redraws."""
    outputs = [ui.session_state, ui.compare_plot, ui.compare_table]
    inputs = [ui.session_state, ui.compare_runs, ui.compare_log]
    compare = keeps_outputs(on_compare, len(outputs))
    ui.compare_tab.select(on_refresh_runs, [ui.session_state, ui.compare_runs], ui.compare_runs,
                          api_visibility="private").then(
        compare, inputs, outputs, api_visibility="private")
    ui.compare_btn.click(compare, inputs, outputs, api_name="compare")
    ui.compare_log.input(compare, inputs, outputs, api_visibility="private")
