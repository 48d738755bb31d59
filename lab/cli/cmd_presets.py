"""`python -m lab presets [NAME …] [--input CxHxW] [--classes N] [--width W] [--json]`: the
presets with their parameters and FLOPs, at each preset's default input unless told otherwise."""
from __future__ import annotations

import argparse
import json

from blocks.summary import human, summarize
from lab.cli.cmd_summary import add_override_args, parse_shape
from presets import all_presets, get_preset


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("presets", help="list the preset networks",
                              description="List the presets with parameters and FLOPs (one image, "
                                          "a multiply-add is 2) at their paper's input, or at "
                                          "--input/--classes/--width.")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these presets (name or slug)")
    add_override_args(p)
    p.add_argument("--json", action="store_true", help="one JSON array instead of the table")
    p.set_defaults(func=run)


def preset_rows(input_shape: list[int] | None = None, classes: int | None = None,
                width: float | None = None, names: list[str] | None = None) -> list[dict]:
    """One record per preset (all, or `names`): name, slug, paper, description, the settings
    used, params and FLOPs. Unknown names raise ValueError."""
    rows = []
    for p in [get_preset(n) for n in names] if names else all_presets():
        spec = p.spec(input_shape, classes, width)
        s = summarize(spec)
        rows.append({"name": p.name, "slug": p.slug, "year": p.year, "paper": p.paper,
                     "description": p.description, "input": spec["input"], "classes": spec["classes"],
                     "width": spec["width"], "params": s.params, "flops": s.flops})
    return rows


def format_rows(rows: list[dict]) -> str:
    head = f"{'name':<22} {'slug':<20} {'input':<11} {'classes':>7} {'width':>5} {'params':>12} {'FLOPs':>9}  paper"
    lines = [head, "-" * len(head)]
    for r in rows:
        paper = r["paper"].split(";")[0]
        lines.append(f"{r['name']:<22} {r['slug']:<20} {'×'.join(map(str, r['input'])):<11} "
                     f"{r['classes']:>7} {r['width']:>5g} {r['params']:>12,} {human(r['flops']):>9}  {paper}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    shape = parse_shape(args.input) if args.input is not None else None
    rows = preset_rows(shape, args.classes, args.width, args.names)
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
    else:
        print(format_rows(rows))
    return 0
