"""What SE and CBAM modules applied: excitation vectors, class × channel means, CBAM maps.

The modules record their weights only while `keep_weights` is set (see
blocks/library/attention.py); `attention_weights` sets it for the call and restores it.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn as nn
from plotly.subplots import make_subplots

from blocks.library.attention import CBAM
from visual.hooks import inspection_mode, keeping_weights, model_device
from visual.layers import get_module, readable_name, resolve_layer
from visual.render import (as_numpy, colorbar_beside, heat_overlay, image_trace, rounded,
                           style_image_axes, to_rgb, upsample)
from visual.view import View


def attention_weights(model: nn.Module, x: torch.Tensor, layer: str | None = None,
                      kinds: tuple[str, ...] = ("se", "cbam"), batch: int = 256
                      ) -> tuple[str, dict[str, torch.Tensor]]:
    """(module name, {"channel": (N, C)[, "spatial": (N, 1, h, w)]}) of one SE/CBAM module
    (default: the last one) over the images of `x`, in eval-mode batches without grad."""
    name = resolve_layer(model, layer, kinds).name
    module = get_module(model, name)
    device = model_device(model)
    channel, spatial = [], []
    with inspection_mode(model), torch.no_grad(), keeping_weights([module]):
        for start in range(0, len(x), batch):
            model(x[start:start + batch].to(device))
            if isinstance(module, CBAM):
                channel.append(module.last_channel.cpu())
                spatial.append(module.last_spatial.cpu())
            else:
                channel.append(module.last_weights.cpu())
    out = {"channel": torch.cat(channel)}
    if spatial:
        out["spatial"] = torch.cat(spatial)
    return name, out


def _bars(values: np.ndarray, name: str) -> go.Bar:
    return go.Bar(x=np.arange(len(values)), y=values.astype(np.float32), name=name,
                  hovertemplate="channel %{x}: %{y:.3f}<extra></extra>")


def se_view(model: nn.Module, x: torch.Tensor, layer: str | None = None) -> View:
    """The excitation vector s (one gate in [0, 1] per channel) an SE module applied to image x."""
    name, w = attention_weights(model, x[:1], layer, ("se",))
    s = as_numpy(w["channel"][0])
    fig = go.Figure(_bars(s, "excitation"))
    fig.update_layout(title=f"{readable_name(model, name)}: SE excitation, {len(s)} channels", xaxis_title="channel",
                      yaxis_title="gate", yaxis_range=[0, 1], height=340, margin=dict(l=10, r=10, t=40, b=10))
    return View(fig, {"view": "se", "layer": name, "excitation": rounded(s, 6),
                      "mean": round(float(s.mean()), 6)})


def se_class_view(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str | None = None,
                  classes: list[str] | None = None, batch: int = 256) -> View:
    """Mean excitation per class × channel over the images `x` with labels `y`: row k is the
    mean of the excitation vectors of the images labelled k (None where a class has none)."""
    name, w = attention_weights(model, x, layer, ("se",), batch)
    s = as_numpy(w["channel"]).astype(np.float64)
    labels = as_numpy(y).astype(np.int64)
    k = len(classes) if classes else int(max(labels.max(initial=-1) + 1,
                                             getattr(model, "spec", {}).get("classes", 0)))
    classes = list(classes) if classes else [str(i) for i in range(k)]
    if len(labels) != len(s) or (len(labels) and (labels.min() < 0 or labels.max() >= k)):
        raise ValueError(f"labels must be {len(s)} integers in 0..{k - 1}")
    counts = np.bincount(labels, minlength=k)[:k]
    sums = np.zeros((k, s.shape[1]))
    np.add.at(sums, labels, s)
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], np.nan)
    fig = go.Figure(go.Heatmap(z=means.astype(np.float32), y=classes, zmin=0, zmax=1, colorscale="Viridis",
                               colorbar=dict(title=dict(text="mean gate", side="right")),
                               hovertemplate="class %{y}, channel %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"{readable_name(model, name)}: mean SE excitation per class "
                            f"({len(labels)} images)",
                      xaxis_title="channel", yaxis_autorange="reversed", height=max(320, 60 + 24 * k),
                      margin=dict(l=10, r=10, t=40, b=10))
    spread = np.nanstd(means, axis=0) if np.isfinite(means).any() else np.zeros(s.shape[1])
    return View(fig, {"view": "se_classes", "layer": name, "classes": classes, "counts": counts.tolist(),
                      "matrix": rounded(means, 6), "class_spread": rounded(spread, 6)})


FLAT_SPAN = 0.1   # a spatial map whose values span less than this is called nearly flat


def cbam_view(model: nn.Module, x: torch.Tensor, image: torch.Tensor | np.ndarray,
              layer: str | None = None, fixed_range: bool = True) -> View:
    """A CBAM module's channel weights (bars) and its spatial map, upsampled bilinearly to the
    input and overlaid on it (default: the last CBAM). The map's colours span the sigmoid's
    whole 0–1 range (`fixed_range=False`: the map's own min..max, which makes a nearly flat
    map look contrasted); the subplot title gives the map's range and says when it is
    nearly flat."""
    name, w = attention_weights(model, x[:1], layer, ("cbam",))
    ch = as_numpy(w["channel"][0])
    spatial = w["spatial"]
    size = tuple(x.shape[-2:])
    up = as_numpy(upsample(spatial, size)[0])
    sp = as_numpy(spatial[0, 0])
    lo, hi = float(sp.min()), float(sp.max())
    flat = hi - lo < FLAT_SPAN
    span = f"map {lo:.3f}–{hi:.3f}" + (" (nearly flat)" if flat else "")
    scale = "colours 0–1" if fixed_range else "colours stretched to the map's range"
    fig = make_subplots(1, 2, column_widths=[0.55, 0.45], horizontal_spacing=0.08,
                        subplot_titles=(f"{readable_name(model, name)}: channel attention",
                                        f"spatial attention: {span}; {scale}"))
    fig.add_trace(_bars(ch, "channel"), 1, 1)
    fig.add_trace(image_trace(to_rgb(image)), 1, 2)
    fig.add_trace(heat_overlay(up, "spatial", colorbar_x=colorbar_beside(fig, 1, 2),
                               colorbar_title="attention", zmin=0.0 if fixed_range else None,
                               zmax=1.0 if fixed_range else None), 1, 2)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    style_image_axes(fig, 1, 2)
    fig.update_yaxes(title_text="gate", row=1, col=1)
    fig.update_xaxes(title_text="channel", row=1, col=1)
    fig.update_layout(height=360, showlegend=False, margin=dict(l=10, r=10, t=40, b=10))
    return View(fig, {"view": "cbam", "layer": name, "nearly_flat": flat, "fixed_range": fixed_range, "channel": rounded(ch, 6),
                      "spatial": rounded(sp, 6), "spatial_shape": list(sp.shape),
                      "spatial_upsampled_shape": list(up.shape),
                      "spatial_min": round(float(sp.min()), 6), "spatial_max": round(float(sp.max()), 6)})
