"""Runs on disk: one folder per training run, written atomically, read without pickle.

A run folder holds `spec.json`, `settings.json`, `metrics.jsonl` (one event a line),
`dataset.json` and `weights.safetensors` (the state_dict, BatchNorm buffers included).
`save_run` writes everything into a hidden sibling `.tmp-<name>` and renames it into
place only when complete, so a crash never leaves half a run. `load_run` reads JSON and
safetensors only: a weights file that is not safetensors is refused, never unpickled.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import blocks

FILES = ("spec.json", "settings.json", "metrics.jsonl", "dataset.json", "weights.safetensors")
TMP_PREFIX = ".tmp-"


class RunError(ValueError):
    """A run folder that cannot be read; the message names the folder and the problem."""


@dataclass
class RunParts:
    """What a run folder is written from."""
    spec: dict
    settings: dict
    metrics: list[dict]
    model: nn.Module
    dataset_info: dict = field(default_factory=dict)

    @classmethod
    def from_trainer(cls, trainer: Any) -> "RunParts":
        """The parts of a Trainer (its model as trained so far and its events)."""
        return cls(spec=trainer.model.spec, settings=trainer.settings.to_dict(),
                   metrics=list(trainer.history), model=trainer.model,
                   dataset_info=trainer.dataset.info())


@dataclass
class Run:
    """A run read back from disk; `model` has its weights loaded and is in eval mode."""
    path: Path
    spec: dict
    settings: dict
    metrics: list[dict]
    dataset_info: dict
    model: blocks.Network

    @property
    def end(self) -> dict | None:
        """The run's "end" event, if it got that far."""
        return next((e for e in reversed(self.metrics) if e.get("type") == "end"), None)


def slug(text: str, max_len: int = 40) -> str:
    """"ResNet-18 + CBAM" -> "resnet-18-cbam"."""
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return s[:max_len].strip("-") or "network"


def run_name(spec_name: str) -> str:
    """Timestamp + slug + random suffix: sorts by time, unique, safe as a folder name."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(spec_name)}-{secrets.token_hex(3)}"


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous CPU copies: safetensors wants dense, unshared storage (channels_last is not).
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def save_run(source: Any, root: str | Path = "runs") -> Path:
    """Write a run (a Trainer or RunParts) as a new folder under `root`; returns its path."""
    parts = source if isinstance(source, RunParts) else RunParts.from_trainer(source)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        name = run_name(parts.spec.get("name", "network"))
        if not (root / name).exists():
            break
    else:  # pragma: no cover - 100 collisions of a 24-bit suffix in one second
        raise RunError(f"could not find a free run name in {root}")
    final, tmp = root / name, root / f"{TMP_PREFIX}{name}"
    tmp.mkdir()
    try:
        _dump(tmp / "spec.json", parts.spec)
        _dump(tmp / "settings.json", parts.settings)
        _dump(tmp / "dataset.json", parts.dataset_info)
        with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as f:
            for event in parts.metrics:
                f.write(json.dumps(event, allow_nan=False) + "\n")
        save_file(_state_dict(parts.model), str(tmp / "weights.safetensors"),
                  metadata={"format": "pt", "spec_name": str(parts.spec.get("name", ""))})
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path.parent} is not a complete run: {path.name} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{path} cannot be read as JSON: {e}") from None


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        raise RunError(f"{path.parent} is not a complete run: {path.name} is missing")
    events = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except ValueError as e:
                raise RunError(f"{path}, line {n}, is not JSON: {e}") from None
    return events


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (CPU); anything else raises RunError, unexecuted."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path.parent} is not a complete run: {path.name} is missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0][:120]}); "
                       f"refusing to load it") from None


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Read a run folder: its JSON files and its weights, into an eval-mode Network."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a run folder")
    spec = _read_json(path / "spec.json")
    settings = _read_json(path / "settings.json")
    dataset_info = _read_json(path / "dataset.json")
    metrics = _read_metrics(path / "metrics.jsonl")
    state = load_weights(path / "weights.safetensors")
    try:
        model = blocks.build(spec, device="cpu")
    except blocks.SpecError as e:
        raise RunError(f"{path / 'spec.json'} cannot be built: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RunError(f"{path / 'weights.safetensors'} does not fit its spec: "
                       f"{' '.join(str(e).split())[:300]}") from None
    return Run(path, model.spec, settings, metrics, dataset_info, model.to(device).eval())


def list_runs(root: str | Path = "runs") -> list[Path]:
    """Complete run folders under `root`, oldest first (names start with a timestamp)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "weights.safetensors").exists()
                  and (p / "spec.json").exists())
