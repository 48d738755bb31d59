"""Where pretrained weights come from, and the photos they look at.

`--weights imagenet` goes through torchvision's weights API (its URL, torch.hub's download,
cache and hash check); `--weights FILE` reads a `.safetensors` file or a `.pth` with
`torch.load(weights_only=True)` (never plain unpickling). Either is mapped onto the preset
by structure (blocks/pretrained.py). The 1,000 ImageNet class names and the preprocessing
(resize, centre crop, mean/std) come from the torchvision weights' own metadata, offline.
"""
from __future__ import annotations

import contextlib
import io
import pickle
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blocks import build
from blocks.pretrained import LoadReport, WeightsMismatch, load_by_structure

MAX_WEIGHTS_BYTES = 2 * 1024 ** 3
MAX_PHOTO_BYTES = 50 * 1024 * 1024
MAX_PHOTO_PIXELS = 40_000_000
IMAGENET = "imagenet"


class WeightsError(ValueError):
    """Weights that cannot be had or do not fit: one line a user can act on."""


@dataclass
class Pretrained:
    """A preset with weights: the network (eval mode), where its weights came from, how they
    fit, its class names and its preprocessing."""
    model: torch.nn.Module
    spec: dict
    source: str                 # "imagenet" or the file's path
    weights: Any                # the torchvision Weights entry giving labels and preprocessing
    report: LoadReport
    classes: list[str]

    @property
    def mean(self) -> list[float]:
        return list(self.weights.transforms().mean)

    @property
    def std(self) -> list[float]:
        return list(self.weights.transforms().std)

    def settings(self) -> dict:
        """What a run records about its starting weights."""
        return {"weights": self.source, "weights_name": str(self.weights),
                "weights_loaded": len(self.report.loaded), "weights_new": len(self.report.new),
                "head_replaced": self.report.head_replaced}


def torchvision_name(preset_name: str) -> str:
    """The torchvision model whose weights fit a preset; WeightsError for presets without one."""
    import presets
    p = presets.get_preset(preset_name)
    if not p.torchvision:
        have = [q.name for q in presets.all_presets() if q.torchvision]
        raise WeightsError(f"preset '{p.name}' has no pretrained weights (it equals no torchvision "
                           f"model); presets with weights: {', '.join(have)}")
    return p.torchvision


def weights_entry(preset_name: str, file: str | Path | None = None):
    """The torchvision Weights entry for a preset: the one whose file name a local file carries
    (resnet50-0676ba61.pth is IMAGENET1K_V1), else the model's DEFAULT."""
    import torchvision
    enum = torchvision.models.get_model_weights(torchvision_name(preset_name))
    if file is not None:
        for w in enum:
            if Path(w.url).name == Path(file).name:
                return w
    return enum.DEFAULT


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]


