"""Effective receptive field (Luo, Li, Urtasun & Zemel 2016, "Understanding the Effective
Receptive Field in Deep Convolutional Neural Networks"): the gradient of one centre output
unit of a layer with respect to the input, |∂y/∂x| summed over input channels and averaged
over images (random inputs for an untrained network), drawn as a heatmap with the theoretical
receptive field's square (blocks.receptive) on top. The gradient concentrates in the middle
of the square — the ERF is much smaller than the theoretical field and grows with depth like
√n — and dilated stacks show their holes (the gridding effect, Yu & Koltun 2016; Wang et al.
2018 "Understanding Convolution for Semantic Segmentation": dilations 2-2-2 leave 120 of 169
pixels unseen, 1-2-3 see them all).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn as nn
from plotly.subplots import make_subplots

from blocks import build
from blocks.receptive import layer_fields
from visual.hooks import inspection_mode, model_device
from visual.view import View

MAX_IMAGES = 64


def erf_map(model: nn.Module, layer: int, inputs: torch.Tensor | None = None, n: int = 8,
            seed: int = 0) -> np.ndarray:
    """Mean over images of |∂(centre unit of spec layer `layer`, all channels summed)/∂x|,
    summed over input channels: an H×W array. `inputs` (N, C, H, W) normalised images, or
    None for `n` standard-normal ones (seeded)."""
    layers = getattr(model, "layers", None)
    if layers is None or not hasattr(model, "input_shape"):
        raise ValueError("the effective receptive field needs a ConvScope network (built from a spec)")
    if not 0 <= layer < len(layers):
        raise ValueError(f"there is no layer {layer}; layers are numbered 0 to {len(layers) - 1}")
    device = model_device(model)
    if inputs is None:
        g = torch.Generator().manual_seed(seed)
        inputs = torch.randn((max(1, min(n, MAX_IMAGES)), *model.input_shape), generator=g)
    x = inputs[:MAX_IMAGES].to(device=device, dtype=torch.float32).clone().requires_grad_(True)
    with inspection_mode(model), torch.enable_grad():
        y = x
        for block in list(layers)[:layer + 1]:
            y = block(y)
        if y.dim() == 4:
            unit = y[:, :, (y.shape[2] - 1) // 2, (y.shape[3] - 1) // 2].sum()
        else:
            unit = y.sum()
        (grad,) = torch.autograd.grad(unit, x)
    return grad.abs().sum(1).mean(0).detach().cpu().double().numpy()


def _square(layer_field, out_shape, h: int, w: int) -> tuple[float, float, float, float] | None:
    """The theoretical field of the centre unit, clipped to the image: (x0, x1, y0, y1)."""
    if layer_field.receptive_field is None or len(out_shape) != 3:
        return None
    (r0, r1) = layer_field.field.span((out_shape[1] - 1) // 2)
    (c0, c1) = layer_field.field.span((out_shape[2] - 1) // 2)
    return max(0, c0) - 0.5, min(w - 1, c1) + 0.5, max(0, r0) - 0.5, min(h - 1, r1) + 0.5


def _panel(fig: go.Figure, heat: np.ndarray, square, col: int, show_scale: bool) -> None:
    fig.add_trace(go.Heatmap(z=heat, colorscale="Viridis", showscale=show_scale,
                             hovertemplate="x %{x}, y %{y}: %{z:.3g}<extra></extra>"), 1, col)
    if square is not None:
        x0, x1, y0, y1 = square
        fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, line=dict(color="#ff4040", width=2),
                      row=1, col=col)
    fig.update_yaxes(autorange="reversed", scaleanchor=f"x{'' if col == 1 else col}", row=1, col=col)
    fig.update_xaxes(constrain="domain", row=1, col=col)


def erf_view(model: nn.Module, layer: int, inputs: torch.Tensor | None = None, n: int = 8,
             seed: int = 0) -> View:
    """The effective receptive field of spec layer `layer`'s centre unit with its theoretical
    field (red square); `data` holds the map's figures: reachable pixels (non-zero gradient),
    the share of the gradient inside the square, and the field's size and jump."""
    heat = erf_map(model, layer, inputs, n, seed)
    h, w = heat.shape
    rf = layer_fields(model)[layer]
    info = model.layer_info[layer]
    square = _square(rf, info.out_shape, h, w)
    total = float(heat.sum()) or 1.0
    inside = None
    if square is not None:
        x0, x1, y0, y1 = (int(v + 0.5) for v in square)
        inside = float(heat[y0:y1, x0:x1].sum()) / total
    title = f"layer {layer} ({info.block}): effective receptive field, RF {rf.text()}"
    fig = make_subplots(1, 1, subplot_titles=(title,))
    _panel(fig, heat, square, 1, True)
    fig.update_layout(height=460, margin=dict(l=10, r=10, b=10))
    return View(fig, {"view": "erf", "layer": layer, "receptive_field": rf.receptive_field, "jump": rf.jump,
                      "start": rf.start, "rf_global": rf.global_, "reachable": int((heat > 0).sum()),
                      "pixels": int(h * w), "share_inside": inside, "images": int(
                          min(MAX_IMAGES, n) if inputs is None else min(MAX_IMAGES, len(inputs)))})


def dilation_stack(dilations: tuple[int, ...], side: int = 33) -> nn.Module:
    """Three (or more) 3×3 convs with these dilations, 'same' padding, one channel, no norm
    or activation, every weight 1: a ConvScope network whose gradient counts the paths from
    each input pixel to the centre unit."""
    spec = {"name": f"dilations {'-'.join(map(str, dilations))}", "input": [1, side, side], "classes": 1,
            "layers": [{"block": "conv", "params": {"out": 1, "dilation": d, "norm": "none", "act": "none",
                                                    "bias": False}} for d in dilations]
            + [{"block": "global_avg_pool"}, {"block": "linear"}]}
    net = build(spec)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0)
    return net


def gridding_demo(a: tuple[int, ...] = (2, 2, 2), b: tuple[int, ...] = (1, 2, 3), side: int = 33) -> View:
    """The handbook's example side by side: three 3×3 convs with dilations 2-2-2 (field 13,
    holes: 49 of 169 pixels reached) against 1-2-3 (field 13, all 169 reached)."""
    panels, data = [], {"view": "gridding"}
    for dil in (a, b):
        net = dilation_stack(dil, side)
        last = len(dil) - 1
        heat = erf_map(net, last, n=1)
        rf = layer_fields(net)[last]
        square = _square(rf, net.layer_info[last].out_shape, side, side)
        key = "-".join(map(str, dil))
        data[key] = {"receptive_field": rf.receptive_field, "reachable": int((heat > 0).sum()),
                     "square": int(rf.receptive_field) ** 2}
        panels.append((heat, square, f"dilations {key}: RF {rf.receptive_field}, "
                                     f"{data[key]['reachable']} of {data[key]['square']} pixels reached"))
    fig = make_subplots(1, 2, subplot_titles=[p[2] for p in panels], horizontal_spacing=0.08)
    for col, (heat, square, _) in enumerate(panels, start=1):
        _panel(fig, heat, square, col, col == 2)
    fig.update_layout(height=420, margin=dict(l=10, r=10, b=10))
    return View(fig, data)
