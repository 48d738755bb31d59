"""Bench cases for inspection (`python -m lab bench --case …`): how long a view takes for one
image on ResNet-18 + CBAM (width 0.25, 32×32), against the budget the UI needs, and how big
its figure's JSON is (budget 2 MB).

Each case times the whole view call — forward, hooks or Captum, and building the Plotly
figure — as the median of several calls after one untimed warm-up.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from lab.bench import BenchOptions, register_case

PRESET = "ResNet-18 + CBAM"
INPUT = (3, 32, 32)
WIDTH = 0.25
JSON_BUDGET = 2_000_000


def _setup():
    import blocks
    from presets import load_preset
    torch.manual_seed(0)
    model = blocks.build(load_preset(PRESET, input_shape=INPUT, classes=10, width=WIDTH)).eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, INPUT, generator=g, dtype=torch.uint8)
    x = ((image.float() / 255 - 0.5) / 0.25)[None]
    return model, x, image


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    result = fn()                                   # warm-up (and the figure to measure)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _view_case(label: str, budget_s: float, make: Callable) -> Callable[[BenchOptions], dict]:
    """Time a view at the process's torch thread count and, where that is more, at one thread
    (two spinning threads on a busy 2-core machine can be many times slower than one)."""
    def case(options: BenchOptions) -> dict:
        model, x, image = _setup()
        repeats = 3 if options.quick else 7
        threads = torch.get_num_threads()
        timings = {}
        try:
            for n in dict.fromkeys((threads, 1)):
                torch.set_num_threads(n)
                timings[n], view = _time(lambda: make(model, x, image), repeats)
        finally:
            torch.set_num_threads(threads)
        size = len(view.figure.to_json())
        best = min(timings.values())
        return {"kind": "inspect", "model": f"{PRESET} (width {WIDTH}, {'×'.join(map(str, INPUT))})",
                "view": label, **{f"ms_{n}_threads": round(t * 1000, 1) for n, t in timings.items()},
                "budget_ms": round(budget_s * 1000), "within_budget": best <= budget_s,
                "json_bytes": size, "json_within_budget": size < JSON_BUDGET}
    return case


def _all_figures(options: BenchOptions) -> dict:
    """Every view once on the preset; the largest figure JSON must stay under 2 MB."""
    import visual
    model, x, image = _setup()
    xs = x.repeat(8, 1, 1, 1) + 0.1 * torch.randn(8, *INPUT, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(8, *INPUT[1:], dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    wide = max(visual.layer_choices(model), key=lambda c: c.out_shape[0]).name
    views = {
        "features": lambda: visual.feature_grid(model, x, image, wide),
        "redundancy": lambda: visual.redundancy_view(model, x, wide),
        "cbam": lambda: visual.cbam_view(model, x, image),
        "gradcam": lambda: visual.attribution_view(model, x, image, "gradcam"),
        "occlusion": lambda: visual.attribution_view(model, x, image, "occlusion"),
        "quality": lambda: visual.attention_quality(model, xs, masks, n_steps=8),
        "confusion": lambda: visual.confusion_view(model, xs, torch.arange(8)),
        "params": lambda: visual.params_flops_view(model),
        "stack": lambda: visual.stack_diagram(model),
    }
    sizes = {name: len(make().figure.to_json()) for name, make in views.items()}
    return {"kind": "inspect", "widest_layer": wide, "max_json_bytes": max(sizes.values()),
            "json_within_budget": max(sizes.values()) < JSON_BUDGET, "json_bytes": sizes}


def _features_64(model, x, image):
    import visual
    layer = _layer_with_64_channels(model)
    return visual.feature_grid(model, x, image, layer)


def _layer_with_64_channels(model) -> str:
    """The first spec-level layer with 64 output channels (found once per model)."""
    return next(i.name for i in model.layer_info if len(i.out_shape) == 3 and i.out_shape[0] == 64)


def _gradcam(model, x, image):
    import visual
    return visual.attribution_view(model, x, image, "gradcam")


def _ig(model, x, image):
    import visual
    return visual.attribution_view(model, x, image, "ig", n_steps=32)


register_case("inspect: feature-map grid, 64 channels", _view_case("features (64 ch)", 0.3, _features_64))
register_case("inspect: Grad-CAM", _view_case("gradcam", 0.3, _gradcam))
register_case("inspect: Integrated Gradients, 32 steps", _view_case("ig (32 steps)", 2.0, _ig))
register_case("inspect: figure sizes", _all_figures)
