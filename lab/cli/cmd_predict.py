"""`python -m lab predict --preset NAME --weights FILE|imagenet --image PHOTO [--top 5] [--json]`:
the top classes of a pretrained preset on one photo, with the weights' own preprocessing."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="top-5 ImageNet classes of a pretrained preset on a photo",
                              description="Classify a photo with a preset and pretrained weights: "
                                          "'imagenet' (torchvision's download) or a local .pth / "
                                          ".safetensors file. The photo (JPEG/PNG/WebP, any size, "
                                          "EXIF orientation honoured) is resized and centre-cropped "
                                          "as the weights were trained.")
    p.add_argument("--preset", required=True, metavar="NAME", help="e.g. 'ResNet-18' or resnet50")
    p.add_argument("--weights", required=True, metavar="FILE|imagenet",
                   help="'imagenet' or a .pth / .safetensors file of the torchvision model")
    p.add_argument("--image", required=True, metavar="PHOTO", help="a photo file")
    p.add_argument("--top", type=int, default=5, metavar="K", help="how many classes (default 5)")
    p.add_argument("--json", action="store_true", help='print {"top5": [{"index", "label", "prob"}, …]}')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lab.cli import UsageError
    from lab.pretrained import open_photo, photo_tensors, pretrained, top_k
    if not 1 <= args.top <= 1000:
        raise UsageError(f"--top must be from 1 to 1000, got {args.top}")
    photo = open_photo(args.image)          # a bad photo fails before the weights are read
    net = pretrained(args.preset, args.weights)
    _, x = photo_tensors(photo, net.weights)
    top = top_k(net.model, x, net.classes, args.top)
    if args.json:
        print(json.dumps({f"top{args.top}": top}))
        return 0
    print(f"{net.spec['name']} with {net.weights} weights ({net.source}): {net.report.summary()}",
          file=sys.stderr)
    for rank, t in enumerate(top, 1):
        print(f"{rank:2d}. {t['prob']:7.2%}  {t['label']} ({t['index']})")
    return 0
