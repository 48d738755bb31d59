"""The block-cost lab (lab/cost.py, `python -m lab cost`, visual/cost.py): rows equal the
summary of the modules they build, the handbook's figures, GhostNet's Eq. 4-5, latency."""
from __future__ import annotations

import json
import math

import pytest
import torch.nn as nn

import blocks
from blocks.summary import summarize
from lab.cli import main
import torch

from lab.cost import block_costs, cost_records, ghost_ratio, variants
from visual.cost import cost_figure


@pytest.fixture(scope="module")
def handbook():
    return block_costs(3, 30, 10, 32, time_it=False)


def test_handbook_figures_appear_exactly(handbook):
    # chapter 4.5: 10×10 kernel, 3 -> 30 channels, with bias
    got = {r.label: r.parameters for r in handbook.rows}
    assert got["regular conv"] == 9_030
    assert got["dilated d=2"] == 9_030           # dilation widens the field, not the weights
    assert got["grouped g=3"] == 3_030
    assert got["pointwise 1×1"] == 120
    assert got["depthwise-separable"] == 423
    assert handbook.row("grouped g=3").ratios["parameters"] == round(3_030 / 9_030, 6)
    # every g > 1 dividing both 3 and 30 is offered: only 3
    assert [r.label for r in handbook.rows if r.label.startswith("grouped")] == ["grouped g=3"]


def test_cli_json_lists_the_handbook_rows(capsys):
    assert main(["cost", "--in", "3", "--out", "30", "--kernel", "10", "--size", "32",
                 "--no-time", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    params = {r["label"]: r["parameters"] for r in data["rows"]}
    assert {params["regular conv"], params["grouped g=3"], params["pointwise 1×1"],
            params["depthwise-separable"]} == {9_030, 3_030, 120, 423}
    assert data["rows"][0]["ratios"]["parameters"] == 1.0


def test_rows_equal_the_summary_of_the_built_modules(handbook):
    assert len(handbook.rows) >= 14
    for r in handbook.rows:
        layer = summarize(r.spec).layers[0]         # what `lab summary --spec` prints
        assert (r.parameters, r.flops, r.activation_bytes, r.out_shape) == \
            (layer.params, layer.flops, layer.activation_bytes, layer.out_shape), r.label
        module = blocks.build(r.spec).layers[0]
        assert sum(p.numel() for p in module.parameters()) == r.parameters, r.label
    # odd kernels only: blocks that need one are skipped with the reason, not dropped silently
    assert "odd" in handbook.skipped["inverted_residual"]


def gradient_support(module: nn.Module, in_shape: tuple[int, int, int]) -> int:
    """The oracle: side of the square of input pixels one centre output unit depends on, read
    from the gradient's support (float64; small positive weights and positive inputs, so no path
    cancels, is cut by a ReLU or saturates a ReLU6/hard gate)."""
    c, h, w = in_shape
    side = min(h, w)
    probe = _positive_copy(module)
    x = (torch.rand((1, c, side, side), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0)) + 0.5).requires_grad_(True)
    y = probe(x)
    y[0, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
    support = x.grad[0].abs().sum(0) > 0
    rows, cols = support.any(1).nonzero(), support.any(0).nonzero()
    if len(rows) == 0:
        return 0
    return int(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)


def _positive_copy(module: nn.Module) -> nn.Module:
    import copy
    probe = copy.deepcopy(module).to("cpu", torch.float64).eval()
    # a max-pool passes the gradient to one maximum only; an average pool over the same
    # window has the theoretical field
    for parent in list(probe.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   child.ceil_mode, count_include_pad=True))
    with torch.no_grad():
        for p in probe.parameters():
            p.fill_(1e-3)
        for name, b in probe.named_buffers():
            if name.endswith("running_var"):
                b.fill_(1.0)
            elif name.endswith("running_mean"):
                b.zero_()
    return probe


def test_receptive_fields(handbook):
    rf = {r.label: r.receptive_field for r in handbook.rows}
    assert rf["regular conv"] == 10 and rf["pointwise 1×1"] == 1
    assert rf["dilated d=2"] == 19                  # 2·(10 − 1) + 1
    assert rf["Ghost s=2 d=3"] == 12 and rf["Ghost s=2 d=1"] == 10   # k + d − 1
    assert rf["basic_residual"] == 5                # two 3×3 convs
    small = {r.label: r.receptive_field for r in block_costs(
        8, 8, 3, 20, time_it=False, only=["vgg_block", "inverted_residual", "ghost_bottleneck"]).rows}
    # through a max-pool (3 + 1), an inverted residual, two Ghost modules
    assert small == {"vgg_block": 4, "inverted_residual": 3, "ghost_bottleneck": 5}
    three = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=2, dilation=2) for _ in range(3)])
    assert gradient_support(three, (1, 31, 31)) == 13
    # blocks.receptive's figures against the gradient-support oracle, for every row
    for r in handbook.rows:
        module = blocks.build(r.spec).layers[0]
        assert r.receptive_field == gradient_support(module, (3, 32, 32)), r.label


