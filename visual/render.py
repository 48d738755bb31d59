"""Numbers to pixels: colour maps, tiling, PNG data URIs and the image/overlay traces.

Big grids are sent to the browser as one PNG (`go.Image(source=…)`), not as a heatmap of
floats, which keeps a 256-channel figure's JSON small; a coarse transparent heatmap on top
carries the hover text.
"""
from __future__ import annotations

import base64
import io
import math

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go
import torch
from PIL import Image

TRANSPARENT = [[0.0, "rgba(0,0,0,0)"], [1.0, "rgba(0,0,0,0)"]]
GAP_RGB = (255, 255, 255)


def _lut(name: str) -> np.ndarray:
    stops = np.array([pc.hex_to_rgb(c) for c in getattr(pc.sequential, name)], dtype=np.float64)
    pos = np.linspace(0, 1, len(stops))
    t = np.linspace(0, 1, 256)
    lut = np.stack([np.interp(t, pos, stops[:, k]) for k in range(3)], axis=1)
    lut = np.round(lut).astype(np.uint8)
    lut.setflags(write=False)
    return lut


VIRIDIS = _lut("Viridis")


def as_numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def normalize01(maps: np.ndarray) -> np.ndarray:
    """Min-max normalise each map of (K, H, W) to [0, 1]; a constant map becomes 0."""
    maps = maps.astype(np.float32, copy=False)
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


def colorize(a01: np.ndarray, lut: np.ndarray = VIRIDIS) -> np.ndarray:
    """Values in [0, 1] (NaN = gap) -> uint8 RGB (…, 3)."""
    idx = np.clip(np.nan_to_num(a01, nan=0.0) * 255 + 0.5, 0, 255).astype(np.uint8)
    rgb = lut[idx]
    if np.isnan(a01).any():
        rgb[np.isnan(a01)] = GAP_RGB
    return rgb


def upscale(maps: np.ndarray, min_side: int = 16) -> tuple[np.ndarray, int]:
    """Nearest-neighbour upscale (K, h, w) by an integer factor so the shorter side is ≥ min_side."""
    f = max(1, math.ceil(min_side / max(1, min(maps.shape[1:]))))
    if f > 1:
        maps = maps.repeat(f, axis=1).repeat(f, axis=2)
    return maps, f


def grid_shape(k: int, cols: int | None = None) -> tuple[int, int]:
    cols = cols or max(1, math.ceil(math.sqrt(k)))
    return math.ceil(k / cols), cols


def tile(maps: np.ndarray, rows: int, cols: int, gap: int = 1) -> np.ndarray:
    """(K, h, w) -> one (rows·(h+gap)−gap, cols·(w+gap)−gap) array, row-major; gaps are NaN."""
    k, h, w = maps.shape
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    for i in range(k):
        r, c = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = maps[i]
    return out


def png_uri(rgb: np.ndarray) -> str:
    """uint8 (H, W, 3) or (H, W) -> a data:image/png;base64 URI."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_rgb(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) image -> (H, W, 3) uint8 for display (grey repeated; other C: their mean)."""
    a = as_numpy(image)
    if a.ndim == 4:
        a = a[0]
    if a.ndim == 2:
        a = a[None]
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[0] == 3:
        return np.ascontiguousarray(a.transpose(1, 2, 0))
    grey = a[:1] if a.shape[0] == 1 else a.mean(axis=0, keepdims=True).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey, 3, axis=0).transpose(1, 2, 0))


def image_trace(rgb: np.ndarray | str, name: str = "input") -> go.Image:
    """An image trace from uint8 (H, W, 3) pixels or a ready PNG data URI."""
    return go.Image(source=rgb if isinstance(rgb, str) else png_uri(rgb), name=name, hoverinfo="skip")


def hover_grid(values: np.ndarray, text: np.ndarray, tile_h: int, tile_w: int, gap: int = 1) -> go.Heatmap:
    """An invisible heatmap with one cell per tile, carrying the hover text over a tiled PNG."""
    return go.Heatmap(z=values, text=text, x0=(tile_w - 1) / 2, dx=tile_w + gap,
                      y0=(tile_h - 1) / 2, dy=tile_h + gap, colorscale=TRANSPARENT, showscale=False,
                      hovertemplate="%{text}<extra></extra>", hoverongaps=False)


def heat_overlay(heat: np.ndarray, name: str, opacity: float = 0.5, colorscale: str = "Jet",
                 zmin: float | None = None, zmax: float | None = None,
                 colorbar_x: float | None = None, colorbar_title: str | None = None) -> go.Heatmap:
    """A semi-transparent (H, W) heatmap aligned with an image trace's pixels; its colour bar
    is titled `colorbar_title` (default: `name`)."""
    return go.Heatmap(z=np.asarray(heat, dtype=np.float32), opacity=opacity, colorscale=colorscale,
                      zmin=zmin, zmax=zmax, name=name,
                      colorbar=dict(len=0.8, thickness=10, x=colorbar_x,
                                    title=dict(text=colorbar_title or name, side="right")),
                      hovertemplate=f"{name}: %{{z:.3g}}<br>x %{{x}}, y %{{y}}<extra></extra>")


def colorbar_beside(fig: go.Figure, row: int, col: int) -> float:
    """The x (paper coordinates) just right of subplot (row, col), for its heatmap's colour bar."""
    return fig.get_subplot(row, col).xaxis.domain[1] + 0.008


def style_image_axes(fig: go.Figure, row: int | None = None, col: int | None = None) -> go.Figure:
    """Image subplots: no ticks or grid (an image trace already gives square pixels, y down)."""
    kw = {} if row is None else {"row": row, "col": col}
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, **kw)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, **kw)
    return fig


def rounded(a: np.ndarray | list, digits: int = 5) -> list:
    """A JSON-able nested list of floats rounded to `digits` (NaN -> None)."""
    arr = np.round(np.asarray(a, dtype=np.float64), digits)
    return np.where(np.isnan(arr), None, arr).tolist() if np.isnan(arr).any() else arr.tolist()


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, h, w) or (N, h, w) maps -> (N, H, W), bilinear (align_corners=False)."""
    if maps.dim() == 3:
        maps = maps[:, None]
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = torch.nn.functional.interpolate(maps.float(), size=tuple(size), mode="bilinear",
                                               align_corners=False)
    return maps[:, 0]
