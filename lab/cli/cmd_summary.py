"""`python -m lab summary (--preset NAME | --spec FILE) [--input 3x224x224] [--classes N]
[--width W] [--json]`: per-layer output shape, parameters and FLOPs of a network."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from blocks import SpecError, load_spec_text
from blocks.builder import MAX_SPEC_BYTES
from blocks.summary import format_table, summarize
from lab.cli import UsageError
from presets import load_preset

_SHAPE = re.compile(r"^\s*(\d{1,6})\s*[x×X,]\s*(\d{1,6})\s*[x×X,]\s*(\d{1,6})\s*$")


def parse_shape(text: str) -> list[int]:
    """'3x224x224' (or 3×224×224, 3,224,224) -> [3, 224, 224]; UsageError otherwise."""
    m = _SHAPE.match(text)
    if not m:
        raise UsageError(f"--input must look like 3x224x224 (channels x height x width), got '{text[:40]}'")
    return [int(v) for v in m.groups()]


def add_override_args(p: argparse.ArgumentParser) -> None:
    """--input, --classes, --width: shared by `summary` and `presets`."""
    p.add_argument("--input", metavar="CxHxW", help="input shape, e.g. 3x32x32")
    p.add_argument("--classes", type=int, metavar="N", help="number of classes")
    p.add_argument("--width", type=float, metavar="W", help="width multiplier in (0, 4]")


def read_spec_file(path: str) -> dict:
    """A spec from a JSON file of at most 5 MB (blocks.load_spec_text's rules: UTF-8, JSON,
    nested at most 64 deep); UsageError or SpecError with one line naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"spec file '{path}' does not exist or is not a file")
    size = p.stat().st_size
    if size > MAX_SPEC_BYTES:  # checked before reading, so a huge file is never loaded
        raise UsageError(f"spec file '{path}' is {size / 2**20:.1f} MB; at most 5 MB is accepted")
    try:
        data = load_spec_text(p.read_bytes())
    except OSError as e:
        raise UsageError(f"spec file '{path}' cannot be read: {e.strerror or e}") from None
    except SpecError as e:
        raise SpecError(f"spec file '{path}': {e}") from None
    if isinstance(data, dict) and ("small_layers" in data or "default" in data):
        raise UsageError(f"'{path}' is a preset file, not a spec; use --preset {p.stem}")
    if not isinstance(data, dict):
        raise UsageError(f"spec file '{path}' must hold a JSON object with 'layers', "
                         f"got a JSON {type(data).__name__}")
    return data


def resolve_spec(args: argparse.Namespace) -> dict:
    """The spec named by --preset or --spec, with --input/--classes/--width applied."""
    shape = parse_shape(args.input) if args.input is not None else None
    if getattr(args, "preset", None) is not None:
        return load_preset(args.preset, shape, args.classes, args.width)
    spec: dict[str, Any] = dict(read_spec_file(args.spec))
    for key, value in (("input", shape), ("classes", args.classes), ("width", args.width)):
        if value is not None:
            spec[key] = value
    return spec


def add_source_args(p: argparse.ArgumentParser) -> None:
    """--preset NAME | --spec FILE, then the --input/--classes/--width overrides (what
    `resolve_spec` reads)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="NAME", help="a preset, e.g. 'ResNet-18 + CBAM' or resnet18_cbam")
    src.add_argument("--spec", metavar="FILE", help="a JSON spec file (at most 5 MB)")
    add_override_args(p)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("summary", help="per-layer shapes, parameters and FLOPs",
                              description="Summarise a preset or a spec file: output shape, "
                                          "parameters and FLOPs (a multiply-add is 2) per layer, "
                                          "for one image. Runs on the meta device: nothing is allocated.")
    add_source_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = summarize(resolve_spec(args))
    if args.json:
        print(json.dumps(summary.as_dict(), ensure_ascii=False))
    else:
        print(format_table(summary))
    return 0
