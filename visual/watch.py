"""Watching a view form while a network trains: small, JSON-able snapshots of one view for one
image, and a figure that replays them epoch by epoch (a Plotly slider over frames).

`watch_snapshot(model, x, view)` computes one snapshot; the trainer's consumer calls it on a
copy of the current weights at each epoch end (lab/watch.py) and keeps the records in the run.
Views: Grad-CAM (Selvaraju et al. 2017) for the image's true class, a CBAM spatial map or an SE
excitation vector (the last such module), a feature grid (the first channels of a layer) and
Ghost redundancy (channel cosine similarity of a layer, Han et al. 2020 Fig. 1). Maps are
average-pooled down to at most MAX_SIDE per side so a record stays a few kB.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn as nn
import torch.nn.functional as F

from visual.attention import attention_weights
from visual.attributions import attribution_maps
from visual.ghost import cosine_similarity_matrix, live_channels, redundancy_score
from visual.hooks import run_captured
from visual.layers import candidates, resolve_layer
from visual.render import rounded
from visual.view import View

WATCH_VIEWS = ("gradcam", "cbam", "se", "features", "ghost")
WATCH_NAMES = {"gradcam": "Grad-CAM", "cbam": "CBAM spatial map", "se": "SE excitation",
               "features": "feature grid", "ghost": "Ghost redundancy"}
COLOUR_BAR_TITLES = {"gradcam": "attribution", "cbam": "attention", "se": "excitation",
                     "features": "activation<br>(each map)", "ghost": "cosine<br>similarity"}
MAX_SIDE = 64
MAX_CHANNELS = 16       # feature-grid channels kept per snapshot
MAX_SIM_CHANNELS = 64   # channels of the redundancy matrix
DIGITS = 4


def watch_views(model: nn.Module) -> list[str]:
    """The views this model offers (CBAM/SE only with such a module, Ghost only with Ghost
    modules)."""
    kinds = {kind for _, kind, _ in candidates(model)}
    return [v for v in WATCH_VIEWS if v in ("gradcam", "features") or v in kinds]


def _shrink(maps: torch.Tensor) -> torch.Tensor:
    """(K, h, w) -> at most MAX_SIDE per side, by adaptive average pooling."""
    h, w = maps.shape[-2:]
    if max(h, w) <= MAX_SIDE:
        return maps
    return F.adaptive_avg_pool2d(maps[None].float(), (min(h, MAX_SIDE), min(w, MAX_SIDE)))[0]


def watch_snapshot(model: nn.Module, x: torch.Tensor, view: str, layer: str | None = None,
                   target: int | None = None) -> dict:
    """One snapshot of `view` for image x (1, C, H, W): {"view", "layer", "kind", and "map"
    (h×w), "maps" (K×h×w) or "values" (C)}. The model is only read (eval mode, no BN update)."""
    if view not in WATCH_VIEWS:
        raise ValueError(f"view must be one of {', '.join(WATCH_VIEWS)}, got '{view}'")
    x = x[:1]
    if view == "gradcam":
        maps, targets, name = attribution_maps(model, x, "gradcam", target, layer)
        return {"view": view, "layer": name, "kind": "map", "target": int(targets[0]),
                "map": rounded(_shrink(maps[:1])[0].numpy(), DIGITS)}
    if view in ("cbam", "se"):
        name, w = attention_weights(model, x, layer, (view,))
        if view == "cbam":
            return {"view": view, "layer": name, "kind": "map",
                    "map": rounded(_shrink(w["spatial"][0])[0].numpy(), DIGITS)}
        return {"view": view, "layer": name, "kind": "values",
                "values": rounded(w["channel"][0].numpy(), DIGITS)}
    kinds = ("ghost",) if view == "ghost" and layer is None and any(
        k == "ghost" for _, k, _ in candidates(model)) else None
    choice = resolve_layer(model, layer, kinds, default="last")
    _, store = run_captured(model, x, [choice.name])
    fmap = store[choice.name]
    if fmap.dim() != 4:
        raise ValueError(f"layer '{choice.name}' gives {tuple(fmap.shape[1:])}, not a C×H×W map")
    if view == "features":
        return {"view": view, "layer": choice.name, "kind": "maps", "channels": int(fmap.shape[1]),
                "maps": rounded(_shrink(fmap[0, :MAX_CHANNELS].cpu()).numpy(), DIGITS)}
    f = fmap[:, :MAX_SIM_CHANNELS].cpu().numpy()
    sim = cosine_similarity_matrix(f)
    score = redundancy_score(sim, live_channels(f))
    return {"view": view, "layer": choice.name, "kind": "map",
            "score": None if score is None else round(score, 6), "map": rounded(sim, DIGITS)}


def snapshot_array(s: dict) -> np.ndarray:
    """A snapshot's numbers as one 2-D array (maps tiled side by side, a vector as one row)."""
    if s["kind"] == "map":
        return np.asarray(s["map"], dtype=np.float32)
    if s["kind"] == "values":
        return np.asarray([s["values"]], dtype=np.float32)
    maps = np.asarray(s["maps"], dtype=np.float32)
    k, h, w = maps.shape
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    maps = np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0)  # each map its own scale
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, dtype=np.float32)
    for i in range(k):
        r, c = divmod(i, cols)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = maps[i]
    return out


