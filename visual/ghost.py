"""Redundancy in feature maps (GhostNet, Han et al. 2020, Fig. 1: many maps of a trained
conv layer look like cheap transforms of others).

* For a Ghost module: its intrinsic maps beside the ghost maps each one produced.
* For any conv-like layer: the channel × channel cosine-similarity matrix, its most similar
  pairs as images, and one redundancy score.

Redundancy score (documented so layers and networks can be compared): each channel is a
vector of its activations over all pixels (and all images of the batch); for each live
channel c, r_c = max over other live channels d of |cos(v_c, v_d)|; the score is the mean
of r_c. It lies in [0, 1]: 1 when every channel has an exact (possibly negated or scaled)
duplicate, near 0 for mutually orthogonal channels. Dead channels (all zero, so with no
direction) are left out and counted separately; with fewer than two live channels the
score is undefined (None).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from blocks.library.ghost import GhostModule
from visual.features import tiled_maps_image
from visual.hooks import inspection_mode, run_captured
from visual.layers import candidates, get_module, readable_name, resolve_layer
from visual.render import as_numpy, hover_grid, image_trace, rounded, style_image_axes, to_rgb
from visual.view import View

DEAD_TOL = 1e-8
INTRINSIC_FRAME = "#ff7f0e"


def ghost_parts(model: nn.Module, x: torch.Tensor, layer: str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(intrinsic (N, m, H, W), ghost (N, m·(s−1), H, W), module name) of a Ghost module,
    computed from the module's real input in an eval-mode forward of `x`."""
    choice = resolve_layer(model, layer, ("ghost",), default="first")
    module = get_module(model, choice.name)
    assert isinstance(module, GhostModule)
    _, store = run_captured(model, x, [choice.name], what="input")
    with inspection_mode(model), torch.no_grad():
        intrinsic, ghost = module.forward_parts(store[choice.name])
    return intrinsic, ghost, choice.name


def ghost_view(model: nn.Module, x: torch.Tensor, image: torch.Tensor | np.ndarray,
               layer: str | None = None, max_rows: int = 16) -> View:
    """Intrinsic map j, then the s−1 ghosts the cheap depthwise conv made from it (ghost
    channel j·(s−1)+t comes from intrinsic channel j), a few such groups per grid row.
    Ghosts past the module's output width are cut by the module and marked unused."""
    intrinsic, ghost, name = ghost_parts(model, x[:1], layer)
    module = get_module(model, name)
    intr, gh = as_numpy(intrinsic[0]), as_numpy(ghost[0])
    m, s = intr.shape[0], module.ratio
    rows = min(m, max_rows)
    # k groups (intrinsic + its ghosts) per grid row, a blank tile between groups
    k = max(1, round(math.sqrt(rows / s)))
    cols = k * s + k - 1
    blank = np.full_like(intr[0], np.nan)
    maps, text, cos, intrinsic_at = [], [], [], []
    for j in range(rows):
        if j % k:
            maps.append(blank)
            text.append("")
        intrinsic_at.append(len(maps))
        maps.append(intr[j])
        text.append(f"intrinsic {j}<br>mean {intr[j].mean():.3g}")
        row_cos = []
        for t in range(s - 1):
            g = j * (s - 1) + t
            maps.append(gh[g])
            c = _cos(intr[j], gh[g])
            row_cos.append(c)
            used = m + g < module.c_out
            text.append(f"ghost {g} (output channel {m + g}) from intrinsic {j}<br>"
                        f"cos to intrinsic {c:.3f}" + ("" if used else "<br>unused: cut by the module"))
        cos.append(row_cos)
    uri, grows, gcols, th, tw = tiled_maps_image(np.stack(maps), cols=cols)
    text += [""] * (grows * gcols - len(text))
    fig = make_subplots(1, 2, column_widths=[0.3, 0.7], horizontal_spacing=0.04,
                        subplot_titles=("input", f"{readable_name(model, name)}: framed = intrinsic "
                                        f"map, then its {s - 1} ghost(s); {rows} of {m} intrinsic"))
    fig.add_trace(image_trace(to_rgb(image)), 1, 1)
    fig.add_trace(image_trace(uri, "ghost maps"), 1, 2)
    for at in intrinsic_at:   # a frame around each intrinsic map (pixel i spans i-0.5..i+0.5)
        r, c = divmod(at, gcols)
        x0, y0 = c * (tw + 1) - 0.5, r * (th + 1) - 0.5
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x0 + tw, y1=y0 + th, row=1, col=2,
                      line=dict(color=INTRINSIC_FRAME, width=2))
    fig.add_trace(hover_grid(np.zeros((grows, gcols)), np.array(text, dtype=object).reshape(grows, gcols),
                             th, tw), 1, 2)
    style_image_axes(fig)
    fig.update_layout(height=max(340, min(1000, 60 + grows * 70)), margin=dict(l=10, r=10, t=40, b=10))
    data = {"view": "ghost", "layer": name, "intrinsic": m, "ratio": s, "ghosts": int(gh.shape[0]),
            "out_channels": module.c_out, "rows_shown": rows, "frames": len(intrinsic_at),
            "cos_intrinsic_ghost": rounded(cos),
            "intrinsic_mean": rounded(intr.mean(axis=(1, 2))), "ghost_mean": rounded(gh.mean(axis=(1, 2)))}
    return View(fig, data)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a.ravel() @ b.ravel() / (na * nb)) if na > 0 and nb > 0 else 0.0


