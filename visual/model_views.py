"""Whole-model views: parameters and FLOPs per layer, the stack as a flow chart, and the
confusion matrix with per-class accuracy on given test tensors."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn as nn
from plotly.subplots import make_subplots

from blocks.summary import human, summarize
from visual.attributions import predict
from visual.render import as_numpy, rounded
from visual.view import View


def _spec_of(model_or_spec: nn.Module | dict) -> dict:
    spec = model_or_spec if isinstance(model_or_spec, dict) else getattr(model_or_spec, "spec", None)
    if spec is None:
        raise ValueError("this view needs a ConvScope network (built from a spec) or a spec")
    return spec


def params_flops_view(model_or_spec: nn.Module | dict) -> View:
    """Parameters and FLOPs (forward, one image; a multiply-add = 2) per spec layer, as bars."""
    s = summarize(_spec_of(model_or_spec))
    labels = [f"{r.index}: {r.block}" for r in s.layers]
    fig = make_subplots(1, 2, horizontal_spacing=0.12,
                        subplot_titles=(f"parameters (total {human(s.params)})",
                                        f"FLOPs per image (total {human(s.flops)})"))
    fig.add_trace(go.Bar(y=labels, x=[r.params for r in s.layers], orientation="h", name="params",
                         hovertemplate="%{y}: %{x:,} parameters<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(y=labels, x=[r.flops for r in s.layers], orientation="h", name="FLOPs",
                         hovertemplate="%{y}: %{x:,} FLOPs<extra></extra>"), 1, 2)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=max(300, 80 + 22 * len(labels)), showlegend=False,
                      margin=dict(l=10, r=10, t=40, b=10))
    return View(fig, {"view": "params_flops", "params": s.params, "flops": s.flops,
                      "layers": [{"index": r.index, "block": r.block, "name": r.name,
                                  "out_shape": list(r.out_shape), "params": r.params, "flops": r.flops}
                                 for r in s.layers]})


def stack_diagram(model_or_spec: nn.Module | dict) -> View:
    """The spec's stack as a vertical flow chart: one box per layer with its output shape."""
    s = summarize(_spec_of(model_or_spec))
    rows = [("input", "×".join(map(str, s.input)), 0)] + \
           [(f"{r.index}: {r.block}" + (f" ×{rep}" if (rep := _repeat(model_or_spec, r.index)) > 1 else ""),
             "×".join(map(str, r.out_shape)), r.params) for r in s.layers]
    fig = go.Figure()
    h, gap = 1.0, 0.5
    for i, (name, shape, params) in enumerate(rows):
        y0 = -i * (h + gap)
        colour = "#e8f0fe" if i else "#fff4e0"
        fig.add_shape(type="rect", x0=0, x1=4, y0=y0 - h, y1=y0, line=dict(color="#4a6fa5"),
                      fillcolor=colour, layer="below")
        fig.add_annotation(x=2, y=y0 - h / 2, text=f"<b>{name}</b><br>{shape}"
                           + (f" · {human(params)} params" if params else ""), showarrow=False)
        if i:
            fig.add_annotation(x=2, y=y0, ax=2, ay=y0 + gap, xref="x", yref="y", axref="x", ayref="y",
                               text="", showarrow=True, arrowhead=2, arrowsize=1, arrowwidth=1.5)
    total = len(rows) * (h + gap)
    fig.add_trace(go.Scatter(x=[2] * len(rows), y=[-i * (h + gap) - h / 2 for i in range(len(rows))],
                             mode="markers", marker=dict(opacity=0), hoverinfo="skip", showlegend=False))
    fig.update_xaxes(visible=False, range=[-0.5, 4.5])
    fig.update_yaxes(visible=False, range=[-total, 0.5])
    fig.update_layout(height=min(4000, 60 + 58 * len(rows)), width=420, plot_bgcolor="white",
                      margin=dict(l=10, r=10, t=30, b=10), title=s.name)
    return View(fig, {"view": "stack", "name": s.name,
                      "boxes": [{"label": n, "shape": sh, "params": p} for n, sh, p in rows]})


def _repeat(model_or_spec, index: int) -> int:
    layers = _spec_of(model_or_spec).get("layers", [])
    return int(layers[index].get("repeat", 1)) if index < len(layers) else 1


def confusion(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int,
              batch: int = 256) -> np.ndarray:
    """(classes, classes) counts: row = true class, column = predicted (eval, no grad, batched)."""
    pred = predict(model, x, batch).argmax(1).numpy()
    true = as_numpy(y).astype(np.int64)
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (true, pred), 1)
    return m


def confusion_view(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   classes: list[str] | None = None, batch: int = 256) -> View:
    """Confusion matrix heatmap and per-class accuracy (recall) bars on test tensors x, y."""
    k = len(classes) if classes else int(getattr(model, "spec", {}).get("classes", int(y.max()) + 1))
    names = list(classes) if classes else [str(i) for i in range(k)]
    m = confusion(model, x, y, k, batch)
    support = m.sum(1)
    per_class = np.where(support > 0, np.diag(m) / np.maximum(support, 1), np.nan)
    acc = float(np.trace(m) / max(1, m.sum()))
    fig = make_subplots(1, 2, column_widths=[0.6, 0.4], horizontal_spacing=0.12,
                        subplot_titles=(f"confusion (accuracy {acc:.1%}, {int(m.sum())} images)",
                                        "per-class accuracy"))
    fig.add_trace(go.Heatmap(z=m, x=names, y=names, colorscale="Blues", showscale=False,
                             text=m, texttemplate="%{text}" if k <= 20 else None,
                             hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"), 1, 1)
    fig.update_yaxes(autorange="reversed", title_text="true", row=1, col=1)
    fig.update_xaxes(title_text="predicted", row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=per_class, hovertemplate="%{x}: %{y:.1%}<extra></extra>"), 1, 2)
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    fig.update_layout(height=max(360, 120 + 22 * k), showlegend=False, margin=dict(l=10, r=10, t=40, b=10))
    return View(fig, {"view": "confusion", "classes": names, "matrix": m.tolist(), "accuracy": round(acc, 6),
                      "per_class_accuracy": rounded(per_class, 6), "support": support.tolist()})
