"""`python -m lab blocks [--json]`: the block registry — group, name, parameters, paper."""
from __future__ import annotations

import argparse
import json

from blocks import list_blocks
from blocks.registry import BlockInfo


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("blocks", help="list the blocks a spec can use",
                              description="List the registered blocks with their parameters "
                                          "(default [range or choices]) and papers.")
    p.add_argument("--json", action="store_true", help="one JSON array instead of text")
    p.set_defaults(func=run)


def block_record(b: BlockInfo) -> dict:
    """A block as plain JSON data."""
    return {"name": b.name, "group": b.group, "description": b.description, "paper": b.paper,
            "params": [p.as_dict() | {"describe": p.describe()} for p in b.params],
            "takes_flat": b.takes_flat, "inspect": list(b.inspect)}


def format_blocks(infos: list[BlockInfo]) -> str:
    """The registry as text, one paragraph per block, grouped."""
    lines: list[str] = []
    group = None
    for b in infos:
        if b.group != group:
            group = b.group
            if lines:
                lines.append("")
            lines.append(f"== {group} ==")
        lines.append(f"{b.name}: {b.description}")
        if b.paper:
            lines.append(f"    paper: {b.paper}")
        params = ", ".join(p.describe() for p in b.params) or "(no parameters)"
        lines.append(f"    params: {params}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    infos = list_blocks()
    if args.json:
        print(json.dumps([block_record(b) for b in infos], indent=1, ensure_ascii=False))
    else:
        print(format_blocks(infos))
    return 0
