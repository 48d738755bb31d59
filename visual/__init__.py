"""Inspection: every view is a plain function (model, tensors, choices) -> View.

`x` is a normalised float tensor (1, C, H, W) — (N, C, H, W) for batch views — and
`image` the same image as uint8 (C, H, W) for display. Views run the model in eval mode,
restore each module's train/eval flag afterwards, remove every hook they attach and never
update BatchNorm statistics. visual/ never trains and never imports lab/.

The names below load their submodule on first use (PEP 562): `import visual` is cheap, and
Captum (attributions, quality) is imported only when a view that needs it runs, so the app
starts without it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    **dict.fromkeys(('attention_weights', 'cbam_view', 'se_class_view', 'se_view',), "visual.attention"),
    **dict.fromkeys(('METHODS', 'attribution_maps', 'attribution_view', 'predict', 'top_probabilities',), "visual.attributions"),
    **dict.fromkeys(('curves_figure',), "visual.curves"),
    **dict.fromkeys(('erf_view', 'gridding_demo',), "visual.erf"),
    **dict.fromkeys(('feature_grid',), "visual.features"),
    **dict.fromkeys(('cosine_similarity_matrix', 'ghost_parts', 'ghost_view', 'redundancy_by_layer', 'redundancy_score', 'redundancy_view',), "visual.ghost"),
    **dict.fromkeys(('all_hooks_removed', 'inspection_mode', 'reused_modules',), "visual.hooks"),
    **dict.fromkeys(('LayerChoice', 'layer_choices', 'resolve_layer',), "visual.layers"),
    **dict.fromkeys(('confusion_view', 'params_flops_view', 'stack_diagram',), "visual.model_views"),
    **dict.fromkeys(('DEFAULT_METHODS', 'QUALITY_METHODS', 'area_share', 'attention_quality', 'energy_in_mask', 'pointing_game',), "visual.quality"),
    **dict.fromkeys(('View',), "visual.view"),
}

__all__ = [
    "DEFAULT_METHODS", "LayerChoice", "METHODS", "QUALITY_METHODS", "View", "all_hooks_removed",
    "area_share", "attention_quality", "attention_weights", "attribution_maps", "attribution_view",
    "cbam_view", "confusion_view", "cosine_similarity_matrix", "curves_figure", "energy_in_mask", "erf_view",
    "gridding_demo",
    "feature_grid", "ghost_parts", "ghost_view", "inspection_mode", "layer_choices", "params_flops_view",
    "pointing_game", "predict", "redundancy_by_layer", "redundancy_score", "redundancy_view",
    "resolve_layer", "reused_modules", "se_class_view", "se_view", "stack_diagram", "top_probabilities",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'visual' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from visual.attention import attention_weights, cbam_view, se_class_view, se_view
    from visual.attributions import METHODS, attribution_maps, attribution_view, predict, top_probabilities
    from visual.curves import curves_figure
    from visual.erf import erf_view, gridding_demo
    from visual.features import feature_grid
    from visual.ghost import (cosine_similarity_matrix, ghost_parts, ghost_view, redundancy_by_layer,
                              redundancy_score, redundancy_view)
    from visual.hooks import all_hooks_removed, inspection_mode, reused_modules
    from visual.layers import LayerChoice, layer_choices, resolve_layer
    from visual.model_views import confusion_view, params_flops_view, stack_diagram
    from visual.quality import (DEFAULT_METHODS, QUALITY_METHODS, area_share, attention_quality,
                                energy_in_mask, pointing_game)
    from visual.view import View
