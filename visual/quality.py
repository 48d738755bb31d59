"""Does an attention or attribution map point at the object? Scored against object masks.

* energy-in-mask  = Σ(map·mask) / Σ(map), the map made non-negative first (clamped at 0).
  A map with no mass (all zero) carries no information and scores like a uniform map.
* pointing game   = is the map's maximum inside the mask? With ties the expected hit of
  picking one maximum at random: |argmax set ∩ mask| / |argmax set|.
* uniform baseline: a constant map scores the mask's area share on both (for pointing as an
  expected value), so a method is only useful where it beats that.

`attention_quality` averages these over images for CBAM spatial maps (the last CBAM by
default), Grad-CAM, Integrated Gradients (|·| summed over channels) and Saliency.
"""
from __future__ import annotations

import plotly.graph_objects as go
import torch
import torch.nn as nn

from visual.attention import attention_weights
from visual.attributions import METHODS as ATTRIBUTION_METHODS, attribution_maps
from visual.layers import candidates
from visual.render import rounded, upsample
from visual.view import View

QUALITY_METHODS = ("cbam", "gradcam", "ig", "saliency", "occlusion")
DEFAULT_METHODS = ("cbam", "gradcam", "ig", "saliency")
_NAMES = {"cbam": "CBAM spatial", "gradcam": "Grad-CAM", "ig": "Integrated Gradients",
          "saliency": "Saliency", "occlusion": "Occlusion", "uniform": "uniform map"}


def _check(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    maps, masks = torch.as_tensor(maps).double(), torch.as_tensor(masks).bool()
    if maps.dim() == 2:
        maps, masks = maps[None], masks[None] if masks.dim() == 2 else masks
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have one shape "
                         f"(N, H, W)")
    return maps, masks


def area_share(masks: torch.Tensor) -> torch.Tensor:
    """(N,) fraction of each mask's pixels that are inside the object."""
    masks = torch.as_tensor(masks).bool()
    return masks.flatten(1).double().mean(1)


def energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) Σ(map·mask)/Σ(map) for maps clamped at 0; a massless map scores its area share."""
    maps, masks = _check(maps, masks)
    m = maps.clamp_min(0).flatten(1)
    total = m.sum(1)
    inside = (m * masks.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), area_share(masks))


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) hit of the pointing game: 1 if the map's maximum lies in the mask; with ties the
    share of tied maxima inside it (so a uniform map scores its area share)."""
    maps, masks = _check(maps, masks)
    m = maps.flatten(1)
    top = m == m.max(1, keepdim=True).values
    return (top & masks.flatten(1)).sum(1).double() / top.sum(1).double()


def quality_maps(model: nn.Module, x: torch.Tensor, method: str, target=None, layer: str | None = None,
                 n_steps: int = 32, batch: int = 32) -> torch.Tensor:
    """(N, H, W) non-negative maps at the input size for one method of QUALITY_METHODS."""
    if method == "cbam":
        _, w = attention_weights(model, x, layer, ("cbam",), batch=max(batch, 64))
        return upsample(w["spatial"], tuple(x.shape[-2:]))
    if method in ATTRIBUTION_METHODS:
        layer = layer if method == "gradcam" else None
        return attribution_maps(model, x, method, target, layer, n_steps, batch)[0]
    raise ValueError(f"method must be one of {', '.join(QUALITY_METHODS)}, got '{method}'")


def attention_quality(model: nn.Module, x: torch.Tensor, masks: torch.Tensor,
                      methods: tuple[str, ...] = DEFAULT_METHODS, target=None, limit: int = 256,
                      layers: dict[str, str] | None = None, n_steps: int = 32) -> View:
    """Energy-in-mask and pointing-game hit rate of each method, averaged over the first
    `limit` images of x (N, C, H, W) with object masks (N, H, W), beside the uniform baseline.
    `target`: None (each image's prediction), a class, or one class per image. `layers` picks
    a layer per method (e.g. {"cbam": "layers.3.1.attn", "gradcam": "layers.4"}). A method the
    model cannot give (CBAM without a CBAM module) is listed under "skipped"."""
    x, masks = x[:limit], torch.as_tensor(masks[:limit]).bool()
    if masks.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"masks must be (N, H, W) = {(x.shape[0], *x.shape[-2:])}, got {tuple(masks.shape)}")
    if isinstance(target, torch.Tensor) and target.dim() > 0:
        target = target[:limit]
    layers = layers or {}
    share = area_share(masks)
    results = {"uniform": {"energy": share, "pointing": share}}
    skipped = {}
    for method in methods:
        if method == "cbam" and not any(kind == "cbam" for _, kind, _ in candidates(model)):
            skipped[method] = "the model has no CBAM module"
            continue
        maps = quality_maps(model, x, method, target, layers.get(method), n_steps)
        results[method] = {"energy": energy_in_mask(maps, masks), "pointing": pointing_game(maps, masks)}
    order = [m for m in methods if m in results] + ["uniform"]
    fig = go.Figure()
    for metric, title in (("energy", "energy in mask"), ("pointing", "pointing game")):
        fig.add_trace(go.Bar(x=[_NAMES[m] for m in order],
                             y=[float(results[m][metric].mean()) for m in order], name=title,
                             hovertemplate=f"%{{x}}: {title} %{{y:.3f}}<extra></extra>"))
    fig.update_layout(barmode="group", title=f"attention quality on {len(x)} images "
                      f"(uniform map = mask area share {float(share.mean()):.3f})",
                      yaxis_range=[0, 1], height=380, margin=dict(l=10, r=10, t=40, b=10))
    data = {"view": "attention_quality", "images": int(len(x)), "skipped": skipped,
            "methods": {m: {"energy_in_mask": round(float(r["energy"].mean()), 6),
                            "pointing": round(float(r["pointing"].mean()), 6),
                            "beats_uniform_energy": round(float((r["energy"] > share).double().mean()), 6),
                            "energy_per_image": rounded(r["energy"].numpy(), 5),
                            "pointing_per_image": rounded(r["pointing"].numpy(), 5)}
                        for m, r in results.items()}}
    return View(fig, data)
