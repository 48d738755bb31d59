"""The block registry: one entry per block name, the single source of truth.

Everything about a block that the rest of ConvScope needs — constructor, parameter
schema, one-line help, paper — lives in its `BlockInfo`. The palette, the UI forms,
validation, `python -m lab blocks` and the docs are generated from it.
Modelled on torchvision's `register_model` (refuses a second entry of one name).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

Shape = tuple[int, ...]  # (C, H, W) for feature maps, (F,) for flat features

GROUPS = ("convolution", "attention", "regularisation", "activation",
          "normalisation", "pooling", "composite", "head")


class SpecError(ValueError):
    """The one error a network spec can raise; its message names layer, block and problem."""

    def __init__(self, message: str, layer: int | None = None, block: str | None = None):
        self.layer, self.block, self.problem = layer, block, message
        prefix = ""
        if layer is not None:
            prefix = f"layer {layer} ({block}): " if block else f"layer {layer}: "
        super().__init__(prefix + message)


@dataclass(frozen=True)
class Param:
    """One block parameter: name, type, default, range or choices and a line of help.

    `type` is one of "int", "float", "bool", "str", "ints" (a list of ints).
    `channels=True` marks channel counts, which the spec's `width` multiplier scales.
    A default of None means "derived" (e.g. a final linear's `out` becomes `classes`).
    """
    name: str
    type: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    channels: bool = False
    optional: bool = False  # None is an accepted value

    def validate(self, value: Any) -> Any:
        """Return the value coerced to this parameter's type or raise ValueError."""
        if value is None:
            if self.optional or self.default is None:
                return None
            raise ValueError(f"'{self.name}' must not be empty")
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError(f"'{self.name}' must be true or false, got {short_repr(value)}")
        if self.type == "int":
            value = _as_int(self.name, value)
            self._check_range(value)
            return value
        if self.type == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"'{self.name}' must be a number, got {short_repr(value)}")
            if isinstance(value, int):
                self._check_range(value)  # before float(): a huge integer overflows it
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"'{self.name}' must be a finite number, got {value}")
            self._check_range(value)
            return value
        if self.type == "str":
            if not isinstance(value, str):
                raise ValueError(f"'{self.name}' must be a string, got {short_repr(value)}")
            value = value.lower()
            if self.choices and value not in self.choices:
                raise ValueError(f"'{self.name}' must be one of {', '.join(self.choices)}, "
                                 f"got {short_repr(value)}")
            return value
        if self.type == "ints":
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"'{self.name}' must be a non-empty list of integers, "
                                 f"got {short_repr(value)}")
            if len(value) > 64:
                raise ValueError(f"'{self.name}' has {len(value)} entries; at most 64 are allowed")
            out = [_as_int(self.name, v) for v in value]
            for v in out:
                self._check_range(v)
            return out
        raise AssertionError(f"unknown param type {self.type}")

    def _check_range(self, value: float) -> None:
        if self.min is not None and value < self.min:
            raise ValueError(f"'{self.name}' must be at least {_fmt(self.min)}, got {_fmt(value)}")
        if self.max is not None and value > self.max:
            raise ValueError(f"'{self.name}' must be at most {_fmt(self.max)}, got {_fmt(value)}")

    def describe(self) -> str:
        if self.choices:
            rng = "|".join(self.choices)
        elif self.min is not None or self.max is not None:
            lo = _fmt(self.min) if self.min is not None else ""
            hi = _fmt(self.max) if self.max is not None else ""
            rng = f"{lo}..{hi}"
        else:
            rng = self.type
        return f"{self.name}={self.default!r} [{rng}]"

    def as_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "default": self.default, "help": self.help,
                "min": self.min, "max": self.max, "choices": list(self.choices) if self.choices else None,
                "channels": self.channels}


def _fmt(v: float) -> str:
    if isinstance(v, int):
        return short_repr(v)
    return str(int(v)) if v.is_integer() else f"{v:g}"


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() for error messages: bounded in length, and safe on integers too long for
    Python to print (repr raises beyond 4,300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"{'a negative' if value < 0 else 'an'} integer of about {digits:,} digits"
    if isinstance(value, (list, tuple, dict)) and len(value) > limit:
        return f"a {type(value).__name__} of {len(value):,} items"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"'{name}' must be an integer, got {short_repr(value)}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"'{name}' must be an integer, got {short_repr(value)}")
    return value


Factory = Callable[..., nn.Module]  # factory(in_shape, **params) -> nn.Module


@dataclass(frozen=True)
class BlockInfo:
    name: str
    group: str
    factory: Factory
    params: tuple[Param, ...]
    description: str
    paper: str = ""
    takes_flat: bool = False   # accepts (F,) inputs (linear, dropout, activations)
    inspect: tuple[str, ...] = field(default_factory=tuple)  # what inspection can ask of it

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


_REGISTRY: dict[str, BlockInfo] = {}


def register(name: str, group: str, params: list[Param] | tuple[Param, ...], description: str,
             paper: str = "", takes_flat: bool = False, inspect: tuple[str, ...] = ()):
    """Decorator: register a factory `f(in_shape, **params) -> nn.Module` under `name`."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}")

    def wrap(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"a block named {name!r} is already registered")
        _REGISTRY[name] = BlockInfo(name, group, factory, tuple(params), description, paper,
                                    takes_flat, tuple(inspect))
        return factory
    return wrap


def get_block(name: str) -> BlockInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(name) from None


def list_blocks() -> list[BlockInfo]:
    _ensure_loaded()
    return [_REGISTRY[k] for k in sorted(_REGISTRY, key=lambda k: (GROUPS.index(_REGISTRY[k].group), k))]


def _ensure_loaded() -> None:
    # The block modules register themselves on import.
    from blocks import library  # noqa: F401
