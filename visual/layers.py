"""The layer picker: which modules of a model a view can look at, with readable labels.

Lists spec-level layers with a feature-map output, the blocks of repeated layers, every
conv (a ConvNormAct counts as one conv, its output taken after norm and activation),
Ghost modules and SE/CBAM modules — nested ones included, e.g. "layers.3.1.conv1" inside
a residual block. Modules inside an attention module (its MLP, its 7×7 conv) are left out:
their outputs are gates, not feature maps, and CBAM calls its MLP twice per forward.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
import torch.nn as nn

from blocks.library.attention import CBAM, SqueezeExcite
from blocks.library.common import ConvNormAct
from blocks.library.ghost import GhostModule
from visual.hooks import captured, inspection_mode, model_device

KINDS = ("block", "conv", "ghost", "se", "cbam")


@dataclass(frozen=True)
class LayerChoice:
    name: str                  # module name, e.g. "layers.3.1.attn"
    label: str                 # "layers.3.1.attn  [CBAM]  32×16×16"
    kind: str                  # one of KINDS
    out_shape: tuple[int, ...]  # (C, H, W) for one image
    title: str = ""            # "layer 3 · block 2 · CBAM" (readable_name)


def _conv_marker(conv: nn.Module, cna: nn.Module | None = None) -> str:
    k = "×".join(map(str, conv.kernel_size))
    parts = [f"{'convT' if isinstance(conv, nn.ConvTranspose2d) else 'conv'} {k}"]
    if conv.groups > 1:
        parts.append("dw" if conv.groups == conv.in_channels else f"g{conv.groups}")
    if max(conv.stride) > 1:
        parts.append(f"s{max(conv.stride)}")
    if cna is not None:
        if hasattr(cna, "bn"):
            parts.append("BN")
        if hasattr(cna, "act"):
            parts.append(type(cna.act).__name__)
    return " ".join(parts[:1]) + ("" if len(parts) == 1 else " · " + " · ".join(parts[1:]))


def _classify(name: str, module: nn.Module, spec_blocks: dict[str, tuple[str, int]],
              parent_is_cna: bool) -> tuple[str, str] | None:
    """(kind, marker) for a listed module, None for one the picker leaves out."""
    if isinstance(module, CBAM):
        return "cbam", "CBAM"
    if isinstance(module, SqueezeExcite):
        return "se", "SE"
    if isinstance(module, GhostModule):
        return "ghost", f"Ghost ×{module.ratio}"
    if isinstance(module, ConvNormAct):
        return "conv", _conv_marker(module.conv, module)
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and not parent_is_cna:
        return "conv", _conv_marker(module)
    if name in spec_blocks:
        return "block", spec_blocks[name][0]
    parent, _, last = name.rpartition(".")
    if parent in spec_blocks and spec_blocks[parent][1] > 1 and last.isdigit():
        return "block", type(module).__name__   # one repeat of a repeated spec layer
    return None


def candidates(model: nn.Module) -> list[tuple[str, str, str]]:
    """(name, kind, marker) of every listed module, without running the model."""
    spec_blocks: dict[str, tuple[str, int]] = {}
    for info in getattr(model, "layer_info", []):
        if len(info.out_shape) == 3 and len(info.in_shape) == 3:  # feature map in and out
            spec_blocks[info.name] = (info.block + (f" ×{info.repeat}" if info.repeat > 1 else ""),
                                      info.repeat)
    found: list[tuple[str, str, str]] = []
    modules = dict(model.named_modules())
    skip_prefixes: list[str] = []
    for name, module in modules.items():
        if not name or any(name.startswith(p) for p in skip_prefixes):
            continue
        parent = modules.get(name.rpartition(".")[0])
        c = _classify(name, module, spec_blocks, isinstance(parent, ConvNormAct))
        if isinstance(module, (CBAM, SqueezeExcite)):
            skip_prefixes.append(name + ".")
        if c is not None:
            found.append((name, *c))
    return found


def layer_choices(model: nn.Module, kinds: tuple[str, ...] | None = None,
                  input_shape: tuple[int, ...] | None = None) -> list[LayerChoice]:
    """Every inspectable layer of `model` in definition order, optionally only some kinds.
    Runs one forward of a zero image (eval, no grad) to put each output's shape in its label."""
    input_shape = tuple(input_shape or model.input_shape)
    found = [c for c in candidates(model) if not kinds or c[1] in kinds]
    x = torch.zeros((1, *input_shape), device=model_device(model))
    with inspection_mode(model), torch.no_grad(), \
            captured(model, [n for n, _, _ in found]) as store:
        model(x)
    out = []
    for name, kind, marker in found:
        t = store.get(name)
        if t is None or t.dim() != 4:
            continue
        shape = tuple(int(s) for s in t.shape[1:])
        out.append(LayerChoice(name, f"{name}  [{marker}]  {'×'.join(map(str, shape))}", kind, shape,
                               readable_name(model, name)))
    return out


