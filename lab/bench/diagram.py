"""Bench case: the network diagram of ResNet-50 with every block expanded (visual/diagram.py),
server-side time (spec -> SVG string: summary, tracing, layout, drawing) and SVG size."""
from __future__ import annotations

import statistics
import time

from lab.bench import BenchOptions, register_case

PRESET = "ResNet-50"
BUDGET_MS = 500
SIZE_BUDGET = 2_000_000


def _diagram_case(options: BenchOptions) -> dict:
    from presets import load_preset
    from visual.diagram import diagram_svg
    spec = load_preset(PRESET)
    svg = diagram_svg(spec, "all")          # warm-up: imports and the receptive-field cache
    times = []
    for _ in range(3 if options.quick else 7):
        t0 = time.perf_counter()
        svg = diagram_svg(spec, "all")
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1000
    size = len(svg.encode("utf-8"))
    return {"kind": "diagram", "model": f"{PRESET} (3×224×224, every block expanded)",
            "nodes": svg.count("class='cs-node'"), "ms": round(ms, 1), "budget_ms": BUDGET_MS,
            "within_budget": ms <= BUDGET_MS, "svg_bytes": size, "svg_within_budget": size < SIZE_BUDGET}


register_case("diagram: ResNet-50 fully expanded", _diagram_case)