def watch_figure(snapshots: list[dict], title: str = "", image=None) -> View:
    """The snapshots as a heatmap with a slider (and play button) stepping through the epochs;
    the last snapshot is shown first. `image` (uint8 C×H×W), when given, is drawn on the left."""
    if not snapshots:
        fig = go.Figure()
        fig.update_layout(height=320, title="no snapshots yet",
                          xaxis_visible=False, yaxis_visible=False)
        return View(fig, {"view": "watch", "frames": 0})
    arrays = [snapshot_array(s) for s in snapshots]
    labels = [f"epoch {s.get('epoch', i + 1):g}" for i, s in enumerate(snapshots)]
    first = snapshots[0]
    sym = first["view"] == "ghost"
    zmin, zmax = (-1, 1) if sym else (float(np.nanmin([np.nanmin(a) for a in arrays])),
                                       float(np.nanmax([np.nanmax(a) for a in arrays])))
    colours = "RdBu_r" if sym else "Viridis"

    def heat(a: np.ndarray) -> go.Heatmap:
        return go.Heatmap(z=a, zmin=zmin, zmax=zmax, colorscale=colours,
                          colorbar=dict(title=COLOUR_BAR_TITLES.get(first["view"], "")),
                          hovertemplate="%{z:.3f}<extra></extra>")
    last = len(arrays) - 1
    name = WATCH_NAMES.get(first["view"], first["view"])
    if image is not None:
        from plotly.subplots import make_subplots
        from visual.render import image_trace, to_rgb
        # a map beside its image at the same size; tiled maps (a feature grid) get more room
        widths = [0.45, 0.55] if first["kind"] == "map" else [0.3, 0.7]
        fig = make_subplots(1, 2, column_widths=widths, horizontal_spacing=0.05,
                            subplot_titles=("input", f"{name} · {first.get('layer') or ''}"))
        fig.add_trace(image_trace(to_rgb(image)), 1, 1)
        fig.add_trace(heat(arrays[last]), 1, 2)
        fig.frames = [go.Frame(data=[heat(a)], traces=[1], name=lab) for a, lab in zip(arrays, labels)]
        fig.update_xaxes(showticklabels=False, showgrid=False, row=1, col=1)
        fig.update_yaxes(showticklabels=False, showgrid=False, row=1, col=1)
    else:
        fig = go.Figure(data=[heat(arrays[last])],
                        frames=[go.Frame(data=[heat(a)], name=lab) for a, lab in zip(arrays, labels)])
    steps = [dict(method="animate", label=lab,
                  args=[[lab], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                    transition=dict(duration=0))]) for lab in labels]
    fig.update_layout(
        title=title or (None if image is not None else f"{name} · {first.get('layer') or ''}"),
        height=420, plot_bgcolor="white",   # no grey bands beside a square map kept square
        margin=dict(l=10, r=10, t=50, b=10),
        sliders=[dict(active=last, steps=steps, currentvalue=dict(prefix=""), pad=dict(t=30))],
        updatemenus=[dict(type="buttons", showactive=False, x=0, y=-0.02, xanchor="right",
                          buttons=[dict(label="▶", method="animate",
                                        args=[None, dict(frame=dict(duration=600, redraw=True),
                                                         fromcurrent=False)])])])
    heat_axes = dict(row=1, col=2) if image is not None else {}
    fig.update_yaxes(autorange="reversed", scaleanchor="x2" if image is not None else "x",
                     showticklabels=False, showgrid=False, **heat_axes)
    fig.update_xaxes(showticklabels=False, showgrid=False, **heat_axes)
    return View(fig, {"view": "watch", "frames": len(arrays), "labels": labels,
                      "layer": first.get("layer")})
