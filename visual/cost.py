"""The block-cost lab's chart: parameters, FLOPs and latency of each variant side by side.

Takes the flat row dicts of `lab.cost.cost_records` (visual/ never imports lab/). A panel
whose values span two decades or more gets a log axis, so a 120-parameter pointwise conv and
a 9,030-parameter regular conv both stay readable.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from visual.view import View

PANELS = (("parameters", "parameters", ",.0f"), ("flops", "FLOPs / image", ",.3s"),
          ("latency", "latency (ms)", ",.3f"))
LOG_SPAN = 100.0   # max / min at which an axis turns logarithmic


def _log(values: list[float]) -> bool:
    pos = [v for v in values if v is not None and v > 0]
    return len(pos) > 1 and max(pos) / min(pos) >= LOG_SPAN


def cost_figure(rows: list[dict], title: str = "") -> View:
    """Three bar panels (parameters, FLOPs, forward and forward+backward latency), one bar
    per variant; the regular conv's bar is drawn darker as the reference."""
    labels = [r["label"] for r in rows]
    fig = make_subplots(1, 3, horizontal_spacing=0.06,
                        subplot_titles=[p[1] for p in PANELS])
    ref = ["#1f2937" if r["label"] == "regular conv" else "#4f7cac" for r in rows]
    fig.add_trace(go.Bar(x=labels, y=[r["parameters"] for r in rows], marker_color=ref,
                         name="parameters", showlegend=False,
                         hovertemplate="%{x}: %{y:,} parameters<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(x=labels, y=[r["flops"] for r in rows], marker_color=ref, name="FLOPs",
                         showlegend=False, hovertemplate="%{x}: %{y:,.4s} FLOPs<extra></extra>"), 1, 2)
    latency = []
    for key, name, colour in (("forward_ms", "forward", "#4f7cac"),
                              ("forward_backward_ms", "forward + backward", "#e07b39")):
        ys = [r.get(key) for r in rows]
        latency += ys
        if any(v is not None for v in ys):
            fig.add_trace(go.Bar(x=labels, y=ys, name=name, marker_color=colour,
                                 hovertemplate=f"%{{x}}: {name} %{{y:.3f}} ms<extra></extra>"), 1, 3)
    logs = {"parameters": _log([r["parameters"] for r in rows]),
            "flops": _log([r["flops"] for r in rows]), "latency": _log(latency)}
    for col, (key, title_text, _) in enumerate(PANELS, 1):
        fig.update_yaxes(type="log" if logs[key] else "linear", row=1, col=col,
                         title_text=title_text + (" (log)" if logs[key] else ""))
    fig.update_xaxes(tickangle=-45)
    fig.update_layout(barmode="group", height=460, title=title or None,
                      margin=dict(l=10, r=10, t=60 if title else 40, b=10),
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    return View(fig, {"view": "block_cost", "labels": labels, "log_axes": logs,
                      "parameters": [r["parameters"] for r in rows],
                      "flops": [r["flops"] for r in rows],
                      "forward_ms": [r.get("forward_ms") for r in rows],
                      "forward_backward_ms": [r.get("forward_backward_ms") for r in rows]})
