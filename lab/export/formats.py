"""Exports of a network or a run: spec JSON, safetensors weights, ONNX, metrics CSV and a
standalone PyTorch .py file (see lab/export/codegen.py) that also trains under torchrun.

Every file is written to a temporary name beside its target and renamed when complete.
Mistakes a user can fix (an unknown format, a missing run) raise ValueError subclasses
with a one-line message.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from lab.export.codegen import ExportError, generate

FORMATS = ("py", "onnx", "safetensors", "spec", "csv", "run")
EPOCH_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                 "images_per_sec", "elapsed_s")
STEP_COLUMNS = ("step", "epoch", "loss", "lr", "images_per_sec", "eta_s", "progress")
VERIFY_ATOL = 1e-4          # the in-process check of a generated file (float32, same device)

__all__ = ["EPOCH_COLUMNS", "ExportError", "FORMATS", "STEP_COLUMNS", "default_name",
           "export_metrics_csv", "export_onnx", "export_py", "export_run", "export_safetensors",
           "export_spec"]


@contextlib.contextmanager
def _atomic(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; renamed onto it only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _spec_of(model: nn.Module) -> dict | None:
    spec = getattr(model, "spec", None)
    return spec if isinstance(spec, dict) else None


def _input_shape(model: nn.Module, input_shape) -> tuple[int, ...]:
    if input_shape is None:
        spec = _spec_of(model)
        if spec is None or "input" not in spec:
            raise ExportError("this model has no spec; pass input_shape=(C, H, W)")
        input_shape = spec["input"]
    return tuple(int(s) for s in input_shape)


def _eval_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy: exporting never flips the flags of a model that may be training
    in another thread (the app's), nor fills its inspection caches."""
    try:
        return copy.deepcopy(model).eval()
    except Exception as e:  # a module holding something uncopyable (a lock, a file)
        raise ExportError(f"the model cannot be copied for export: {type(e).__name__}: {e}") from e


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def export_spec(spec: dict, path: str | os.PathLike) -> Path:
    """The spec as indented JSON (what `blocks.build` and `python -m lab train --spec` read)."""
    path = Path(path)
    with _atomic(path) as tmp:
        tmp.write_text(json.dumps(spec, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def export_safetensors(model: nn.Module, path: str | os.PathLike) -> Path:
    """The state_dict (BatchNorm buffers included) as .safetensors; the spec, when the model
    has one, goes into the file's metadata as JSON under "convscope_spec"."""
    path = Path(path)
    from safetensors.torch import save_file
    # Contiguous, unshared CPU copies: safetensors refuses channels_last and shared storage.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": "pt"}
    spec = _spec_of(model)
    if spec is not None:
        metadata["convscope_spec"] = json.dumps(spec, allow_nan=False)
    with _atomic(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


# The exporter's passes log ~10-30 INFO lines per export ("No unused functions to remove")
# into an app or CLI that logs at INFO; during an export they log warnings and errors only.
QUIET_ONNX_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo",
                      "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...], level: int = logging.WARNING):
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, old in zip(loggers, before):
            lg.setLevel(old)


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape=None,
                opset: int | None = None) -> Path:
    """ONNX through torch's dynamo exporter (torch.export + onnxscript; opset: torch's
    default), eval mode, one file with the weights inside. Input "input" (N, C, H, W) float,
    already normalised; output "logits" (N, classes); N is dynamic."""
    path = Path(path)
    shape = _input_shape(model, input_shape)
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it; say so plainly)
    except ImportError:
        raise ExportError("ONNX export needs the onnx and onnxscript packages: "
                          "pip install onnx onnxscript") from None
    model = _eval_copy(model)
    sample = torch.randn(2, *shape, device=_device(model))  # 2, not 1: keep the batch dynamic
    batch = torch.export.Dim("batch")
    with _atomic(path) as tmp, _quiet_loggers(QUIET_ONNX_LOGGERS):
        try:
            program = torch.onnx.export(model, (sample,), dynamo=True, input_names=["input"],
                                        output_names=["logits"], dynamic_shapes=({0: batch},),
                                        opset_version=opset, external_data=False, verbose=False)
        except Exception as e:  # the exporter raises many types; the user needs one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(f"ONNX export failed: {first[:300]}") from e
        spec = _spec_of(model)
        if spec is not None:
            program.model.metadata_props["convscope_spec"] = json.dumps(spec, allow_nan=False)
        program.save(str(tmp), external_data=False)
    return path


def _cell(value: Any) -> Any:
    return "" if value is None else value


def export_metrics_csv(events: list[dict], path: str | os.PathLike, kind: str = "epoch") -> Path:
    """The metrics as CSV: one row per evaluation — each "epoch" event and the "eval" event
    of a run stopped inside an epoch (its `epoch` is a fraction) — with EPOCH_COLUMNS, then
    any other keys those events carry; or with kind="step" one row per "step" event
    (STEP_COLUMNS first). "start" and "end" events are summaries, not rows. Missing values
    are empty."""
    if kind not in ("epoch", "step"):
        raise ValueError(f"kind must be 'epoch' or 'step', got {kind!r}")
    types = ("epoch", "eval") if kind == "epoch" else ("step",)
    rows = [e for e in events if isinstance(e, dict) and e.get("type") in types]
    columns = list(EPOCH_COLUMNS if kind == "epoch" else STEP_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns and k != "type"]
    path = Path(path)
    with _atomic(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_cell(row.get(c)) for c in columns])
    return path


