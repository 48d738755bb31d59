"""`python -m lab inspect (--run DIR | --preset NAME --weights FILE|imagenet) (--image PATH |
--index N) --view VIEW [--layer NAME] [--target CLASS] --out FILE.html|.png|.json`: render one
inspection view without a browser.

With `--preset` and `--weights` the network is a pretrained one (lab/pretrained.py) and
`--image` a photo, resized and centre-cropped (224×224 for ImageNet weights) and normalised
as the weights were trained; `--target` takes any of the 1,000 ImageNet class names.

The run's test split is rebuilt from its settings (data set, data_root, seed) and the sizes
in its dataset.json, so `--index N` is the N-th image the run was tested on. Images are
normalised with the training-split statistics saved in dataset.json (the ones the run
trained with), which spares regenerating the whole training split. `--image` is converted
to the network's channels (grey or RGB) and resized to its input size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lab.cli import UsageError

IMAGE_VIEWS = ("features", "ghost", "redundancy", "se", "cbam", "gradcam", "ig", "saliency", "occlusion")
SPLIT_VIEWS = ("attention-quality", "se-classes", "confusion")
RUN_VIEWS = ("curves", "model", "stack")
VIEWS = IMAGE_VIEWS + SPLIT_VIEWS + RUN_VIEWS
LAYER_KINDS = {"se": ("se",), "se-classes": ("se",), "cbam": ("cbam",)}
QUALITY_LIMIT = 256
MAX_IMAGE_BYTES = 50 * 1024 * 1024


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="render an inspection view of a run to HTML, PNG or JSON",
                              description="Render one inspection view of a run without a browser: "
                                          "HTML (always), PNG (needs Chrome/Chromium) or JSON (its numbers).")
    net = p.add_mutually_exclusive_group(required=True)
    net.add_argument("--run", metavar="DIR", help="a run folder written by `train`")
    net.add_argument("--preset", metavar="NAME", help="a preset with pretrained --weights, e.g. 'ResNet-18'")
    p.add_argument("--weights", metavar="FILE|imagenet",
                   help="with --preset: 'imagenet' or a .pth / .safetensors file of the torchvision model")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", metavar="PATH", help="an image file (any size; resized to the input)")
    src.add_argument("--index", type=int, metavar="N", help="the N-th image of the run's test split")
    p.add_argument("--view", required=True, choices=VIEWS, metavar="VIEW", help=", ".join(VIEWS))
    p.add_argument("--layer", metavar="NAME", help="module name, e.g. layers.3.1.attn (default per view)")
    p.add_argument("--target", metavar="CLASS", help="class index or name (default: the prediction)")
    p.add_argument("--sort", choices=("mean", "index"), default="mean", help="feature-map order")
    p.add_argument("--steps", type=int, default=32, metavar="N", help="Integrated Gradients steps")
    p.add_argument("--limit", type=int, metavar="N",
                   help=f"test images for split views (attention-quality: {QUALITY_LIMIT}; others: all)")
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.html, FILE.png or FILE.json")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from visual.export import FORMATS
    if Path(args.out).suffix.lower() not in FORMATS:
        raise UsageError(f"--out must end in {', '.join(FORMATS)}, got '{args.out}'")
    if args.preset is not None:
        if not args.weights:
            raise UsageError("--preset needs --weights FILE|imagenet (or inspect a trained run: --run DIR)")
        if args.view in SPLIT_VIEWS or args.view == "curves" or args.index is not None:
            raise UsageError(f"{'--index' if args.index is not None else '--view ' + args.view} needs a "
                             f"run's test split: use --run DIR (with --preset give --image PHOTO)")
    elif args.weights:
        raise UsageError("--weights goes with --preset (a run folder has its own weights)")
    if args.view in IMAGE_VIEWS and args.image is None and args.index is None:
        raise UsageError(f"--view {args.view} needs an image: give --image PATH or --index N")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be a positive whole number, got {args.limit}")
    if not 1 <= args.steps <= 1024:
        raise UsageError(f"--steps must be from 1 to 1024, got {args.steps}")


def load_split(run, need_masks: bool = False):
    """The run's data set with its test split as tested on; the training split is a token
    one when the run saved its normalisation statistics (they are all it is needed for)."""
    from lab.datasets import load_dataset
    info, settings = run.dataset_info or {}, run.settings or {}
    name = settings.get("dataset") or info.get("name")
    if not name:
        raise UsageError(f"{run.path} names no data set in settings.json; use --image PATH")
    shape = info.get("input_shape") or list(run.model.input_shape)
    train_size = min(int(info.get("train_size") or 64), 64) if _has_stats(info) else info.get("train_size")
    ds = load_dataset(name, settings.get("data_root", "data"), seed=int(settings.get("seed", 0)),
                      train_size=train_size, test_size=info.get("test_size"),
                      image_size=shape[1] if len(shape) == 3 and shape[1] == shape[2] else None)
    if need_masks and ds.test_masks is None:
        raise UsageError(f"data set '{name}' has no object masks; attention-quality needs one that has "
                         f"(e.g. shapes)")
    return ds


def _has_stats(info: dict) -> bool:
    return bool(info.get("mean")) and bool(info.get("std"))


def normalizer(run, ds=None):
    """uint8 (N, C, H, W) -> float input, with the training statistics the run used."""
    info = run.dataset_info or {}
    if _has_stats(info):
        c = len(info["mean"])
        mean = torch.tensor(info["mean"], dtype=torch.float32).view(c, 1, 1)
        std = torch.tensor(info["std"], dtype=torch.float32).view(c, 1, 1)
        return lambda x: (x.float() / 255.0 - mean) / std
    if ds is None:
        ds = load_split(run)
    return ds.normalize


def read_image(path: str, shape: tuple[int, int, int]) -> torch.Tensor:
    """An image file as uint8 (C, H, W) in the network's channels and size."""
    from PIL import Image, UnidentifiedImageError
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--image '{path}' does not exist or is not a file")
    if p.stat().st_size > MAX_IMAGE_BYTES:
        raise UsageError(f"--image '{path}' is larger than {MAX_IMAGE_BYTES // 2**20} MB")
    c, h, w = shape
    if c not in (1, 3):
        raise UsageError(f"--image works for grey or RGB networks; this one takes {c} channels (use --index)")
    try:
        with Image.open(p) as im:
            im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:100]
        raise UsageError(f"--image '{path}' cannot be read as an image: {reason}") from None
    return data.view(h, w, c).permute(2, 0, 1).contiguous()


