"""Pretrained weights onto a built network by structure: module order and tensor shapes.

A preset that equals a torchvision architecture builds its tensors in the same order as
torchvision's `state_dict()` (the tests check this for ResNet, VGG, DenseNet, MobileNetV2,
AlexNet), so the i-th tensor of one is the i-th tensor of the other: no key tables per
network, and torchvision's old key spellings (DenseNet's `norm.1`) do not matter. Three
structural differences are understood:

* attention modules (SE, CBAM) that the plain network lacks are *new*: they keep their
  fresh initialisation and are reported;
* a CoordConv stem sees 2-3 extra coordinate channels: the image channels take the source
  weights and the coordinate channels start at zero, so the network computes exactly what
  the source network computes until fine-tuning moves them (Liu et al. 2018 let the conv
  learn how much to use the coordinates);
* `replace_head=True` leaves the classifier (the last spec layer) new, for another number
  of classes (transfer learning, Yosinski et al. 2014).

BatchNorm's `num_batches_tracked` is left out of the pairing (torchvision's older weight
files do not carry it) and copied beside its statistics where the file has it. Nothing is copied unless every tensor fits; otherwise `WeightsMismatch`
names the first tensor that does not (name, expected shape, found shape).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from blocks.library.attention import CBAM, SqueezeExcite
from blocks.library.conv import CoordConv

NEW_MODULES = (SqueezeExcite, CBAM)   # what an attention variant adds to its plain network
SKIPPED = ("num_batches_tracked",)


class WeightsMismatch(ValueError):
    """The weights do not fit the network: one line naming the first tensor that does not."""


@dataclass
class LoadReport:
    """What `load_by_structure` did, tensor names as in the network's state_dict."""
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)       # kept their fresh initialisation
    widened: list[str] = field(default_factory=list)   # loaded in part (CoordConv image channels)
    head_replaced: bool = False

    def summary(self, show: int = 4) -> str:
        """One line, e.g. "loaded 102 tensors, 48 new: layers.2.0.attn.channel.mlp.1.weight, …"."""
        line = f"loaded {len(self.loaded)} tensors"
        if self.new:
            names = ", ".join(self.new[:show]) + (f", … (+{len(self.new) - show} more)"
                                                  if len(self.new) > show else "")
            line += f", {len(self.new)} new: {names}"
        else:
            line += ", none new"
        if self.widened:
            line += f"; coordinate channels start at zero in {', '.join(self.widened)}"
        return line

    def as_dict(self) -> dict:
        return {"loaded": len(self.loaded), "new": list(self.new), "widened": list(self.widened),
                "head_replaced": self.head_replaced}


def _kept(items) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in items if k.rsplit(".", 1)[-1] not in SKIPPED]


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name.startswith(p + ".") for p in prefixes)


def _head_prefix(model: nn.Module) -> str | None:
    """Module name of the classifier: the last spec layer (or the last module with weights)."""
    info = getattr(model, "layer_info", None)
    if info:
        return info[-1].name
    named = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return named[-1] if named else None


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _mismatch(message: str, matched: int) -> WeightsMismatch:
    e = WeightsMismatch(message)
    e.matched = matched         # how far the pairing got: the better of two attempts is told
    return e


def plan(model: nn.Module, source: Mapping[str, torch.Tensor], replace_head: bool = False,
         label: str = "the network") -> tuple[list[tuple[str, str, str]], LoadReport]:
    """Pair every source tensor with one of the model's: [(ours, theirs, "copy"|"widen")] and
    the report, or raise WeightsMismatch. Nothing is changed. A network with SE/CBAM modules
    first takes them from the source too (weights saved from the same network, e.g. a run),
    else leaves them new (the plain network's weights)."""
    bad = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsMismatch(f"entry '{bad[0]}' of the weights is not a tensor")
    if not any(isinstance(m, NEW_MODULES) for m in model.modules()):
        return _plan(model, source, replace_head, label, skip_new=False)
    try:
        return _plan(model, source, replace_head, label, skip_new=False)
    except WeightsMismatch as same:
        try:
            return _plan(model, source, replace_head, label, skip_new=True)
        except WeightsMismatch as plain:
            raise (same if same.matched > plain.matched else plain) from None


