"""`python -m lab ablate (--preset NAME | --spec FILE) (--attention none,se,cbam |
--ghost ghost,conv) [--seeds N] [train options] [--json]`: train the same network once per
variant — same seed, data, settings and budget — write one run per variant and print one row
per variant: parameters, FLOPs, images/s, best test accuracy and, where the data set has object
masks, the attention's energy-in-mask (Grad-CAM for every variant, CBAM's spatial map where
there is one). With `--seeds N` each variant trains N times (seed, seed+1, …): mean ± std.
Ctrl-C stops the variant training now (its run is saved) and skips the rest."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from blocks.summary import human
from lab.cli import UsageError
from lab.cli.cmd_summary import read_spec_file
from lab.cli.cmd_train import DATASET_HELP
from lab.train.device import DEVICES
from lab.train.trainer import OPTIMIZERS, SCHEDULES, TrainSettings

ENERGY_IMAGES = 64      # test images the energy-in-mask score averages over


def add_parser(subparsers) -> None:
    d = TrainSettings()
    p = subparsers.add_parser("ablate", help="train a network once per attention/Ghost variant",
                              description=__doc__.split(": ", 1)[1].split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", metavar="NAME", help="a preset name (`python -m lab presets`)")
    which.add_argument("--spec", metavar="FILE", help="a network spec (JSON file)")
    p.add_argument("--attention", metavar="LIST", help="comma-separated: none,se,cbam")
    p.add_argument("--ghost", metavar="LIST", help="comma-separated: ghost,conv (Ghost modules "
                                                  "against the regular convs they replace)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="repeats per variant (default 1)")
    p.add_argument("--dataset", default=d.dataset, help=f"{DATASET_HELP} (default {d.dataset})")
    p.add_argument("--data-root", default=d.data_root, metavar="DIR")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--train-size", type=int, metavar="N", help="use only N training images")
    p.add_argument("--test-size", type=int, metavar="N", help="use only N test images")
    p.add_argument("--epochs", type=int, default=d.epochs, metavar="N")
    p.add_argument("--batch-size", type=int, default=d.batch_size, metavar="B")
    p.add_argument("--lr", type=float, default=d.lr, metavar="X")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--width", type=float, metavar="W", help="channel width multiplier")
    p.add_argument("--device", choices=DEVICES, default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", metavar="DIR",
                   help="where runs are saved (default $CONVSCOPE_RUNS_DIR, else runs/)")
    p.add_argument("--no-score", action="store_true", help="skip the energy-in-mask score")
    p.add_argument("--json", action="store_true", help="one JSON object: rows and summary")
    p.set_defaults(func=run)


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError("give at least one variant, e.g. --attention none,se,cbam")
    return items


def energy_score(model, dataset, n: int = ENERGY_IMAGES) -> dict:
    """Energy-in-mask of Grad-CAM (and of CBAM's spatial map, where the model has one) on the
    first `n` test images, beside a uniform map's (the mask's area share)."""
    if dataset.test_masks is None:
        return {}
    from visual.layers import candidates
    from visual.quality import attention_quality
    n = min(n, len(dataset.test_y))
    dev = next(model.parameters()).device
    x, masks = dataset.normalize(dataset.test_x[:n]).to(dev), dataset.test_masks[:n].to(dev)
    methods = ("gradcam",) + (("cbam",) if any(k == "cbam" for _, k, _ in candidates(model)) else ())
    data = attention_quality(model, x, masks, methods=methods).data["methods"]
    return {f"energy_{m}": data[m]["energy_in_mask"] for m in (*methods, "uniform")}


def _pct(v, std=None) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else "")


def _num(v, std=None, fmt=",.0f") -> str:
    if v is None:
        return "–"
    return format(v, fmt) + (f" ± {format(std, fmt)}" if std is not None else "")


def format_summary(summary: list[dict]) -> str:
    energies = sorted({k for s in summary for k in s if k.startswith("energy_") and not k.endswith("_std")})
    head = f"{'variant':<16} {'runs':>4} {'params':>11} {'FLOPs':>8} {'images/s':>16} {'best test acc':>18}"
    head += "".join(f" {('energy ' + k[7:]):>18}" for k in energies)
    lines = [head, "-" * len(head)]
    for s in summary:
        line = (f"{s['label']:<16} {s['completed']:>2}/{s['runs']:<1} {_num(s['params']):>11} "
                f"{human(s['flops'] or 0):>8} {_num(s['images_per_sec'], s['images_per_sec_std']):>16} "
                f"{_pct(s['best_test_acc'], s['best_test_acc_std']):>18}")
        line += "".join(f" {_num(s.get(k), s.get(k + '_std'), '.3f'):>18}" for k in energies)
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lab.ablate import AblationError, ablation_specs, run_ablation, summarize_rows
    from lab.datasets import load_dataset
    from presets import load_preset

    attention, ghost = _split(args.attention), _split(args.ghost)
    if attention is None and ghost is None:
        raise UsageError("say what to ablate: --attention none,se,cbam or --ghost ghost,conv")
    for name, v in (("--seeds", args.seeds), ("--train-size", args.train_size),
                    ("--test-size", args.test_size)):
        if v is not None and v < 1:
            raise UsageError(f"{name} must be a positive whole number, got {v}")
    settings = TrainSettings(dataset=args.dataset, data_root=args.data_root, epochs=args.epochs,
                             batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                             schedule=args.schedule, augment=args.augment, device=args.device,
                             seed=args.seed, width=args.width)
    spec = read_spec_file(args.spec) if args.spec else None
    ds = load_dataset(args.dataset, args.data_root, seed=args.seed, download=not args.no_download,
                      train_size=args.train_size, test_size=args.test_size)
    if spec is None:
        spec = load_preset(args.preset, input_shape=ds.input_shape, classes=len(ds.classes),
                           width=args.width)
    try:
        specs = ablation_specs(spec, attention, ghost)
    except AblationError as e:
        raise UsageError(str(e)) from None
    stop = threading.Event()
    current: dict = {}

    def on_event(label, seed, event, trainer):
        current["trainer"] = trainer
        if event["type"] == "start":
            print(f"{label} (seed {seed}): {event['params']:,} parameters, training…",
                  file=sys.stderr, flush=True)
        elif event["type"] == "end":
            print(f"{label} (seed {seed}): {event['status']}, best test accuracy "
                  f"{_pct(event.get('best_test_acc'))}", file=sys.stderr, flush=True)

    def handler(_sig, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if "trainer" in current:
            current["trainer"].stop()
        print("stopping: this variant is saved, the rest are skipped (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        from lab.runs import default_root
        rows = run_ablation(specs, settings, ds, out=args.out or default_root(), seeds=args.seeds,
                            score=None if args.no_score else energy_score, on_event=on_event,
                            should_stop=stop.is_set)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    summary = summarize_rows(rows)
    if args.json:
        print(json.dumps({"variants": list(specs), "settings": settings.to_dict(),
                          "rows": rows, "summary": summary}, ensure_ascii=False))
    else:
        print(format_summary(summary))
        for r in rows:
            if r["status"] not in ("completed", "stopped"):
                print(f"{r['label']} (seed {r['seed']}): {r['status']}: {r['message']}")
            elif r["run_dir"]:
                print(f"{r['label']} (seed {r['seed']}): run saved to {r['run_dir']}")
    return 1 if any(r["status"] in ("failed", "diverged") for r in rows) else 0
