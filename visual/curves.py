"""Training curves from trainer event records: loss | accuracy by epoch, runs overlaid.

Step events carry a fractional `epoch` (step / steps per epoch) and are drawn as a thin
line; epoch events (1-based `epoch`) give train/test loss and accuracy, and so does the
"eval" event of a run stopped inside an epoch (its final evaluation, at a fractional epoch,
drawn as one more point of those series). Each run has its own
colour and its own legend group (titled with the run's name); within a run the series differ
by line and marker — train: solid line, filled circles; test: dashed line, open diamonds —
so train and test stay apart even when they coincide after one epoch.

Everything is SVG (`go.Scatter`): a WebGL trace makes a new WebGL context at each redraw of
a live figure and browsers keep only ~16 ("Too many active WebGL contexts"). The step series
is thinned to at most MAX_STEP_POINTS points, which keeps a redraw's cost bounded however
long the run.
"""
from __future__ import annotations

import plotly.colors as pc
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from visual.view import View

MAX_STEP_POINTS = 300  # per run; longer step records are thinned evenly
# (event key, subplot column, line dash, marker symbol, legend label)
SERIES = (("train_loss", 1, "solid", "circle", "train"), ("test_loss", 1, "dash", "diamond-open", "test"),
          ("train_acc", 2, "solid", "circle", "train"), ("test_acc", 2, "dash", "diamond-open", "test"))
COLOURS = pc.qualitative.D3


def _thin(points: list, limit: int) -> list:
    if len(points) <= limit:
        return points
    stride = len(points) / limit
    picked = [points[int(i * stride)] for i in range(limit)]
    return picked if picked[-1] is points[-1] else picked[:-1] + [points[-1]]


def _series(events: list[dict]) -> dict:
    steps = [(e["epoch"], e["loss"]) for e in events
             if e.get("type") == "step" and e.get("loss") is not None and e.get("epoch") is not None]
    epochs = [e for e in events if e.get("type") in ("epoch", "eval")]
    out = {"step_epoch": [], "step_loss": []}
    for x, y in _thin(steps, MAX_STEP_POINTS):
        out["step_epoch"].append(round(float(x), 4))
        out["step_loss"].append(round(float(y), 5))
    out["epoch"] = [e["epoch"] for e in epochs]
    for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
        out[key] = [e.get(key) for e in epochs]
    return out


def curves_figure(runs: dict[str, list[dict]], log_loss: bool = False) -> View:
    """Loss (left) and accuracy (right) by epoch for every run in `runs` (name -> events).
    With no runs (or before the first epoch) the axes are drawn empty; `log_loss` puts the
    loss on a log axis (an epoch-1 test loss of 100 no longer flattens the rest)."""
    fig = make_subplots(1, 2, horizontal_spacing=0.1, subplot_titles=("loss", "accuracy"))
    data = {"view": "curves", "runs": {}, "log_loss": bool(log_loss)}
    last_epoch = 1.0
    for i, (name, events) in enumerate(runs.items()):
        s = _series(events)
        data["runs"][name] = s
        c = COLOURS[i % len(COLOURS)]
        group = dict(legendgroup=name, legendgrouptitle_text=name, line_color=c, marker_color=c)
        last_epoch = max([last_epoch] + s["epoch"] + s["step_epoch"][-1:])
        if s["step_loss"]:
            fig.add_trace(go.Scatter(x=s["step_epoch"], y=s["step_loss"], mode="lines",
                                     name="loss per step", opacity=0.4, line_width=1,
                                     hovertemplate="epoch %{x:.2f}: loss %{y:.4f}<extra>" + name
                                     + "</extra>", **group), 1, 1)
        for key, col, dash, symbol, label in SERIES:
            if any(v is not None for v in s[key]):
                shown = col == 1 or not any(v is not None for v in s[key.replace("acc", "loss")])
                fig.add_trace(go.Scatter(
                    x=s["epoch"], y=s[key], mode="lines+markers", name=label, line_dash=dash,
                    marker=dict(symbol=symbol, size=9 if "open" in symbol else 7, line_width=2),
                    showlegend=shown,
                    hovertemplate=f"epoch %{{x}}: {label} {key.split('_')[1]} %{{y:.4f}}"
                                  f"<extra>{name}</extra>", **group), 1, col)
    fig.update_xaxes(title_text="epoch", range=[0, last_epoch * 1.02], rangemode="tozero")
    fig.update_yaxes(type="log" if log_loss else "linear", title_text="loss (log)" if log_loss else "loss",
                     row=1, col=1, **({} if log_loss else {"rangemode": "tozero"}))
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title_text="accuracy", row=1, col=2)
    if not runs:
        for col in (1, 2):       # an empty trace per panel, so both draw their axes at once
            fig.add_trace(go.Scatter(x=[], y=[], showlegend=False, hoverinfo="skip"), 1, col)
        for axis, text in (("x", "loss per step, once training starts"),
                           ("x2", "train and test accuracy, at each epoch's end")):
            fig.add_annotation(text=text, showarrow=False, xref=f"{axis} domain",
                               yref=f"{axis.replace('x', 'y')} domain", x=0.5, y=0.5,
                               font_color="grey")
    # the top margin keeps the subplot titles clear of Plotly's toolbar; uirevision keeps a
    # zoom or hidden legend entries across the live redraws
    fig.update_layout(height=400, margin=dict(l=10, r=10, t=60, b=10), uirevision="curves",
                      legend=dict(groupclick="togglegroup", tracegroupgap=8, font_size=11))
    return View(fig, data)