# module attribute names -> words (a trailing digit becomes a number: conv1 -> conv 1)
WORDS = {"attn": "attention", "dw": "depthwise", "cheap": "cheap", "primary": "primary",
         "shortcut": "shortcut", "ghost": "Ghost", "se": "SE", "expand": "expand",
         "project": "project", "features": "features", "head": "head"}


def _word(token: str) -> str:
    stem = token.rstrip("0123456789")
    num = token[len(stem):]
    word = WORDS.get(stem, stem.replace("_", " "))
    return f"{word} {num}" if num and stem else word


def _kind_word(module: nn.Module) -> str | None:
    if isinstance(module, CBAM):
        return "CBAM"
    if isinstance(module, SqueezeExcite):
        return "SE"
    if isinstance(module, GhostModule):
        return "Ghost"
    if isinstance(module, (ConvNormAct, nn.Conv2d, nn.ConvTranspose2d)):
        return "conv"
    return None


def readable_name(model: nn.Module, name: str) -> str:
    """A module name as words for axes and titles: "layers.3.1.attn" -> "layer 3 · block 2 ·
    CBAM", "layers.12.ghost2.primary.0" -> "layer 12 · Ghost 2 · primary conv" (the module
    name itself goes into hover text and data). Names outside `layers.N` come back as given."""
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "layers" or not parts[1].isdigit():
        return name
    modules = dict(model.named_modules())
    i = int(parts[1])
    infos = getattr(model, "layer_info", [])
    repeat = infos[i].repeat if i < len(infos) else 1
    words = [f"layer {i}"]
    rest = parts[2:]
    if repeat > 1 and rest and rest[0].isdigit():
        words.append(f"block {int(rest[0]) + 1}")
        rest = rest[1:]
    prefix = ".".join(parts[:len(parts) - len(rest)])
    for k, token in enumerate(rest):
        path = prefix + "." + ".".join(rest[:k + 1])
        kind = _kind_word(modules.get(path))
        if token.isdigit():
            if k < len(rest) - 1:
                words.append(f"unit {int(token) + 1}")   # a dense block's layers etc.
            elif kind and not words[-1].endswith(kind):
                # shortcut.0 (a conv) -> "shortcut conv"; "shortcut conv 2" when it has two
                parent = modules.get(path.rpartition(".")[0])
                alike = [n for n, c in (parent.named_children() if parent is not None else [])
                         if _kind_word(c) == kind]
                words[-1] += f" {kind}" + (f" {alike.index(token) + 1}" if len(alike) > 1
                                           and token in alike else "")
            continue
        word = _word(token)
        if kind in ("CBAM", "SE"):
            word = kind
        elif kind == "Ghost" and not word.startswith("Ghost"):
            word = f"{word} (Ghost)"
        elif kind == "conv" and k == len(rest) - 1 and "conv" not in word:
            word += " conv"
        words.append(word)
    kind = _kind_word(modules.get(name))
    if not rest and kind in ("CBAM", "SE", "Ghost"):
        words.append(kind)
    elif not rest and i < len(infos):     # the spec layer itself, or one block of it
        block = infos[i].block.replace("_", " ")
        words.append(block + (f" ×{repeat}" if repeat > 1 and len(parts) == 2 else ""))
    return " · ".join(words)


def _shortened(names: list[str], limit: int = 10) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    head = names[:limit - 2]
    return ", ".join(head) + f", … ({len(names) - limit} more) …, " + ", ".join(names[-2:])


def resolve_layer(model: nn.Module, name: str | None, kinds: tuple[str, ...] | None = None,
                  default: str = "last") -> LayerChoice:
    """The layer called `name` (None: the first or last allowed one, per `default`), without
    running the model (its `out_shape` is left empty). Raises ValueError naming the valid
    layers — one line, shortened — for any other name."""
    found = [c for c in candidates(model) if not kinds or c[1] in kinds]
    what = "/".join(kinds) if kinds else "inspectable"
    if not found:
        raise ValueError(f"this model has no {what} layer")
    if name is None:
        # "last" prefers the last spec-level layer: definition order is not forward order
        # inside a block (a residual block defines its shortcut after its convs).
        top = {i.name for i in getattr(model, "layer_info", [])}
        spec_level = [c for c in found if c[0] in top]
        pick = found[0] if default == "first" else (spec_level or found)[-1]
        return LayerChoice(pick[0], f"{pick[0]}  [{pick[2]}]", pick[1], ())
    for n, kind, marker in found:
        if n == name:
            return LayerChoice(n, f"{n}  [{marker}]", kind, ())
    names = [c[0] for c in found]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ValueError(f"no {what} layer '{name[:80]}'; {hint}valid: {_shortened(names)}")


def get_module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]