def cosine_similarity_matrix(fmap: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, C) cosine similarity of the channels of (C, H, W) or (N, C, H, W) feature maps,
    each channel flattened over images and pixels. Diagonal 1; a dead (all-zero) channel has
    similarity 0 with every other channel."""
    a = as_numpy(fmap).astype(np.float64)
    if a.ndim == 4:
        a = a.transpose(1, 0, 2, 3)
    v = a.reshape(a.shape[0], -1)
    norms = np.linalg.norm(v, axis=1)
    alive = norms > DEAD_TOL * max(1.0, norms.max(initial=0.0))
    u = np.where(alive[:, None], v / np.where(alive, norms, 1.0)[:, None], 0.0)
    sim = np.clip(u @ u.T, -1.0, 1.0)
    np.fill_diagonal(sim, 1.0)
    return sim


def live_channels(fmap: torch.Tensor | np.ndarray) -> np.ndarray:
    a = as_numpy(fmap)
    a = a.transpose(1, 0, 2, 3) if a.ndim == 4 else a
    norms = np.linalg.norm(a.reshape(a.shape[0], -1).astype(np.float64), axis=1)
    return norms > DEAD_TOL * max(1.0, norms.max(initial=0.0))


def redundancy_score(sim: np.ndarray, alive: np.ndarray | None = None) -> float | None:
    """Mean over live channels of the best |cosine similarity| with any other live channel
    (see the module docstring); None with fewer than two live channels."""
    alive = np.ones(len(sim), bool) if alive is None else alive
    s = np.abs(sim[np.ix_(alive, alive)])
    if len(s) < 2:
        return None
    np.fill_diagonal(s, -np.inf)
    return float(s.max(axis=1).mean())


def top_pairs(sim: np.ndarray, alive: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """The k channel pairs (i < j, both live) with the highest |cosine similarity|."""
    s = np.abs(sim).copy()
    s[~alive, :] = -1
    s[:, ~alive] = -1
    iu = np.triu_indices(len(s), 1)
    vals = s[iu]
    best = np.argsort(-vals, kind="stable")[:k]
    return [(int(iu[0][b]), int(iu[1][b]), float(sim[iu[0][b], iu[1][b]])) for b in best if vals[b] >= 0]


def _layer_output(model: nn.Module, x: torch.Tensor, layer: str | None) -> tuple[np.ndarray, str]:
    choice = resolve_layer(model, layer)
    _, store = run_captured(model, x, [choice.name])
    out = store[choice.name]
    if out.dim() != 4:
        raise ValueError(f"layer '{choice.name}' gives {tuple(out.shape[1:])}, not a C×H×W feature map")
    return as_numpy(out), choice.name


def redundancy_view(model: nn.Module, x: torch.Tensor, layer: str | None = None, pairs: int = 6) -> View:
    """Cosine-similarity heatmap of `layer`'s channels (over the images of `x`), the most
    similar pairs as images (of the first image) and the redundancy score."""
    fmap, name = _layer_output(model, x, layer)
    sim = cosine_similarity_matrix(fmap)
    alive = live_channels(fmap)
    score = redundancy_score(sim, alive)
    best = top_pairs(sim, alive, pairs)
    score_txt = "undefined" if score is None else f"{score:.3f}"
    fig = make_subplots(1, 2, column_widths=[0.62, 0.38], horizontal_spacing=0.08,
                        subplot_titles=(f"{readable_name(model, name)}: channel cosine similarity "
                                        f"(redundancy {score_txt})",
                                        "most similar pairs"))
    c = sim.shape[0]
    fig.add_trace(go.Heatmap(z=sim.astype(np.float32), zmin=-1, zmax=1, colorscale="RdBu", reversescale=True,
                             colorbar=dict(x=0.55, len=0.9, thickness=12,
                                           title=dict(text="cos", side="right")),
                             hovertemplate="ch %{y} · ch %{x}: %{z:.3f}<extra></extra>"), 1, 1)
    fig.update_xaxes(range=[-0.5, c - 0.5], constrain="domain", row=1, col=1)
    fig.update_yaxes(range=[c - 0.5, -0.5], scaleanchor="x", constrain="domain", row=1, col=1)
    if best:
        maps = np.stack([fmap[0, i] for p in best for i in p[:2]])
        uri, grows, gcols, th, tw = tiled_maps_image(maps, cols=2)
        text = np.array([f"channel {i}<br>cos({p[0]}, {p[1]}) = {p[2]:.3f}" for p in best for i in p[:2]],
                        dtype=object).reshape(grows, gcols)
        fig.add_trace(image_trace(uri, "pairs"), 1, 2)
        fig.add_trace(hover_grid(np.zeros((grows, gcols)), text, th, tw), 1, 2)
        style_image_axes(fig, 1, 2)
    fig.update_layout(height=max(380, min(800, 200 + 4 * c)), margin=dict(l=10, r=10, t=40, b=10))
    data = {"view": "redundancy", "layer": name, "channels": c, "images": int(fmap.shape[0]),
            "score": None if score is None else round(score, 6), "dead": int((~alive).sum()),
            "pairs": [{"i": i, "j": j, "cos": round(v, 6)} for i, j, v in best],
            "similarity": rounded(sim, 4)}
    return View(fig, data)


def redundancy_by_layer(model: nn.Module, x: torch.Tensor,
                        kinds: tuple[str, ...] = ("conv", "ghost")) -> View:
    """The redundancy score of every conv-like layer from one forward of `x` (bars, in order)."""
    names = [n for n, kind, _ in candidates(model) if kind in kinds]
    _, store = run_captured(model, x, names)
    rows = []
    for n in names:
        t = store.get(n)
        if t is not None and t.dim() == 4:
            rows.append((n, redundancy_score(cosine_similarity_matrix(t), live_channels(t)), int(t.shape[1])))
    labels = [readable_name(model, r[0]) for r in rows]
    if len(set(labels)) < len(labels):
        labels = [r[0] for r in rows]
    fig = go.Figure(go.Bar(x=labels, y=[r[1] for r in rows],
                           customdata=[[r[0], r[2]] for r in rows],
                           hovertemplate="%{x}<br>module %{customdata[0]}<br>redundancy %{y:.3f}"
                                         "<br>%{customdata[1]} channels<extra></extra>"))
    fig.update_layout(title="redundancy per layer (mean best-match |cos|)", yaxis_range=[0, 1],
                      height=380, margin=dict(l=10, r=10, t=40, b=10))
    scores = [r[1] for r in rows if r[1] is not None]
    data = {"view": "redundancy_by_layer",
            "layers": [{"layer": n, "score": None if s is None else round(s, 6), "channels": c}
                       for n, s, c in rows],
            "mean": round(float(np.mean(scores)), 6) if scores else None}
    return View(fig, data)


__all__ = ["cosine_similarity_matrix", "ghost_parts", "ghost_view", "live_channels", "redundancy_by_layer",
           "redundancy_score", "redundancy_view", "top_pairs"]
