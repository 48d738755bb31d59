"""The block-cost lab, a section of the Build tab: conv variants for one input/output pair,
their parameters, FLOPs, receptive field and measured latency, as a table and a bar chart
(lab/cost.py, visual/cost.py; `python -m lab cost` prints the same)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gradio as gr

from blocks.summary import human
from lab.serve.limits import Limits, check_batch, check_spec_limits
from lab.train.device import available_devices
from ui.common import to_int, user_errors

COST_HEADERS = ["variant", "output", "params", "FLOPs", "act. mem", "RF", "fwd ms", "fwd+bwd ms",
                "params ×", "FLOPs ×", "fwd ×", "note"]
REPEATS = 5


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}×"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def cost_rows(table: Any) -> list[list]:
    """The table's rows as the Dataframe shows them."""
    return [[r.label, "×".join(map(str, r.out_shape)), f"{r.parameters:,}", human(r.flops),
             human(r.activation_bytes, "B"), r.receptive_field_text, _ms(r.forward_ms),
             _ms(r.forward_backward_ms), _x(r.ratios.get("parameters")), _x(r.ratios.get("flops")),
             _x(r.ratios.get("forward_ms")), r.note] for r in table.rows]


@user_errors
def on_cost(c_in: Any, c_out: Any, kernel: Any, size: Any, stride: Any, batch: Any, norm: str,
            device: str, measure: bool):
    """Build every variant, check it against the server's limits, time it; (table, chart, note)."""
    from lab.cost import block_costs, cost_records, one_layer_spec, variants
    from visual.cost import cost_figure
    c_in, c_out = to_int(c_in, "in channels"), to_int(c_out, "out channels")
    kernel, size = to_int(kernel, "kernel"), to_int(size, "size")
    stride, batch = to_int(stride, "stride"), to_int(batch, "batch")
    limits = Limits.from_env()
    check_batch(batch, limits)
    for v in variants(c_in, c_out, kernel, stride, norm):   # the costliest must fit, as a training
        if v.label in ("regular conv", "basic_residual"):
            check_spec_limits(one_layer_spec(c_in, size, v.block, v.params), batch, limits)
    table = block_costs(c_in, c_out, kernel, size, stride, norm, batch, device or "cpu",
                        repeats=REPEATS, time_it=bool(measure))
    view = cost_figure(cost_records(table), f"{c_in} → {c_out}, kernel {kernel}, {size}×{size}")
    note = (f"Latency: median of {REPEATS} interleaved rounds, batch {batch}, on {table.device_name}."
            if measure else "Latency not measured.")
    if table.skipped:
        note += "  \nNot applicable: " + "; ".join(f"{k} ({v})" for k, v in table.skipped.items())
    return [cost_rows(table), view.figure, note]


def layout(ui: SimpleNamespace) -> None:
    """The section's components (call inside the Build tab)."""
    with gr.Accordion("Block-cost lab: conv variants side by side", open=False, elem_id="cs-cost"):
        with gr.Row():
            ui.cost_in = gr.Number(3, label="in channels", precision=0, minimum=1, maximum=4096)
            ui.cost_out = gr.Number(30, label="out channels", precision=0, minimum=1, maximum=4096)
            ui.cost_kernel = gr.Number(10, label="kernel", precision=0, minimum=1, maximum=15)
            ui.cost_size = gr.Number(32, label="size (H = W)", precision=0, minimum=1, maximum=512)
            ui.cost_stride = gr.Number(1, label="stride", precision=0, minimum=1, maximum=8)
            ui.cost_batch = gr.Number(8, label="batch (timing)", precision=0, minimum=1, maximum=1024)
        with gr.Row():
            ui.cost_norm = gr.Radio(["none", "batch"], value="none", label="norm (none: conv + bias, "
                                    "as the handbook counts)")
            ui.cost_device = gr.Dropdown(available_devices(), value="cpu", label="device")
            ui.cost_measure = gr.Checkbox(True, label="measure latency")
            ui.cost_btn = gr.Button("Compare variants", variant="primary", elem_id="cs-cost-btn")
        ui.cost_note = gr.Markdown()
        ui.cost_table = gr.Dataframe(headers=COST_HEADERS, interactive=False, wrap=True,
                                     elem_id="cs-cost-table", max_height=520)
        ui.cost_plot = gr.Plot(label="parameters, FLOPs, latency", elem_id="cs-cost-plot")


def wire(ui: SimpleNamespace) -> None:
    ui.cost_btn.click(on_cost, [ui.cost_in, ui.cost_out, ui.cost_kernel, ui.cost_size, ui.cost_stride,
                                ui.cost_batch, ui.cost_norm, ui.cost_device, ui.cost_measure],
                      [ui.cost_table, ui.cost_plot, ui.cost_note], api_name="block_cost",
                      concurrency_limit=1, concurrency_id="cost")
