"""`python -m lab diagram (--preset NAME | --spec FILE) [--expand all|none|INDEX…]
[--input 3x224x224] [--classes N] [--width W] --out FILE.svg|.html`: the network diagram
(visual/diagram.py) as an SVG file or a standalone HTML page."""
from __future__ import annotations

import argparse
from pathlib import Path

from lab.cli import UsageError
from lab.cli.cmd_summary import add_source_args, resolve_spec


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("diagram", help="draw the network as an SVG (or HTML) diagram",
                              description="Draw a preset or a spec: one box per layer with its output "
                                          "shape, parameters, FLOPs and receptive field; --expand draws "
                                          "composite blocks' insides (read from the built modules).")
    add_source_args(p)
    p.add_argument("--expand", nargs="+", default=["none"], metavar="all|none|INDEX",
                   help="layers to draw expanded: all, none (default) or layer indices")
    p.add_argument("--out", required=True, metavar="FILE.svg|FILE.html", help="where to write the diagram")
    p.set_defaults(func=run)


def parse_expand_arg(values: list[str]):
    """['all'] / ['none'] / ['2', '5'] -> 'all' / 'none' / [2, 5]; UsageError otherwise."""
    if len(values) == 1 and values[0] in ("all", "none"):
        return values[0]
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UsageError(f"--expand takes all, none or layer indices, got '{' '.join(values)[:40]}'") from None


def run(args: argparse.Namespace) -> int:
    from visual.diagram import diagram_html, diagram_svg
    out = Path(args.out)
    if out.suffix.lower() not in (".svg", ".html", ".htm"):
        raise UsageError(f"--out must end in .svg or .html, got '{args.out}'")
    spec = resolve_spec(args)
    expand = parse_expand_arg(args.expand)
    text = diagram_svg(spec, expand) if out.suffix.lower() == ".svg" else diagram_html(spec, expand)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} ({len(text.encode('utf-8')) / 1024:.0f} kB)")
    return 0
