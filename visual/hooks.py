"""Looking inside a model for one call: eval mode, forward hooks, attention weights.

Everything here is a context manager or a function that attaches what it needs for the
call and removes it afterwards, even when the forward raises, so a view never leaves a
hook, a changed train/eval flag or a stored attention tensor behind. Eval mode also means
BatchNorm statistics are never updated by inspection.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def inspection_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode for the block, then restore each module's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, torch.Tensor):
                return v
    return None


@contextmanager
def captured(model: nn.Module, names: list[str], what: str = "output") -> Iterator[dict[str, torch.Tensor]]:
    """Record the (detached) output — or first input with what="input" — of named submodules
    during the block. A module called more than once keeps its last call."""
    modules = dict(model.named_modules())
    store: dict[str, torch.Tensor] = {}
    handles = []

    def make(name: str):
        def hook(_m, inputs, output):
            t = _first_tensor(inputs if what == "input" else output)
            if t is not None:
                store[name] = t.detach()
        return hook

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(make(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def run_captured(model: nn.Module, x: torch.Tensor, names: list[str],
                 what: str = "output") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One eval-mode, no-grad forward of `x`; returns (logits, {name: captured tensor})."""
    x = x.to(model_device(model))
    with inspection_mode(model), torch.no_grad(), captured(model, names, what) as store:
        logits = model(x)
    return logits, dict(store)


@contextmanager
def keeping_weights(modules: list[nn.Module]) -> Iterator[list[nn.Module]]:
    """Ask attention modules to keep their last weights for the block; afterwards restore
    `keep_weights` and drop the stored tensors of modules that were not keeping them."""
    before = [(m, getattr(m, "keep_weights", False)) for m in modules]
    for m in modules:
        m.keep_weights = True
    try:
        yield modules
    finally:
        for m, flag in before:
            m.keep_weights = flag
            if not flag:
                for attr in ("last_weights", "last_channel", "last_spatial"):
                    if hasattr(m, attr):
                        setattr(m, attr, None)


def forward_counts(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """How many times each named submodule runs in one forward of `x` (eval, no grad)."""
    counts: dict[str, int] = {}
    handles = []
    try:
        for name, m in model.named_modules():
            if name:
                counts[name] = 0
                handles.append(m.register_forward_hook(
                    lambda _m, _i, _o, name=name: counts.__setitem__(name, counts[name] + 1)))
        with inspection_mode(model), torch.no_grad():
            model(x.to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return counts


def reused_modules(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Submodules called more than once per forward. Captum's layer methods and DeepLift-style
    rules need one call per module; Grad-CAM on such a module would see only its last call."""
    return [n for n, c in forward_counts(model, x).items() if c > 1]


def all_hooks_removed(model: nn.Module) -> bool:
    """True when no module of `model` has a forward, pre-forward or backward hook attached."""
    return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   or getattr(m, "_backward_pre_hooks", None) for m in model.modules())
