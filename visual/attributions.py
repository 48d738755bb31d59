"""Captum attributions for a chosen class, as one non-negative map per image.

* gradcam   — LayerGradCam on any conv-like layer (relu_attributions=True), upsampled to the
              input with LayerAttribution.interpolate (bilinear). Default layer: the last
              spec-level layer with a feature map.
* ig        — Integrated Gradients, zero baseline in normalised space, n_steps (default 32);
              map = |attribution| summed over channels.
* saliency  — |∂ score / ∂ input| (Simonyan et al. 2014), max over channels.
* occlusion — drop in the class score when a square window (≈ 1/8 of the side, stride half
              of it) is set to the zero baseline, mean over channels, clamped at 0
              (the map shows evidence *for* the class).

The model runs in eval mode; Captum takes gradients with respect to inputs or a layer's
output only, so parameters' .grad and BatchNorm statistics are left as they were.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn as nn
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency
from plotly.subplots import make_subplots

from visual.hooks import inspection_mode, model_device
from visual.layers import get_module, readable_name, resolve_layer
from visual.render import (as_numpy, colorbar_beside, heat_overlay, image_trace, rounded,
                           style_image_axes, to_rgb)
from visual.view import View

METHODS = ("gradcam", "ig", "saliency", "occlusion")
TITLES = {"gradcam": "Grad-CAM", "ig": "Integrated Gradients", "saliency": "Saliency",
          "occlusion": "Occlusion"}


def predict(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Softmax probabilities (N, classes) in eval mode without grad, on the CPU."""
    device = model_device(model)
    with inspection_mode(model), torch.no_grad():
        return torch.cat([model(x[i:i + batch].to(device)).float().softmax(1).cpu()
                          for i in range(0, len(x), batch)])


def top_probabilities(probs: torch.Tensor, k: int = 5) -> tuple[list[int], list[float]]:
    """The k most probable classes of one probability vector, most probable first."""
    p, i = probs.float().topk(min(k, probs.numel()))
    return i.tolist(), p.tolist()


def _targets(target: int | torch.Tensor | None, probs: torch.Tensor) -> torch.Tensor:
    n, k = probs.shape
    if target is None:
        return probs.argmax(1)
    t = torch.as_tensor(target, dtype=torch.long).flatten()
    t = t.expand(n) if t.numel() == 1 else t
    if t.numel() != n or t.min() < 0 or t.max() >= k:
        raise ValueError(f"target must be a class from 0 to {k - 1} (or one per image)")
    return t


def occlusion_window(size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, stride): a window ≈ 1/8 of each side (at least 1), stride half of it."""
    win = tuple(max(1, s // 8) for s in size)
    return win, tuple(max(1, w // 2) for w in win)


def attribution_maps(model: nn.Module, x: torch.Tensor, method: str,
                     target: int | torch.Tensor | None = None, layer: str | None = None,
                     n_steps: int = 32, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """(maps (N, H, W) ≥ 0 on the CPU, targets (N,), Grad-CAM layer name or None) for images x."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got '{method}'")
    if not 1 <= n_steps <= 1024:
        raise ValueError(f"n_steps must be from 1 to 1024, got {n_steps}")
    device = model_device(model)
    targets = _targets(target, predict(model, x))
    layer_name = resolve_layer(model, layer).name if method == "gradcam" else None
    size = tuple(x.shape[-2:])
    out = []
    with inspection_mode(model):
        for i in range(0, len(x), batch):
            # a leaf that requires grad: Captum would otherwise set it and warn
            xb = x[i:i + batch].to(device).float().detach().requires_grad_(True)
            tb = targets[i:i + batch].to(device)
            out.append(_attribute(model, xb, tb, method, layer_name, n_steps, size).detach().cpu())
    return torch.cat(out), targets, layer_name


