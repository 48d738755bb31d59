"""Ablation runs: one network trained again with its attention swapped (none / SE / CBAM) or
its Ghost modules swapped for regular convs, under one seed, data set, settings and budget.

`ablation_specs` makes the variant specs; `run_ablation` trains each (one `Trainer` after
another, every variant with the same `TrainSettings`, so the same initial seed, data order,
augmentation and schedule), writes one run folder per variant and returns one row per
variant. A variant that fails (a spec that cannot be built, out of memory, a diverged loss)
or is stopped leaves the others and their run folders intact. With `seeds` > 1 every variant
is trained once per seed (seed, seed + 1, …) and `summarize_rows` gives mean ± std.

lab/ never draws: the attention score (energy-in-mask) is computed by a `score(model, dataset)`
callback the caller passes (the CLI hands it to visual/quality.py).
"""
from __future__ import annotations

import copy
import dataclasses
import statistics
from pathlib import Path
from typing import Any, Callable

import blocks
from lab.train.trainer import Trainer, TrainingError, TrainSettings

ATTENTIONS = ("none", "se", "cbam")
GHOST_CHOICES = ("ghost", "conv")
_ATTN_BLOCK_PARAMS = {"se": ("reduction",), "cbam": ("reduction",)}


class AblationError(ValueError):
    """A request that cannot be ablated; one line a user can act on."""


def has_attention(spec: dict) -> bool:
    """Whether any layer takes an `attention` parameter or is an SE/CBAM layer."""
    return any(l.get("block") in ("se", "cbam") or "attention" in _param_names(l.get("block"))
               for l in spec.get("layers", []))


def has_ghost(spec: dict) -> bool:
    return any(l.get("block") in ("ghost_module", "ghost_bottleneck") for l in spec.get("layers", []))


def _param_names(block: Any) -> set[str]:
    try:
        return {p.name for p in blocks.get_block(block).params}
    except (KeyError, TypeError):
        return set()


def swap_attention(spec: dict, attention: str) -> dict:
    """A copy of `spec` with every block's `attention` set to `attention`; standalone `se` /
    `cbam` layers become the other kind (keeping `reduction`) or are removed for "none"."""
    if attention not in ATTENTIONS:
        raise AblationError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    out = copy.deepcopy(spec)
    layers = []
    for layer in out["layers"]:
        block = layer.get("block")
        params = dict(layer.get("params") or {})
        if block in ("se", "cbam"):
            if attention == "none":
                continue
            if attention != block:
                keep = {k: v for k, v in params.items() if k in _ATTN_BLOCK_PARAMS[attention]}
                layer = {**layer, "block": attention, "params": keep}
        elif "attention" in _param_names(block):
            layer = {**layer, "params": {**params, "attention": attention}}
        layers.append(layer)
    out["layers"] = layers
    return out


def swap_ghost(spec: dict) -> dict:
    """A copy of `spec` with every `ghost_module` replaced by the regular conv it stands for
    (GhostNet Sec. 3.1: same output channels, kernel and stride; BatchNorm, and ReLU when the
    module has one), and every `ghost_bottleneck` built with regular 1×1 convs (ghost=false)."""
    out = copy.deepcopy(spec)
    for i, layer in enumerate(out["layers"]):
        if layer.get("block") == "ghost_bottleneck":
            out["layers"][i] = {**layer, "params": {**(layer.get("params") or {}), "ghost": False}}
        if layer.get("block") != "ghost_module":
            continue
        info = blocks.get_block("ghost_module")
        p = {**info.defaults(), **(layer.get("params") or {})}
        out["layers"][i] = {**layer, "block": "conv",
                            "params": {"out": p["out"], "kernel": p["kernel"], "stride": p["stride"],
                                       "norm": "batch", "act": "relu" if p["relu"] else "none"}}
    return out


def ablation_specs(spec: dict, attention: list[str] | None = None,
                   ghost: list[str] | None = None) -> dict[str, dict]:
    """label -> spec for each requested variant ("attention none", "attention se", …,
    "ghost modules", "regular convs"); the spec's name says which variant it is."""
    if not attention and not ghost:
        raise AblationError("choose what to ablate: attention variants (none, se, cbam) or "
                            "ghost (ghost, conv)")
    name = spec.get("name", "network")
    out: dict[str, dict] = {}
    if attention:
        if not has_attention(spec):
            raise AblationError(f"'{name}' has no block with an attention choice to swap")
        for a in dict.fromkeys(attention):
            out[f"attention {a}"] = {**swap_attention(spec, a), "name": f"{name} · attention {a}"}
    if ghost:
        if not has_ghost(spec):
            raise AblationError(f"'{name}' has no Ghost module (ghost_module, ghost_bottleneck) to "
                                f"swap for regular convs")
        for g in dict.fromkeys(ghost):
            if g not in GHOST_CHOICES:
                raise AblationError(f"ghost must be one of {', '.join(GHOST_CHOICES)}, got {g!r}")
            variant = copy.deepcopy(spec) if g == "ghost" else swap_ghost(spec)
            out["ghost modules" if g == "ghost" else "regular convs"] = \
                {**variant, "name": f"{name} · {'Ghost modules' if g == 'ghost' else 'regular convs'}"}
    for label, s in out.items():      # every variant must build before anything trains
        try:
            blocks.normalize_spec(s)
        except blocks.SpecError as e:
            raise AblationError(f"variant '{label}': {e}") from None
    return out


