"""A training run's state at an epoch boundary, as tensors plus JSON (never pickle).

`Trainer.checkpoint()` captures one right after an "epoch" event and
`Trainer(..., resume=checkpoint)` starts from it. It holds everything the rest of the run
depends on, so that stopping after epoch k and resuming gives bit for bit the run that was
never interrupted (the property PyTorch's reproducibility notes and W&B/Lightning resume
aim for):

* the network's state_dict (weights and BatchNorm buffers);
* the optimizer's state (Adam's moments and step counts, SGD's momentum buffers) and its
  param groups, and a GradScaler's state on CUDA with fp16;
* the generators: the data-order permutation, the augmentation draws, and torch's global
  generator that dropout and DropBlock draw from — one state per process under torchrun
  (each process seeds its own) — plus the CUDA generator on a GPU;
* where the run is: epoch, step, how many steps the next report waits (torchrun), the
  running totals behind the "end" event, and every event so far.

Tensors go under flat names ("model.<key>", "optim.<param>.<name>", "rng.<name>") into one
safetensors file; everything else is the JSON `meta`. lab/runs.py writes and reads the pair.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that does not fit the run it should resume; one line for the user."""


@dataclass
class Checkpoint:
    """`tensors`: flat name -> CPU tensor; `meta`: JSON-able (see the module docstring)."""
    tensors: dict[str, torch.Tensor]
    meta: dict

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def events(self) -> list[dict]:
        return list(self.meta.get("events", []))

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    # Dense, unshared CPU storage: what safetensors accepts (channels_last is not dense).
    return t.detach().to("cpu").contiguous().clone()


# ---------------------------------------------------------------- optimizer

def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        raise CheckpointError(f"optimizer setting {v!r} cannot be stored")
    return v


def optimizer_to_flat(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state_dict as (tensors "optim.<param>.<name>", JSON meta)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = cpu_copy(value)
            else:           # e.g. SGD's momentum_buffer before its first step (None)
                plain.setdefault(str(index), {})[name] = _jsonable(value)
    groups = [{k: _jsonable(v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "plain_state": plain}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of `optimizer_to_flat`: a state_dict for `Optimizer.load_state_dict`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            index, name = key[len("optim."):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta.get("plain_state", {}).items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": [dict(g) for g in meta["param_groups"]]}


# ---------------------------------------------------------------- generators

def global_rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's global generator(s): the CPU one and, on a GPU, the device's."""
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        out["mps"] = torch.mps.get_rng_state()
    return out


def set_global_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
    elif device.type == "mps" and "mps" in states:
        torch.mps.set_rng_state(states["mps"])
