"""`python -m lab COMMAND …`: the headless face of ConvScope.

Each command lives in its own module `lab/cli/cmd_<name>.py` exposing `add_parser(subparsers)`
(which sets `func`) — this file only dispatches. Bad input prints one line to stderr and
exits with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("blocks", "presets", "summary", "diagram", "train", "bench", "inspect", "export", "cost", "ablate",
            "predict")


class UsageError(Exception):
    """A user mistake: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2 (argparse's default prints usage too)
        # Under torchrun every process parses the same arguments: rank 0 alone says what's wrong.
        if os.environ.get("RANK", "0") in ("", "0"):
            print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lab", description="ConvScope: build, train and inspect CNNs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"lab.cli.cmd_{name}")
        except ModuleNotFoundError as e:
            if e.name != f"lab.cli.cmd_{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from blocks import SpecError
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, SpecError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python -m lab blocks | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # a full disk, a read-only folder: one line, not a traceback
        print(f"error: {e.strerror or e} ({e.filename or 'file'})", file=sys.stderr)
        return 1