def parse_target(text: str | None, classes: list[str]) -> int | None:
    if text is None:
        return None
    if text.strip().lstrip("-").isdigit():
        t = int(text)
    elif text in classes:
        t = classes.index(text)
    else:
        raise UsageError(f"--target must be a class index or one of: {', '.join(classes)[:300]}")
    if not 0 <= t < len(classes):
        raise UsageError(f"--target must be from 0 to {len(classes) - 1}, got {t}")
    return t


def make_view(args: argparse.Namespace, run, net=None):
    """The View the arguments ask for, of a run or (run None) of a lab.pretrained.Pretrained."""
    import visual
    if net is not None:
        model, classes = net.model, net.classes
    else:
        model = run.model
        spec_classes = int(run.spec.get("classes", 0))
        names = list((run.dataset_info or {}).get("classes") or [])
        classes = names if len(names) == spec_classes else [str(i) for i in range(spec_classes)]
    target = parse_target(args.target, classes)
    if args.layer is not None:   # before any data is loaded: a wrong name fails fast
        visual.resolve_layer(model, args.layer, LAYER_KINDS.get(args.view))
    if args.view in RUN_VIEWS:
        if args.view == "curves":
            return visual.curves_figure({run.path.name: run.metrics})
        return visual.params_flops_view(model) if args.view == "model" else visual.stack_diagram(model)
    if args.view in SPLIT_VIEWS:
        ds = load_split(run, need_masks=args.view == "attention-quality")
        norm = normalizer(run, ds)
        limit = args.limit or (QUALITY_LIMIT if args.view == "attention-quality" else len(ds.test_y))
        x, y = norm(ds.test_x[:limit]), ds.test_y[:limit]
        if args.view == "attention-quality":
            layers = None
            if args.layer:   # a CBAM layer sets both the CBAM map and Grad-CAM; another, Grad-CAM
                kind = visual.resolve_layer(model, args.layer).kind
                layers = {"gradcam": args.layer, **({"cbam": args.layer} if kind == "cbam" else {})}
            return visual.attention_quality(model, x, ds.test_masks[:limit], target=target, limit=limit,
                                            layers=layers, n_steps=args.steps)
        if args.view == "se-classes":
            return visual.se_class_view(model, x, y, args.layer, classes)
        return visual.confusion_view(model, x, y, classes)
    if net is not None:
        from lab.pretrained import open_photo, photo_tensors
        image, x = photo_tensors(open_photo(args.image), net.weights)
    elif args.image is not None:
        image = read_image(args.image, tuple(model.input_shape))
        x = normalizer(run)(image[None])
    else:
        ds = load_split(run)
        if not 0 <= args.index < len(ds.test_y):
            raise UsageError(f"--index must be from 0 to {len(ds.test_y) - 1} (the test split), "
                             f"got {args.index}")
        image = ds.test_x[args.index]
        x = normalizer(run, ds)(image[None])
    v = args.view
    if v == "features":
        return visual.feature_grid(model, x, image, args.layer, sort=args.sort)
    if v == "ghost":
        ghosts = [c.name for c in visual.layer_choices(model, ("ghost",))]
        if (args.layer is None and ghosts) or args.layer in ghosts:
            return visual.ghost_view(model, x, image, args.layer)
        return visual.redundancy_view(model, x, args.layer)
    if v == "redundancy":
        return visual.redundancy_view(model, x, args.layer)
    if v == "se":
        return visual.se_view(model, x, args.layer)
    if v == "cbam":
        return visual.cbam_view(model, x, image, args.layer)
    return visual.attribution_view(model, x, image, v, target=target, layer=args.layer,
                                   n_steps=args.steps, classes=classes)


def run(args: argparse.Namespace) -> int:
    from lab.runs import load_run
    from visual.export import write_view
    _check_args(args)
    if args.preset is not None:
        from lab.pretrained import pretrained
        view = make_view(args, None, pretrained(args.preset, args.weights))
    else:
        view = make_view(args, load_run(args.run))
    path = write_view(view, args.out)
    layer = view.data.get("layer")
    print(f"wrote {path} ({args.view}" + (f", {layer}" if layer else "") + ")")
    return 0