@pytest.mark.parametrize("s", [2, 3, 4])
def test_ghost_ratios_follow_ghostnet_eq_4_and_5(s):
    c, n, k = 16, 48, 3                              # s divides n: Eq. 4-5 hold exactly
    table = block_costs(c, n, k, 12, time_it=False)
    reg = table.row("regular conv")
    for d in (1, 3):
        row = table.row(f"Ghost s={s} d={d}")
        assert row.out_shape == reg.out_shape
        assert reg.flops / row.flops == pytest.approx(ghost_ratio(c, k, s, d), rel=1e-12)   # Eq. 4

        def conv_weights(spec):
            return sum(m.weight.numel() for m in blocks.build(spec).layers[0].modules()
                       if isinstance(m, nn.Conv2d))
        assert conv_weights(reg.spec) / conv_weights(row.spec) == \
            pytest.approx(ghost_ratio(c, k, s, d), rel=1e-12)                             # Eq. 5
        # and both approach s (d ≈ k, c large), as the paper says
        assert abs(ghost_ratio(c, k, s, d) - s) < 0.7
    assert ghost_ratio(512, 3, s, 3) == pytest.approx(s, rel=0.01)


def test_variants_cover_the_list_and_groups_divide():
    labels = [v.label for v in variants(12, 24, 3)]
    assert [l for l in labels if l.startswith("grouped")] == \
        ["grouped g=2", "grouped g=3", "grouped g=4", "grouped g=12"]
    assert sum(l.startswith("Ghost") for l in labels) == 6
    assert any(l.startswith("transposed") for l in labels)
    assert "depthwise_conv" in [v.label for v in variants(8, 8, 3)]
    assert "depthwise_conv" not in labels          # 12 -> 24 is not channel-preserving


def test_latency_is_measured_for_each_row(one_thread):
    # MobileNets' claim at 64 -> 64, 3×3, 56×56: ~8× fewer FLOPs. Which one is faster is a speed
    # figure, so it lives in `python -m lab cost` / the README (3.5-4.5× faster forward on one
    # thread here), not in a timed assertion that a busy CI machine could flip.
    table = block_costs(64, 64, 3, 56, batch=1, repeats=9,
                        only=["regular conv", "depthwise-separable"])
    reg, ds = table.row("regular conv"), table.row("depthwise-separable")
    for r in (reg, ds):
        assert 0 < r.forward_ms < 10_000 and 0 < r.forward_backward_ms < 10_000
        assert math.isfinite(r.forward_ms) and math.isfinite(r.forward_backward_ms)
    assert ds.flops * 7 < reg.flops


def test_chart_turns_log_when_values_span_decades(handbook):
    rows = cost_records(handbook)
    view = cost_figure(rows)
    assert view.data["log_axes"]["parameters"] is True     # 120 … 15,030
    assert len(view.figure.data[0].x) == len(rows)
    same = [dict(r, parameters=100 + i) for i, r in enumerate(rows[:3])]
    assert cost_figure(same).data["log_axes"]["parameters"] is False


@pytest.mark.parametrize("argv, words", [
    (["--in", "0", "--out", "30"], "in channels must be"),
    (["--in", "3", "--out", "30", "--kernel", "99"], "kernel must be"),
    (["--in", "3", "--out", "30", "--batch", "0"], "batch must be"),
])
def test_cli_mistakes_are_one_line(capsys, argv, words):
    assert main(["cost", *argv, "--no-time"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err
