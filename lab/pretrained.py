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
    """The state_dict `source` names ("imagenet" or a file path), in module order."""
    if str(source).strip().lower() == IMAGENET:
        return in_module_order(preset_name, download_imagenet(preset_name))
    return in_module_order(preset_name, read_weights_file(source))


def in_module_order(preset_name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with torchvision's names put in the order torchvision's own model lists them.
    A .pth keeps the order it was saved in, but a .safetensors file stores its tensors sorted
    by dtype and name, which loses the module order the structural mapping relies on. Names
    the reference model does not have keep their place after the ones it has."""
    import torchvision
    with torch.device("meta"):
        ref = torchvision.models.get_model(torchvision_name(preset_name), weights=None)
    order = [k for k in ref.state_dict() if k in state]
    return {**{k: state[k] for k in order}, **{k: v for k, v in state.items() if k not in order}}


def pretrained(preset_name: str, source: str | Path, input_shape: Any = None, classes: int | None = None,
               replace_head: bool | None = None, width: float = 1.0) -> Pretrained:
    """A preset with weights from `source` ("imagenet" or a file). With `classes` other than
    the weights' 1,000 the classifier is new (transfer learning). Raises WeightsError."""
    import presets
    name = presets.get_preset(preset_name).name
    entry = weights_entry(name, None if str(source).lower() == IMAGENET else source)
    categories = list(entry.meta["categories"])
    n = len(categories) if classes is None else int(classes)
    replace = (n != len(categories)) if replace_head is None else replace_head
    shape = tuple(input_shape) if input_shape is not None else (3, 224, 224)
    p = presets.get_preset(name)
    if min(shape[1], shape[2]) < p.small_below and p.small_layers is not None:
        raise WeightsError(f"pretrained {name} needs its paper layers: an input of at least "
                           f"{p.small_below}×{p.small_below} (got {shape[1]}×{shape[2]})")
    if width != 1.0:
        raise WeightsError(f"pretrained weights need width 1 (got {width})")
    spec = presets.load_preset(name, shape, n, 1.0)
    state = load_source(name, source)
    model = build(spec)
    label = f"{name} at {shape[0]}×{shape[1]}×{shape[2]}"
    try:
        report = load_by_structure(model, state, replace_head=replace, label=label)
    except WeightsMismatch as e:
        raise WeightsError(str(e)) from None
    model.eval()
    return Pretrained(model, spec, IMAGENET if str(source).lower() == IMAGENET else str(source),
                      entry, report, categories if not replace else [str(i) for i in range(n)])


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