def export_py(model: nn.Module, path: str | os.PathLike, *, mean=None, std=None, classes=None,
              input_shape=None) -> Path:
    """A standalone PyTorch file: the network with torch alone (same state_dict keys, so
    ConvScope's .safetensors weights load strictly), `build_model`, `load`, `predict`, and a
    `train` entry point that runs under torchrun. The file is executed here once before it is
    written: its network must have this model's state_dict layout and, on CPU, its outputs."""
    path = Path(path)
    shape = _input_shape(model, input_shape)
    model = _eval_copy(model)
    spec = _spec_of(model)
    name = str(spec.get("name", "network")) if spec else type(model).__name__
    if mean is not None and std is not None and not (len(mean) == len(std) == shape[0]):
        raise ExportError(f"mean and std need one value per input channel ({shape[0]})")
    if (mean is None) != (std is None):
        raise ExportError("give both mean and std, or neither")
    sample = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected = model(sample.to(_device(model)))
    except Exception as e:
        raise ExportError(f"the model fails on a {tuple(sample.shape)} input: "
                          f"{type(e).__name__}: {e}") from e
    if not isinstance(expected, torch.Tensor) or expected.dim() != 2:
        raise ExportError("the model must return (N, classes) logits for the standalone file")
    num_classes = int(expected.shape[1])
    if classes is not None and len(classes) != num_classes:
        raise ExportError(f"{len(classes)} class names for a network with {num_classes} outputs")
    source = generate(model, name=name, filename=path.name, input_shape=shape,
                      num_classes=num_classes, spec=spec, mean=mean, std=std, classes=classes)
    _verify(source, model, sample, expected)
    with _atomic(path) as tmp:
        tmp.write_text(source, encoding="utf-8")
    return path


def _verify(source: str, model: nn.Module, sample: torch.Tensor, expected: torch.Tensor) -> None:
    """Run the generated file's build_model(); refuse a file that would not match the model."""
    namespace: dict[str, Any] = {"__name__": "convscope_export_check"}
    try:
        exec(compile(source, "<standalone export>", "exec"), namespace)  # our generated code
        twin = namespace["build_model"]()
    except Exception as e:  # a generator bug or a block's source edited since import
        raise ExportError(f"the generated file does not build: {type(e).__name__}: {e}") from e
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    if ours != theirs:
        diff = sorted(set(ours.items()) ^ set(theirs.items()))[:3]
        raise ExportError(f"the generated network's state_dict differs from the model's: {diff}")
    twin.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, strict=True)
    if expected.device.type != "cpu":
        return  # other kernels (TF32, cuDNN) make a float comparison meaningless
    with torch.no_grad():
        got = twin.eval()(sample)
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=VERIFY_ATOL, rtol=1e-4):
        raise ExportError("the generated network computes different outputs from the model "
                          f"(max difference {(got - expected).abs().max().item():.3g})")


# -- runs

def default_name(spec_name: str, fmt: str) -> str:
    """A file name for an export: "ResNet-18 + CBAM", "py" -> "resnet_18_cbam.py"."""
    from lab.runs import slug
    stem = slug(spec_name).replace("-", "_")
    if stem[0].isdigit():
        stem = f"net_{stem}"
    return {"py": f"{stem}.py", "onnx": f"{stem}.onnx", "safetensors": f"{stem}.safetensors",
            "spec": f"{stem}.json", "csv": f"{stem}_metrics.csv", "run": f"{stem}_run.zip"}[fmt]


def export_run(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike = ".") -> Path:
    """Export a saved run in one format (py | onnx | safetensors | spec | csv | run: the
    folder as a .zip that the app and `--resume` take back). `out` is a file, or an
    existing folder (or one ending in a separator) to put a default name in."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    from lab.runs import load_run
    run = load_run(run_dir)
    out_text = os.fspath(out)
    target = Path(out_text)
    if target.is_dir() or out_text.endswith(("/", os.sep)):
        target = target / (f"{Path(run_dir).name}.zip" if fmt == "run" else
                           default_name(run.spec.get("name", "network"), fmt))
    if fmt == "run":
        from lab.runzip import zip_run
        return zip_run(run_dir, target)
    if fmt == "spec":
        return export_spec(run.spec, target)
    if fmt == "csv":
        return export_metrics_csv(run.metrics, target)
    if fmt == "safetensors":
        return export_safetensors(run.model, target)
    if fmt == "onnx":
        return export_onnx(run.model, target)
    info = run.dataset_info or {}
    return export_py(run.model, target, mean=info.get("mean"), std=info.get("std"),
                     classes=info.get("classes"))
