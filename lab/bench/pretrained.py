"""Bench cases for real networks on a real photo (`python -m lab bench --case …`): ResNet-18
and ResNet-50 at 224×224 with ImageNet-shaped weights, on one of the shipped photos.

Timed, as medians of alternating rounds after a warm-up: `predict` (the weights' resize and
crop of the photo, a forward, softmax and top-5), a bare forward, a bare forward + backward
of the predicted class's logit to the input, the Grad-CAM map (captum LayerGradCam, as the
Inspect tab computes it) and the whole Grad-CAM view (map + Plotly figure), and the
64-channel feature-map grid. Goal: the Grad-CAM map within 1.5× one bare forward + backward.
The weights are seeded random tensors in torchvision's layout (the time does not depend on
their values, and the bench must run offline); `--weights`-style loading is timed apart.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from lab.bench import BenchOptions, register_case

PHOTO = Path(__file__).resolve().parents[2] / "assets" / "photos" / "cat.jpg"
GRADCAM_GOAL = 1.5


def _model(preset: str):
    import torchvision
    import blocks
    import presets
    from blocks.pretrained import load_by_structure
    torch.manual_seed(0)
    tv = torchvision.models.get_model(presets.get_preset(preset).torchvision, weights=None)
    model = blocks.build(presets.load_preset(preset))
    t0 = time.perf_counter()
    load_by_structure(model, tv.state_dict())
    return model.eval(), time.perf_counter() - t0


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 1)


def _case(preset: str) -> Callable[[BenchOptions], dict]:
    def case(options: BenchOptions) -> dict:
        import visual
        from lab.bench.inspect import _layer_with_64_channels
        from lab.pretrained import open_photo, photo_tensors, top_k, weights_entry
        model, load_s = _model(preset)
        entry = weights_entry(preset)
        classes = list(entry.meta["categories"])
        photo = open_photo(PHOTO)
        image, x = photo_tensors(photo, entry)
        layer = _layer_with_64_channels(model)
        target = int(model(x).argmax())

        def predict():
            _, xx = photo_tensors(photo, entry)
            return top_k(model, xx, classes)

        def forward():
            with torch.no_grad():
                return model(x)

        def forward_backward():
            xi = x.detach().requires_grad_(True)
            model(xi)[0, target].backward()
            return xi.grad

        fns = {"predict": predict, "forward": forward, "forward_backward": forward_backward,
               "gradcam_map": lambda: visual.attribution_maps(model, x, "gradcam", target=target),
               "gradcam_view": lambda: visual.attribution_view(model, x, image, "gradcam", classes=classes),
               "features_64": lambda: visual.feature_grid(model, x, image, layer)}
        for fn in fns.values():                 # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        rounds = 3 if options.quick else 7
        for r in range(rounds):                 # alternate the order: drift falls on all
            for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
        ratios = [g / fb for g, fb in zip(times["gradcam_map"], times["forward_backward"])]
        ratio = statistics.median(ratios)
        return {"kind": "inspect", "model": f"{preset} (width 1, 3×224×224, 1000 classes)",
                "threads": torch.get_num_threads(), "load_weights_ms": round(load_s * 1000, 1),
                **{f"{k}_ms": _median_ms(v) for k, v in times.items()},
                "gradcam_over_forward_backward": round(ratio, 3),
                "gradcam_within_goal": ratio <= GRADCAM_GOAL, "feature_layer": layer}
    return case


register_case("pretrained: ResNet-18 on a 224² photo", _case("ResNet-18"))
register_case("pretrained: ResNet-50 on a 224² photo", _case("ResNet-50"))
