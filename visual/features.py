"""Feature-map grid: every channel of one layer for one image, beside the input."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from plotly.subplots import make_subplots

from visual.hooks import run_captured
from visual.layers import readable_name, resolve_layer
from visual.render import (as_numpy, colorize, grid_shape, hover_grid, image_trace, normalize01,
                           png_uri, rounded, style_image_axes, tile, to_rgb, upscale)
from visual.view import View

SORTS = ("mean", "index")


def channel_order(fmap: np.ndarray, sort: str) -> np.ndarray:
    """Display order of the channels of (C, H, W): by mean activation (descending) or index."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, got '{sort}'")
    if sort == "index":
        return np.arange(fmap.shape[0])
    return np.argsort(-fmap.mean(axis=(1, 2)), kind="stable")


def tiled_maps_image(maps: np.ndarray, cols: int | None = None, min_side: int = 16):
    """(K, h, w) raw maps -> (PNG URI, rows, cols, tile_h, tile_w); each map min-max scaled,
    an all-NaN map left blank."""
    blank = np.isnan(maps).all(axis=(1, 2))
    maps = normalize01(np.nan_to_num(maps))
    maps[blank] = np.nan
    maps, _ = upscale(maps, min_side)
    rows, cols = grid_shape(maps.shape[0], cols)
    return png_uri(colorize(tile(maps, rows, cols))), rows, cols, maps.shape[1], maps.shape[2]


def feature_grid(model: nn.Module, x: torch.Tensor, image: torch.Tensor | np.ndarray,
                 layer: str | None = None, sort: str = "mean", max_channels: int = 256) -> View:
    """Every channel of `layer`'s output for image `x` (1, C, H, W) as a small heatmap, each
    scaled to its own min..max, sorted by mean activation or by index. Beyond `max_channels`
    only the first ones in that order are drawn (all are in `data`)."""
    choice = resolve_layer(model, layer)
    _, store = run_captured(model, x[:1], [choice.name])
    fmap = as_numpy(store[choice.name][0])
    order = channel_order(fmap, sort)
    shown = order[:max_channels]
    uri, rows, cols, th, tw = tiled_maps_image(fmap[shown])
    means = fmap.mean(axis=(1, 2))
    grid_means = np.full(rows * cols, np.nan, dtype=np.float32)
    grid_means[:len(shown)] = means[shown]
    text = np.full(rows * cols, "", dtype=object)
    text[:len(shown)] = [f"channel {c}<br>mean {means[c]:.3g}<br>max {fmap[c].max():.3g}"
                         for c in shown]
    fig = make_subplots(1, 2, column_widths=[0.25, 0.75], horizontal_spacing=0.03,
                        subplot_titles=("input", f"{readable_name(model, choice.name)}: {fmap.shape[0]} channels "
                                        f"{fmap.shape[1]}×{fmap.shape[2]}, by {sort}"))
    fig.add_trace(image_trace(to_rgb(image)), 1, 1)
    fig.add_trace(image_trace(uri, "feature maps"), 1, 2)
    fig.add_trace(hover_grid(grid_means.reshape(rows, cols), text.reshape(rows, cols), th, tw), 1, 2)
    style_image_axes(fig)
    fig.update_layout(height=max(320, min(900, 60 + 14 * rows * max(1, th // 8))),
                      margin=dict(l=10, r=10, t=40, b=10))
    data = {"view": "features", "layer": choice.name, "label": choice.label,
            "shape": list(fmap.shape), "sort": sort, "order": order.tolist(),
            "shown": len(shown), "grid": [rows, cols],
            "mean": rounded(means), "max": rounded(fmap.max(axis=(1, 2))),
            "min": rounded(fmap.min(axis=(1, 2)))}
    return View(fig, data)

