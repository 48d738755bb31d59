"""`python -m lab cost --in 3 --out 30 --kernel 10 --size 32 [--stride S] [--batch B]
[--device D] [--norm none|batch] [--repeats N] [--threads N] [--no-time] [--chart FILE.html]
[--json]`: every conv variant that maps the input to the output, with parameters, FLOPs,
activation memory, receptive field and measured latency, against the regular conv."""
from __future__ import annotations

import argparse
import json

from blocks.summary import human
from lab.train.device import DEVICES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("cost", help="block-cost lab: conv variants side by side",
                              description="Every conv variant (regular, dilated, grouped, "
                              "pointwise, depthwise-separable, Ghost, transposed, registry blocks) "
                              "that maps --in channels to --out channels: parameters and FLOPs as "
                              "`lab summary` counts them, activation memory, receptive field and "
                              "latency measured on the device, with ratios to the regular conv.")
    p.add_argument("--in", dest="c_in", type=int, required=True, metavar="C", help="input channels")
    p.add_argument("--out", dest="c_out", type=int, required=True, metavar="C", help="output channels")
    p.add_argument("--kernel", type=int, default=3, metavar="K", help="kernel size (default 3)")
    p.add_argument("--size", type=int, default=32, metavar="S", help="input height = width (default 32)")
    p.add_argument("--stride", type=int, default=1, metavar="S")
    p.add_argument("--norm", choices=("none", "batch"), default="none",
                   help="none: conv + bias, as the handbook counts (default); batch: + BN + ReLU")
    p.add_argument("--batch", type=int, default=8, metavar="B", help="images per timed call (default 8)")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--repeats", type=int, default=7, metavar="N",
                   help="timed rounds; the median is reported (default 7)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch; 1 steadies the figures on a shared machine")
    p.add_argument("--no-time", action="store_true", help="skip the latency measurement")
    p.add_argument("--chart", metavar="FILE.html", help="also write the bar chart as HTML")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.set_defaults(func=run)


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}×"


def format_table(table) -> str:
    """The cost table as fixed-width text."""
    head = (f"{'variant':<26} {'output':<11} {'params':>10} {'FLOPs':>9} {'act.mem':>9} {'RF':>4} "
            f"{'fwd ms':>9} {'f+b ms':>9} {'params×':>8} {'FLOPs×':>8} {'fwd×':>7}")
    lines = [f"{table.c_in} → {table.c_out} channels, kernel {table.kernel}, {table.size}×{table.size}"
             f", stride {table.stride}, norm {table.norm}; latency: median of {table.repeats} rounds, "
             f"batch {table.batch}, {table.device_name}", head, "-" * len(head)]
    for r in table.rows:
        lines.append(f"{r.label:<26} {'×'.join(map(str, r.out_shape)):<11} {r.parameters:>10,} "
                     f"{human(r.flops):>9} {human(r.activation_bytes, 'B'):>9} {r.receptive_field_text:>4} "
                     f"{_ms(r.forward_ms):>9} {_ms(r.forward_backward_ms):>9} "
                     f"{_x(r.ratios.get('parameters')):>8} {_x(r.ratios.get('flops')):>8} "
                     f"{_x(r.ratios.get('forward_ms')):>7}")
    for label, why in table.skipped.items():
        lines.append(f"(not applicable: {label}: {why})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lab.cli import UsageError
    from lab.cost import block_costs, cost_records

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be a positive whole number, got {args.threads}")
        import torch
        torch.set_num_threads(args.threads)
    table = block_costs(args.c_in, args.c_out, args.kernel, args.size, stride=args.stride,
                        norm=args.norm, batch=args.batch, device=args.device,
                        repeats=args.repeats, time_it=not args.no_time)
    if args.chart:
        from visual.cost import cost_figure
        cost_figure(cost_records(table), f"{args.c_in} → {args.c_out}, kernel {args.kernel}, "
                    f"{args.size}×{args.size}").figure.write_html(args.chart, include_plotlyjs="cdn")
    if args.json:
        print(json.dumps(table.as_dict(), ensure_ascii=False))
    else:
        print(format_table(table))
    return 0
