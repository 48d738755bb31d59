"""`python -m lab bench`: the Trainer's speed against a bare PyTorch loop, as ratios.

Each case prints as it finishes; `--json` prints one JSON object at the end
({"cases": [...]}); `--quick` measures shorter rounds (noisier figures).
"""
from __future__ import annotations

import argparse
import json

from lab.train.device import DEVICES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure the trainer against a bare PyTorch loop",
                              description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short rounds (seconds, not minutes)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--case", action="append", metavar="NAME",
                   help="run only this case (repeatable); `--list` shows them")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--data-root", default="data", metavar="DIR")
    p.add_argument("--rounds", type=int, metavar="N", help="timed rounds per side (default 5, quick 3; training cases: "
                        "interleaved chunk pairs, default 60, quick 20)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's choice); 1 steadies the figures "
                        "on a machine shared with other work")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lab.bench import BenchOptions, case_names, format_result, run_cases
    from lab.cli import UsageError
    from lab.train.device import choose_device

    if args.list:
        print("\n".join(case_names()))
        return 0
    for flag, value in (("--rounds", args.rounds), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive whole number, got {value}")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)   # this process is the bench; nothing else to disturb
    choose_device(args.device)
    options = BenchOptions(quick=args.quick, device=args.device, data_root=args.data_root,
                           rounds=args.rounds)
    show = None if args.json else (lambda r: print(format_result(r), flush=True))
    results = run_cases(options, args.case, on_result=show)
    if args.json:
        print(json.dumps({"quick": args.quick, "cases": results}))
    return 0
