"""Training curves from trainer event records: loss | accuracy by epoch, runs overlaid.

Step events carry a fractional `epoch` (step / steps per epoch) and are drawn as a thin
line; epoch events (1-based `epoch`) give train/test loss and accuracy as markers+lines
(train solid, test dashed), one colour per run.
"""
from __future__ import annotations

import plotly.colors as pc
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from visual.view import View

MAX_STEP_POINTS = 2000  # per run; longer step records are thinned evenly
# (event key, subplot column, line dash, legend label)
SERIES = (("train_loss", 1, None, "train loss"), ("test_loss", 1, "dash", "test loss"),
          ("train_acc", 2, None, "train acc"), ("test_acc", 2, "dash", "test acc"))


def _thin(points: list, limit: int) -> list:
    if len(points) <= limit:
        return points
    stride = len(points) / limit
    picked = [points[int(i * stride)] for i in range(limit)]
    return picked if picked[-1] is points[-1] else picked + [points[-1]]


def _series(events: list[dict]) -> dict:
    steps = [(e["epoch"], e["loss"]) for e in events
             if e.get("type") == "step" and e.get("loss") is not None and e.get("epoch") is not None]
    epochs = [e for e in events if e.get("type") == "epoch"]
    out = {"step_epoch": [], "step_loss": []}
    for x, y in _thin(steps, MAX_STEP_POINTS):
        out["step_epoch"].append(float(x))
        out["step_loss"].append(float(y))
    out["epoch"] = [e["epoch"] for e in epochs]
    for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
        out[key] = [e.get(key) for e in epochs]
    return out


def curves_figure(runs: dict[str, list[dict]]) -> View:
    """Loss (left) and accuracy (right) by epoch for every run in `runs` (name -> events)."""
    fig = make_subplots(1, 2, horizontal_spacing=0.08, subplot_titles=("loss", "accuracy"))
    colours = pc.qualitative.Plotly
    data = {"view": "curves", "runs": {}}
    for i, (name, events) in enumerate(runs.items()):
        s = _series(events)
        data["runs"][name] = s
        c = colours[i % len(colours)]
        group = dict(legendgroup=name, line_color=c)
        if s["step_loss"]:
            fig.add_trace(go.Scattergl(x=s["step_epoch"], y=s["step_loss"], mode="lines",
                                       name=f"{name} step loss", opacity=0.45, line_width=1,
                                       hovertemplate="epoch %{x:.2f}: loss %{y:.4f}<extra></extra>",
                                       **group), 1, 1)
        for key, col, dash, label in SERIES:
            if any(v is not None for v in s[key]):
                fig.add_trace(go.Scatter(
                    x=s["epoch"], y=s[key], mode="lines+markers", name=f"{name} {label}", line_dash=dash,
                    hovertemplate=f"epoch %{{x}}: {label} %{{y:.4f}}<extra></extra>", **group), 1, col)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10), legend=dict(groupclick="toggleitem"))
    return View(fig, data)
