"""Presets: classic networks as spec files (presets/*.json) and a tiny loader.

A preset file holds the paper-resolution `layers` and, where the paper's down-sampling
would eat a small image, `small_layers` used when min(H, W) < `small_below` (64 unless
the file says otherwise) — the way d2l and the CIFAR ResNets adapt ImageNet networks
(3×3 stride-1 stem, no early max-pool). See presets/README.md for the file format.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocks import SpecError, normalize_spec

PRESET_DIR = Path(__file__).resolve().parent
SMALL_BELOW = 64
DEFAULT_PRESET = "ResNet-18 + CBAM"
# The app's and the CLI's CPU-sized setting for DEFAULT_PRESET.
DEFAULT_INPUT = (3, 32, 32)
DEFAULT_CLASSES = 10
DEFAULT_WIDTH = 0.25

_FILE_KEYS = {"name", "year", "paper", "description", "default", "small_below", "layers",
              "small_layers", "torchvision"}


@dataclass(frozen=True)
class Preset:
    """One preset file, read and checked (layers are validated when a spec is built)."""
    name: str
    slug: str
    year: int
    paper: str
    description: str
    input: tuple[int, int, int]
    classes: int
    width: float
    layers: list
    small_layers: list | None
    small_below: int
    # the torchvision model whose weights fit the paper-resolution layers ("resnet18"; an
    # attention variant names its plain network), or None: see blocks/pretrained.py
    torchvision: str | None = None

    def spec(self, input_shape: Any = None, classes: int | None = None,
             width: float | None = None) -> dict:
        """A spec dict for blocks.build; small inputs get `small_layers`. Raises SpecError."""
        shape = self.input if input_shape is None else _shape(input_shape)
        small = self.small_layers is not None and min(shape[1], shape[2]) < self.small_below
        spec = {"name": self.name, "input": list(shape),
                "classes": self.classes if classes is None else classes,
                "width": self.width if width is None else width,
                "layers": copy.deepcopy(self.small_layers if small else self.layers)}
        normalize_spec(spec)  # fail here, with the spec's own message, not later in the app
        return spec


def _shape(value: Any) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise SpecError(f"'input' must be [channels, height, width] as integers, got {value!r}")
    return tuple(value)


def _read(path: Path) -> Preset:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"preset file {path.name} cannot be read: {e}") from None
    problem = _file_problem(data)
    if problem:
        raise ValueError(f"preset file {path.name}: {problem}")
    default = data["default"]
    return Preset(data["name"], path.stem, data["year"], data["paper"], data["description"],
                  tuple(default["input"]), default["classes"], float(default["width"]),
                  data["layers"], data.get("small_layers"), data.get("small_below", SMALL_BELOW),
                  data.get("torchvision"))


def _file_problem(data: Any) -> str:
    if not isinstance(data, dict):
        return "not a JSON object"
    unknown = set(data) - _FILE_KEYS
    if unknown:
        return f"unknown key(s) {', '.join(sorted(unknown))}"
    for key, kind in (("name", str), ("year", int), ("paper", str), ("description", str),
                      ("default", dict), ("layers", list)):
        if not isinstance(data.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    if set(data["default"]) != {"input", "classes", "width"}:
        return "'default' must hold exactly input, classes and width"
    if "small_layers" in data and not isinstance(data["small_layers"], list):
        return "'small_layers' must be a list"
    if not isinstance(data.get("torchvision", ""), str):
        return "'torchvision' must be a torchvision model name"
    if not isinstance(data.get("small_below", SMALL_BELOW), int):
        return "'small_below' must be an integer"
    return ""


def all_presets() -> list[Preset]:
    """Every preset, oldest paper first (then by name)."""
    return sorted((_read(p) for p in PRESET_DIR.glob("*.json")), key=lambda p: (p.year, p.name))


def list_presets() -> list[str]:
    """Display names, e.g. "ResNet-18 + CBAM", oldest paper first."""
    return [p.name for p in all_presets()]


def get_preset(name: str) -> Preset:
    """A preset by display name or file slug, case-insensitively ("resnet18_cbam").
    Unknown names raise ValueError listing the presets."""
    key = str(name).strip().lower()
    presets = all_presets()
    for p in presets:
        if key in (p.name.lower(), p.slug):
            return p
    raise ValueError(f"unknown preset '{str(name)[:60]}'; presets: "
                     + ", ".join(p.name for p in presets))


def load_preset(name: str, input_shape: tuple[int, int, int] | list | None = None,
                classes: int | None = None, width: float | None = None) -> dict:
    """A spec dict ready for blocks.build: the preset at its paper's defaults, or at
    `input_shape` (C, H, W) / `classes` / `width` where given. Raises ValueError for an
    unknown name and SpecError (a ValueError) for settings it cannot take."""
    return get_preset(name).spec(input_shape, classes, width)