def _plan(model: nn.Module, source: Mapping[str, torch.Tensor], replace_head: bool, label: str,
          skip_new: bool) -> tuple[list[tuple[str, str, str]], LoadReport]:
    new_prefixes = [n for n, m in model.named_modules() if isinstance(m, NEW_MODULES)] if skip_new else []
    widen_ok = set()
    for n, m in model.named_modules():
        if isinstance(m, CoordConv):
            conv = next(name for name, mm in m.named_modules() if isinstance(mm, nn.Conv2d))
            widen_ok.add(f"{n}.{conv}.weight")
    ours = _kept(model.state_dict().items())
    theirs = _kept(source.items())
    report = LoadReport(head_replaced=replace_head)
    head = _head_prefix(model) if replace_head else None
    if head is not None:
        n_head = sum(1 for k, _ in ours if _under(k, [head]))
        for k, v in ours:
            if _under(k, [head]):
                report.new.append(k)
        ours = [(k, v) for k, v in ours if not _under(k, [head])]
        if n_head:
            # the source's classifier: its last n_head tensors; the input side must still fit
            src_head = theirs[-n_head:]
            theirs = theirs[:-n_head]
            heads = [(k, v) for k, v in model.state_dict().items() if _under(k, [head])]
            for (k, v), (sk, sv) in zip(heads, src_head):
                if v.dim() != sv.dim() or v.shape[1:] != sv.shape[1:]:
                    raise _mismatch(
                        f"the weights do not fit {label}: its classifier '{k}' is {_shape(v)}, the "
                        f"file's '{sk}' is {_shape(sv)} (only the number of classes may differ)", 0)
    pairs: list[tuple[str, str, str]] = []
    j = 0
    for k, v in ours:
        if _under(k, new_prefixes):
            report.new.append(k)
            continue
        if j >= len(theirs):
            raise _mismatch(f"the weights do not fit {label}: the file ends after {len(theirs)} "
                            f"tensors, and '{k}' {_shape(v)} has none", j)
        sk, sv = theirs[j]
        j += 1
        role, src_role = k.rsplit(".", 1)[-1], sk.rsplit(".", 1)[-1]
        if sv.shape == v.shape and role == src_role:
            pairs.append((k, sk, "copy"))
            report.loaded.append(k)
        elif (k in widen_ok and sv.dim() == v.dim() == 4 and sv.shape[0] == v.shape[0]
              and sv.shape[2:] == v.shape[2:] and sv.shape[1] < v.shape[1]):
            pairs.append((k, sk, "widen"))
            report.loaded.append(k)
            report.widened.append(k)
        else:
            raise _mismatch(f"the weights do not fit {label}: '{k}' expects {_shape(v)}, the "
                            f"file's tensor {j - 1} '{sk}' is {_shape(sv)}", j - 1)
    if j < len(theirs):
        sk, sv = theirs[j]
        raise _mismatch(f"the weights do not fit {label}: the file has {len(theirs) - j} more "
                        f"tensors than it, from '{sk}' {_shape(sv)}", j)
    return pairs, report


def load_by_structure(model: nn.Module, source: Mapping[str, torch.Tensor], replace_head: bool = False,
                      label: str = "the network") -> LoadReport:
    """Copy `source` (a state_dict, e.g. torchvision's) into `model` by structure; see the
    module docstring. Raises WeightsMismatch before anything is copied."""
    pairs, report = plan(model, source, replace_head, label)
    state = model.state_dict()
    with torch.no_grad():
        for ours, theirs, how in pairs:
            dst, src = state[ours], source[theirs]
            if how == "copy":
                dst.copy_(src)
            else:
                dst.zero_()
                dst[:, :src.shape[1]].copy_(src)
            # BatchNorm's step count travels with its statistics where the file has it
            if ours.endswith(".running_mean") and theirs.endswith(".running_mean"):
                mine, its = (n[:-len("running_mean")] + SKIPPED[0] for n in (ours, theirs))
                if mine in state and its in source and source[its].shape == state[mine].shape:
                    state[mine].copy_(source[its])
    return report