def download_imagenet(preset_name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for a preset (download, cache, hash check by torch.hub).
    Offline: WeightsError saying where to put the file."""
    w = weights_entry(preset_name)
    try:
        with contextlib.redirect_stderr(io.StringIO()):   # torch.hub's "Downloading: …" line
            return w.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        where = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(f"cannot download ImageNet weights for {preset_name} ({_one_line(e)}): put "
                           f"{Path(w.url).name} from {w.url} in {where}/ or pass a local file "
                           f"(--weights FILE)") from None


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from `.safetensors` or a torch `.pth`/`.pt` (weights_only: tensors and
    plain containers, no code). Refusals are WeightsError one-liners."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file '{path}' does not exist or is not a file")
    if p.stat().st_size > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"weights file '{p.name}' is larger than {MAX_WEIGHTS_BYTES // 1024 ** 3} GB")
    if p.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise WeightsError(f"'{p.name}' is not a readable .safetensors file ({_one_line(e)})") from None
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise WeightsError(f"'{p.name}' holds more than tensors (torch.load with weights_only=True "
                               f"refused it: {_one_line(e)}); nothing in it was run") from None
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError,
                TypeError) as e:
            raise WeightsError(f"'{p.name}' is not a readable .pth or .safetensors weights file "
                               f"(truncated or another format: {_one_line(e)})") from None
    return _state_dict_of(state, p.name)


def _state_dict_of(obj: Any, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file; a checkpoint's {"state_dict"|"model": {...}} is opened."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict) and len(obj) <= 8:
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"'{name}' is not a state_dict (a mapping of names to tensors)")
    return dict(obj)


def load_source(preset_name: str, source: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict `source` names: "imagenet" (torchvision's download) or a file path."""
    if is_imagenet(source):
        return download_imagenet(preset_name)
    return read_weights_file(source)


def is_imagenet(source: str | Path) -> bool:
    return str(source).strip().lower() == IMAGENET


def in_module_order(state: dict[str, torch.Tensor], *orders: list[str]) -> tuple[dict[str, torch.Tensor], int]:
    """`state` re-ordered by whichever reference name list (`orders`: torchvision's model,
    our network) knows most of its names, and that list's index (-1: none knew any). A .pth
    keeps the order it was saved in, but a .safetensors file stores its tensors sorted by
    dtype and name, which loses the module order the structural mapping relies on. Names the
    reference does not have keep their place after the ones it has."""
    overlap = [sum(1 for k in order if k in state) for order in orders]
    if not overlap or max(overlap) == 0:
        return state, -1
    best = overlap.index(max(overlap))
    known = [k for k in orders[best] if k in state]
    seen = set(known)
    return {**{k: state[k] for k in known}, **{k: v for k, v in state.items() if k not in seen}}, best


def _torchvision_keys(tv_name: str | None) -> list[str]:
    if not tv_name:
        return []
    import torchvision
    with torch.device("meta"):
        return list(torchvision.models.get_model(tv_name, weights=None).state_dict())


def load_into(model: torch.nn.Module, source: str | Path, replace_head: bool = False,
              preset_name: str | None = None) -> tuple[LoadReport, Any, bool]:
    """Load `source` into a built preset `model` by structure: (report, the torchvision
    Weights entry of the preset or None, whether the tensors are torchvision's — then its
    preprocessing applies). `source` is "imagenet", a torchvision file, or a file saved from
    a network of the same structure (a run's weights.safetensors). Raises WeightsError."""
    import presets
    name = preset_name or getattr(model, "spec", {}).get("name", "")
    try:
        preset = presets.get_preset(name)
    except ValueError:
        preset = None
    if preset is None or not preset.torchvision:
        if is_imagenet(source):
            torchvision_name(name)               # raises the "has no pretrained weights" line
        tv_name = None
    else:
        tv_name = preset.torchvision
    state = load_source(name, source)
    state, which = in_module_order(state, _torchvision_keys(tv_name), list(model.state_dict()))
    from_torchvision = is_imagenet(source) or (tv_name is not None and which == 0)
    entry = weights_entry(name, None if is_imagenet(source) else source) if tv_name else None
    spec = getattr(model, "spec", None) or {}
    shape = tuple(spec.get("input") or ())
    label = f"{name or 'the network'}" + (f" at {'×'.join(map(str, shape))}" if shape else "")
    try:
        report = load_by_structure(model, state, replace_head=replace_head, label=label)
    except WeightsMismatch as e:
        hint = ""
        if from_torchvision and preset is not None:
            if shape and preset.small_layers is not None and min(shape[1:]) < preset.small_below:
                hint = (f"; ImageNet weights need the paper's layers: an input of at least "
                        f"{preset.small_below}×{preset.small_below}")
            elif spec.get("width", 1.0) != 1.0:
                hint = "; ImageNet weights need width 1"
        raise WeightsError(f"{e}{hint}") from None
    return report, entry, from_torchvision


def pretrained(preset_name: str, source: str | Path, input_shape: Any = None, classes: int | None = None,
               replace_head: bool | None = None, width: float = 1.0) -> Pretrained:
    """A preset with weights from `source` ("imagenet" or a file), in eval mode. With `classes`
    other than the weights' 1,000 the classifier is new (transfer learning). Raises WeightsError."""
    import presets
    name = presets.get_preset(preset_name).name
    entry = weights_entry(name, None if is_imagenet(source) else source)
    categories = list(entry.meta["categories"])
    n = len(categories) if classes is None else int(classes)
    replace = (n != len(categories)) if replace_head is None else replace_head
    shape = tuple(input_shape) if input_shape is not None else (3, 224, 224)
    spec = presets.load_preset(name, shape, n, width)
    model = build(spec)
    report, entry, _ = load_into(model, source, replace, name)
    model.eval()
    return Pretrained(model, spec, IMAGENET if is_imagenet(source) else str(source),
                      entry, report, categories if not replace else [str(i) for i in range(n)])


# --- fine-tuning -----------------------------------------------------------------------------

FREEZE = ("none", "backbone")


def _eval_only(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    """`train()` of a frozen BatchNorm: it stays in eval mode, its statistics fixed."""
    return torch.nn.Module.train(self, False)


def freeze_backbone(model: torch.nn.Module, report: LoadReport) -> int:
    """Train only what the weights did not provide (the new head, SE/CBAM modules, CoordConv's
    coordinate channels): every loaded parameter stops requiring grad and every BatchNorm
    whose parameters are all loaded keeps its running statistics (stays in eval mode even
    under model.train()). Returns the number of trainable parameters left."""
    frozen = set(report.loaded) - set(report.widened)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            if all(f"{name}.{k}" in frozen for k, _ in m.named_parameters(recurse=False)):
                m.train = types.MethodType(_eval_only, m)
                m.eval()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def start_from(model: torch.nn.Module, source: str | Path, freeze: str = "none") -> dict:
    """Fine-tuning's start: `source`'s weights into a built preset with a new classifier,
    frozen as `freeze` says. Returns what a run records: where the weights came from, what
    loaded and what is new, and the normalisation (mean/std) they expect when they are
    torchvision's (else None: the data set's own statistics)."""
    if freeze not in FREEZE:
        raise WeightsError(f"freeze must be one of {', '.join(FREEZE)}, got '{freeze}'")
    report, entry, from_tv = load_into(model, source, replace_head=True)
    trainable = (freeze_backbone(model, report) if freeze == "backbone"
                 else sum(p.numel() for p in model.parameters()))
    t = entry.transforms() if (entry is not None and from_tv) else None
    return {"source": IMAGENET if is_imagenet(source) else str(source),
            "weights_name": str(entry) if (entry is not None and from_tv) else None,
            "loaded": len(report.loaded), "new": len(report.new), "summary": report.summary(),
            "freeze": freeze, "trainable_params": int(trainable),
            "mean": list(t.mean) if t else None, "std": list(t.std) if t else None}


# --- photos ----------------------------------------------------------------------------------

def open_photo(source: str | Path | bytes):
    """An RGB PIL image from a file or bytes (JPEG/PNG/WebP/…, any size within limits), turned
    upright by its EXIF orientation. ValueError (one line) for anything else."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "the upload"
    else:
        p = Path(source)
        if not p.is_file():
            raise ValueError(f"image '{source}' does not exist or is not a file")
        if p.stat().st_size > MAX_PHOTO_BYTES:
            raise ValueError(f"image '{p.name}' is larger than {MAX_PHOTO_BYTES // 2 ** 20} MB")
        data, name = p.read_bytes(), f"'{p.name}'"
    try:
        im = Image.open(io.BytesIO(data))
        if im.width * im.height > MAX_PHOTO_PIXELS:
            raise ValueError(f"image {name} is {im.width}×{im.height}, more than "
                             f"{MAX_PHOTO_PIXELS // 1_000_000} million pixels")
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise ValueError(f"image {name} cannot be read as an image: {_one_line(e)}") from None


def photo_tensors(image, weights) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 (3, H, W) crop as the network sees it, float (1, 3, H, W) normalised input) with
    the weights' preprocessing: resize the short side, centre crop, scale to [0, 1], mean/std —
    what `weights.transforms()` does, split so the views can draw the crop."""
    import torchvision.transforms.functional as TF
    t = weights.transforms()
    im = TF.resize(image, t.resize_size, interpolation=t.interpolation, antialias=t.antialias)
    im = TF.center_crop(im, t.crop_size)
    u8 = TF.pil_to_tensor(im)
    x = TF.normalize(TF.convert_image_dtype(u8, torch.float32), mean=t.mean, std=t.std)
    return u8, x[None]


def top_k(model: torch.nn.Module, x: torch.Tensor, classes: list[str], k: int = 5) -> list[dict]:
    """[{"index", "label", "prob"}] for the k most probable classes of one image."""
    with torch.no_grad():
        probs = model.eval()(x).float().softmax(1)[0]
    p, i = probs.topk(min(k, probs.numel()))
    return [{"index": int(a), "label": classes[int(a)], "prob": float(b)} for a, b in zip(i, p)]