def _attribute(model, xb, tb, method, layer_name, n_steps, size) -> torch.Tensor:
    if method == "gradcam":
        a = LayerGradCam(model, get_module(model, layer_name)).attribute(xb, target=tb,
                                                                        relu_attributions=True)
        return LayerAttribution.interpolate(a, size, "bilinear")[:, 0].clamp_min(0)
    if method == "ig":
        a = IntegratedGradients(model).attribute(xb, baselines=torch.zeros_like(xb), target=tb,
                                                 n_steps=n_steps, internal_batch_size=_ig_batch(xb))
        return a.abs().sum(1)
    if method == "saliency":
        return Saliency(model).attribute(xb, target=tb, abs=True).amax(1)
    win, stride = occlusion_window(size)
    c = xb.shape[1]
    a = Occlusion(model).attribute(xb, sliding_window_shapes=(c, *win), strides=(c, *stride),
                                   baselines=0.0, target=tb, perturbations_per_eval=64)
    return a.mean(1).clamp_min(0)


def _ig_batch(xb: torch.Tensor) -> int:
    """Images per IG forward: 256 at 3×32×32, fewer for larger inputs (bounded memory)."""
    return max(1, min(1024, (256 * 3 * 32 * 32) // xb[0].numel()))


def attribution_view(model: nn.Module, x: torch.Tensor, image: torch.Tensor | np.ndarray,
                     method: str = "gradcam", target: int | None = None, layer: str | None = None,
                     n_steps: int = 32, classes: list[str] | None = None,
                     show_top5: bool = True) -> View:
    """One image's attribution map for `target` (default: the predicted class) overlaid on the
    input, beside the top-5 class probabilities (left out with `show_top5=False`, where the
    page shows them already; they stay in `data`)."""
    x = x[:1]
    probs = predict(model, x)[0]
    maps, targets, layer_name = attribution_maps(model, x, method, target, layer, n_steps)
    amap = as_numpy(maps[0])
    t = int(targets[0])
    names = list(classes) if classes else [str(i) for i in range(probs.numel())]
    idx, p = top_probabilities(probs)
    where = f" @ {readable_name(model, layer_name)}" if layer_name else ""
    title = TITLES[method] + where + f" for '{names[t]}'"
    if show_top5:
        fig = make_subplots(1, 3, column_widths=[0.3, 0.3, 0.4], horizontal_spacing=0.1,
                            subplot_titles=("input", title, "top-5 probabilities"))
    else:
        fig = make_subplots(1, 2, horizontal_spacing=0.06, subplot_titles=("input", title))
    fig.add_trace(image_trace(to_rgb(image)), 1, 1)
    fig.add_trace(image_trace(to_rgb(image)), 1, 2)
    fig.add_trace(heat_overlay(amap, TITLES[method], zmin=0, zmax=float(amap.max()) or 1.0,
                               colorbar_x=colorbar_beside(fig, 1, 2), colorbar_title="attribution"),
                  1, 2)
    if show_top5:
        _top5_bars(fig, p, idx, names, t)
    style_image_axes(fig, 1, 1)
    style_image_axes(fig, 1, 2)
    fig.update_layout(height=340, showlegend=False, margin=dict(l=10, r=90 if show_top5 else 40, t=40, b=10))
    data = _attribution_data(method, layer_name, t, names, probs, idx, p, amap)
    if method == "ig":
        data["n_steps"] = n_steps
    if method == "occlusion":
        data["window"], data["stride"] = map(list, occlusion_window(tuple(x.shape[-2:])))
    return View(fig, data)


def _top5_bars(fig, p, idx, names, t) -> None:
    fig.add_trace(go.Bar(x=p[::-1], y=[names[i] for i in idx][::-1], orientation="h",
                         marker_color=["#d62728" if i == t else "#1f77b4" for i in idx][::-1],
                         hovertemplate="%{y}: %{x:.3f}<extra></extra>"), 1, 3)
    fig.update_xaxes(range=[0, 1], row=1, col=3)
    fig.update_yaxes(side="right", row=1, col=3)  # class names clear of the heatmap's colour bar


def _attribution_data(method, layer_name, t, names, probs, idx, p, amap) -> dict:
    return {"view": method, "method": method, "layer": layer_name, "target": t, "target_name": names[t],
            "predicted": int(probs.argmax()), "top5": {"classes": idx, "names": [names[i] for i in idx],
                                                        "probabilities": rounded(p, 6)},
            "map_shape": list(amap.shape), "map_max": round(float(amap.max()), 8),
            "map_sum": round(float(amap.sum()), 8)}
