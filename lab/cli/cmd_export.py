"""`python -m lab export`: a saved run as a standalone .py, ONNX, weights, spec or metrics CSV.

    python -m lab export --run runs/DIR --format py      # network + load/predict/train (torchrun)
    python -m lab export --run runs/DIR --format onnx --out model.onnx
    python -m lab export --run runs/DIR --format run --out DIR.zip      # the whole run, for the app

Prints the path of the file it wrote.
"""
from __future__ import annotations

import argparse

from lab.export.formats import FORMATS, export_run

FORMAT_HELP = ("py: a standalone PyTorch file (torch alone; trains under torchrun), "
               "onnx: the network in ONNX (dynamic batch), safetensors: the weights, "
               "spec: the network spec as JSON, csv: the per-epoch metrics, "
               "run: the run folder as a .zip (the app opens it; unzip it to --resume it)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a run: .py, ONNX, weights, spec or metrics",
                              description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, metavar="DIR", help="a run folder (see runs/)")
    p.add_argument("--format", choices=FORMATS, default="py", help=FORMAT_HELP + " (default py)")
    p.add_argument("--out", default=".", metavar="PATH",
                   help="a file, or a folder for a file named after the network (default: .)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(export_run(args.run, args.format, args.out))
    return 0