Score = Callable[[Any, Any], dict]          # (model, dataset) -> {"energy_gradcam": …, …}
OnEvent = Callable[[str, int, dict, Trainer], None]


def run_ablation(specs: dict[str, dict], settings: TrainSettings, dataset: Any,
                 out: str | Path | None = "runs", seeds: int = 1, score: Score | None = None,
                 on_event: OnEvent | None = None, should_stop: Callable[[], bool] | None = None
                 ) -> list[dict]:
    """Train every variant of `specs` (label -> spec) on `dataset` with `settings` (seed
    `settings.seed + i` for repeat i); save each run under `out` (None: not saved). Returns one
    row per (variant, seed): label, seed, status, message, run_dir, params, flops,
    images_per_sec, best_test_acc, test_acc, plus what `score` adds. `on_event(label, seed,
    event, trainer)` sees every event (it may call trainer.stop()); `should_stop()` true ends
    the ablation before the next variant starts (the one running is stopped and saved)."""
    if not 1 <= seeds <= 20:
        raise AblationError(f"seeds must be from 1 to 20, got {seeds}")
    rows: list[dict] = []
    for i in range(seeds):
        run_settings = dataclasses.replace(settings, seed=settings.seed + i)
        for label, spec in specs.items():
            if should_stop is not None and should_stop():
                rows.append(_row(label, run_settings.seed, "not run", "the ablation was stopped"))
                continue
            rows.append(_train_one(label, spec, run_settings, dataset, out, score, on_event,
                                   should_stop))
    return rows


def _row(label: str, seed: int, status: str, message: str, **extra: Any) -> dict:
    return {"label": label, "seed": seed, "status": status, "message": message, "run_dir": None,
            "params": None, "flops": None, "images_per_sec": None, "best_test_acc": None,
            "test_acc": None, **extra}


def _train_one(label, spec, settings, dataset, out, score, on_event, should_stop) -> dict:
    from lab.runs import save_run
    seed = settings.seed
    try:
        trainer = Trainer(spec, settings, dataset)
    except (blocks.SpecError, TrainingError, ValueError) as e:
        return _row(label, seed, "failed", str(e))
    start: dict = {}
    end: dict = {}
    try:
        for event in trainer.run():
            if event["type"] == "start":
                start = event
            elif event["type"] == "end":
                end = event
            if on_event is not None:
                on_event(label, seed, event, trainer)
            if should_stop is not None and should_stop() and not trainer.stopping:
                trainer.stop()
    except (TrainingError, RuntimeError) as e:
        return _row(label, seed, "failed", str(e).splitlines()[0][:300],
                    params=start.get("params"), flops=start.get("flops"))
    status = end.get("status", "failed")
    row = _row(label, seed, status, end.get("message", ""), params=start.get("params"),
               flops=start.get("flops"), images_per_sec=end.get("images_per_sec"),
               best_test_acc=end.get("best_test_acc"), test_acc=end.get("test_acc"))
    if status == "failed":
        return row
    if out is not None:
        row["run_dir"] = str(save_run(trainer, out))
    if score is not None:
        try:
            row.update(score(trainer.model, dataset))
        except Exception as e:          # a score that cannot be had is a note, not a lost run
            row["score_error"] = str(e).splitlines()[0][:200]
    return row


def summarize_rows(rows: list[dict], keys: tuple[str, ...] = ("best_test_acc", "images_per_sec")
                   ) -> list[dict]:
    """One row per variant label: runs, statuses, params, flops, and mean and std over its
    completed or stopped seeds of each key (std is None for one value)."""
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    out = []
    for label, rs in by_label.items():
        done = [r for r in rs if r["status"] in ("completed", "stopped")]
        agg: dict[str, Any] = {"label": label, "runs": len(rs), "completed": len(done),
                               "statuses": [r["status"] for r in rs],
                               "params": next((r["params"] for r in rs if r["params"]), None),
                               "flops": next((r["flops"] for r in rs if r["flops"]), None),
                               "run_dirs": [r["run_dir"] for r in rs if r["run_dir"]]}
        all_keys = list(keys) + sorted({k for r in done for k in r if k.startswith("energy_")})
        for k in all_keys:
            vals = [r[k] for r in done if isinstance(r.get(k), (int, float))]
            agg[k] = statistics.fmean(vals) if vals else None
            agg[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        out.append(agg)
    return out
