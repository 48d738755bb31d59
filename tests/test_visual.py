"""Inspection views (visual/): numbers behind every figure, checked against oracles, and
the promise that a view leaves the model exactly as it found it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import blocks
from blocks.library.attention import CBAM, SqueezeExcite
from blocks.library.ghost import GhostModule
from blocks.summary import summarize
from visual import (View, attention_quality, attribution_maps, attribution_view, cbam_view,
                    confusion_view, cosine_similarity_matrix, curves_figure, feature_grid,
                    ghost_parts, ghost_view, layer_choices, params_flops_view, redundancy_by_layer,
                    redundancy_score, redundancy_view, resolve_layer, reused_modules, se_class_view,
                    se_view, stack_diagram)
from visual.curves import MAX_STEP_POINTS
from visual.hooks import captured, inspection_mode, run_captured
from visual.layers import get_module

SPEC = {
    "name": "inspect-test", "input": [3, 32, 32], "classes": 10, "width": 1.0,
    "layers": [
        {"block": "conv", "params": {"out": 16}},
        {"block": "basic_residual", "params": {"out": 16, "attention": "cbam", "reduction": 4}, "repeat": 2},
        {"block": "basic_residual", "params": {"out": 32, "stride": 2, "attention": "se", "reduction": 4}},
        {"block": "ghost_bottleneck", "params": {"out": 64, "mid": 64, "stride": 2, "attention": "se"}},
        {"block": "conv", "params": {"out": 256, "kernel": 1}},
        {"block": "global_avg_pool"},
        {"block": "linear"},
    ],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net() -> blocks.Network:
    torch.manual_seed(0)
    model = blocks.build(SPEC)
    model.train()
    with torch.no_grad():  # non-default BatchNorm statistics, so "unchanged" means something
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (24, 3, 32, 32), generator=g, dtype=torch.uint8)
    x = (images.float() / 255 - 0.5) / 0.25
    y = torch.arange(24) % 10
    return images, x, y


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _views(images, x, y):
    masks = torch.zeros(8, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 10:26] = True
    img, x1 = images[0], x[:1]
    return {
        "features": lambda m: feature_grid(m, x1, img, "layers.1.0.conv1"),
        "features-256": lambda m: feature_grid(m, x1, img, "layers.4"),
        "ghost": lambda m: ghost_view(m, x1, img, "layers.3.ghost1"),
        "redundancy": lambda m: redundancy_view(m, x[:4], "layers.4"),
        "redundancy-by-layer": lambda m: redundancy_by_layer(m, x1),
        "se": lambda m: se_view(m, x1, "layers.2.attn"),
        "se-classes": lambda m: se_class_view(m, x, y, "layers.2.attn"),
        "cbam": lambda m: cbam_view(m, x1, img),
        "gradcam": lambda m: attribution_view(m, x1, img, "gradcam", layer="layers.1.1.conv2"),
        "ig": lambda m: attribution_view(m, x1, img, "ig", n_steps=8),
        "saliency": lambda m: attribution_view(m, x1, img, "saliency"),
        "occlusion": lambda m: attribution_view(m, x1, img, "occlusion"),
        "quality": lambda m: attention_quality(m, x[:8], masks, n_steps=4),
        "confusion": lambda m: confusion_view(m, x, y),
        "params-flops": lambda m: params_flops_view(m),
        "stack": lambda m: stack_diagram(m),
    }


VIEW_NAMES = list(_views(*[torch.zeros(1)] * 3))


@pytest.mark.parametrize("name", VIEW_NAMES)
def test_view_leaves_model_as_found(net, batch, name):
    view_fn = _views(*batch)[name]
    net.train()
    net.layers[0].eval()          # a mixed train/eval model must come back mixed
    before = _state(net)
    flags = {n: m.training for n, m in net.named_modules()}
    try:
        view = view_fn(net)
    finally:
        after_flags = {n: m.training for n, m in net.named_modules()}
        net.eval()
    assert isinstance(view, View)
    assert after_flags == flags
    for k, v in _state(net).items():
        assert torch.equal(v, before[k]), f"{k} changed"
    for n, m in net.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, n
        if isinstance(m, (CBAM, SqueezeExcite)):
            assert m.keep_weights is False
            assert getattr(m, "last_weights", None) is None and getattr(m, "last_spatial", None) is None
    assert all(p.grad is None for p in net.parameters())
    assert len(view.figure.to_json()) < 2e6
    json.dumps(view.data, allow_nan=False)


def test_hooks_removed_and_mode_restored_when_forward_raises(net):
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Boom()).train()
    with pytest.raises(RuntimeError, match="boom"):
        run_captured(model, torch.zeros(1, 3, 8, 8), ["0", "1"])
    assert all(not m._forward_hooks for m in model.modules())
    assert all(m.training for m in model.modules())


def test_inspection_mode_restores_each_flag():
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Sequential(nn.Dropout(), nn.BatchNorm2d(2)))
    model.train()
    model[1][1].eval()
    with inspection_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, True, True, False]


# ---------------------------------------------------------------- layer picker

def test_layer_choices_include_nested_modules_with_markers(net):
    choices = {c.name: c for c in layer_choices(net)}
    assert choices["layers.1.0.conv1"].kind == "conv"
    assert "[conv 3×3 · BN · ReLU]" in choices["layers.1.0.conv1"].label
    assert choices["layers.1.1.attn"].label == "layers.1.1.attn  [CBAM]  16×32×32"
    assert choices["layers.2.attn"].kind == "se"
    assert choices["layers.3.ghost1"].kind == "ghost" and choices["layers.3.ghost1"].out_shape == (64, 16, 16)
    assert choices["layers.2.shortcut.0"].out_shape == (32, 16, 16)
    assert "layers.1.0" in choices and choices["layers.1.0"].kind == "block"
    # gates inside attention modules and flat layers are not feature maps
    assert not any(".channel." in n or ".spatial." in n or ".fc1" in n for n in choices)
    assert "layers.5" not in choices and "layers.6" not in choices


def test_resolve_layer_defaults_and_errors(net):
    assert resolve_layer(net, None, ("cbam",)).name == "layers.1.1.attn"
    assert resolve_layer(net, None).name == "layers.4"           # last spec-level feature map
    assert resolve_layer(net, None, ("ghost",), default="first").name == "layers.3.ghost1"
    with pytest.raises(ValueError) as e:
        resolve_layer(net, "layers.1.0.conv", ("conv",))
    msg = str(e.value)
    assert "\n" not in msg and "layers.1.0.conv1" in msg and "valid:" in msg
    with pytest.raises(ValueError, match="no se layer"):
        resolve_layer(net, "layers.1.1.attn", ("se",))


def test_only_cbam_channel_mlp_is_called_twice(net):
    """Captum's layer methods need one call per module: only CBAM's shared MLP (the paper's
    design: one MLP for the avg- and max-pooled descriptors) runs twice per forward."""
    reused = reused_modules(net, torch.zeros(1, 3, 32, 32))
    assert reused and all(".attn.channel.mlp" in n for n in reused)
    assert {n.rsplit(".mlp", 1)[0] for n in reused} == {"layers.1.0.attn.channel", "layers.1.1.attn.channel"}


# ---------------------------------------------------------------- feature maps

def test_feature_grid_orders_channels_by_mean(net, batch):
    images, x, _ = batch
    _, store = run_captured(net, x[:1], ["layers.2"])
    means = store["layers.2"][0].mean(dim=(1, 2)).numpy()
    view = feature_grid(net, x[:1], images[0], "layers.2", sort="mean")
    assert view.data["shape"] == [32, 16, 16]
    assert view.data["order"] == np.argsort(-means, kind="stable").tolist()
    assert np.allclose(view.data["mean"], means, atol=1e-5)
    assert view.data["grid"] == [6, 6]
    assert feature_grid(net, x[:1], images[0], "layers.2", sort="index").data["order"] == list(range(32))
    with pytest.raises(ValueError, match="sort"):
        feature_grid(net, x[:1], images[0], "layers.2", sort="max")


def test_feature_grid_256_channels_is_one_image(net, batch):
    images, x, _ = batch
    view = feature_grid(net, x[:1], images[0], "layers.4")
    assert view.data["shape"] == [256, 8, 8] and view.data["shown"] == 256 and view.data["grid"] == [16, 16]
    kinds = [t.type for t in view.figure.data]
    assert kinds.count("image") == 2 and kinds.count("heatmap") == 1   # input, tiled maps, hover grid
    assert len(view.figure.to_json()) < 2e6


# ---------------------------------------------------------------- Ghost and redundancy

def test_ghost_maps_are_the_cheap_operation_of_the_intrinsic_maps(net, batch):
    _, x, _ = batch
    module = get_module(net, "layers.3.ghost1")
    assert isinstance(module, GhostModule)
    intrinsic, ghost, name = ghost_parts(net, x[:2], "layers.3.ghost1")
    _, store = run_captured(net, x[:2], [name], what="input")
    _, out = run_captured(net, x[:2], [name])
    with torch.no_grad():
        assert torch.allclose(intrinsic, module.primary(store[name]), atol=1e-6)
        assert torch.allclose(ghost, module.cheap(intrinsic), atol=1e-6)
    assert torch.allclose(torch.cat([intrinsic, ghost], 1)[:, :module.c_out], out[name], atol=1e-6)


def test_ghost_view_pairs_each_intrinsic_map_with_its_ghosts(net, batch):
    images, x, _ = batch
    view = ghost_view(net, x[:1], images[0], "layers.3.ghost1", max_rows=8)
    intrinsic, ghost, _ = ghost_parts(net, x[:1], "layers.3.ghost1")
    assert view.data["intrinsic"] == 32 and view.data["ratio"] == 2 and view.data["rows_shown"] == 8
    a, b = intrinsic[0, 3].flatten().double(), ghost[0, 3].flatten().double()
    expected = float(a @ b / (a.norm() * b.norm())) if a.norm() > 0 and b.norm() > 0 else 0.0
    assert view.data["cos_intrinsic_ghost"][3][0] == pytest.approx(expected, abs=1e-4)


def test_cosine_similarity_matrix_is_symmetric_with_unit_diagonal():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(2, 12, 5, 5, generator=g)
    sim = cosine_similarity_matrix(fmap)
    assert sim.shape == (12, 12)
    assert np.allclose(np.diag(sim), 1.0) and np.allclose(sim, sim.T)
    v = fmap.transpose(0, 1).reshape(12, -1).double()
    assert sim[2, 7] == pytest.approx(float(F.cosine_similarity(v[2], v[7], dim=0)), abs=1e-9)


def test_redundancy_score_bounds():
    base = torch.randn(6, 7, 7, generator=torch.Generator().manual_seed(3))
    dup = torch.cat([base, -2.5 * base])                    # every channel has a (scaled) twin
    assert redundancy_score(cosine_similarity_matrix(dup)) == pytest.approx(1.0, abs=1e-9)
    eye = torch.eye(16).reshape(16, 4, 4)                   # mutually orthogonal channels
    assert redundancy_score(cosine_similarity_matrix(eye)) == pytest.approx(0.0, abs=1e-12)
    assert redundancy_score(np.array([[1.0]])) is None


def test_redundancy_of_a_layer_with_duplicated_channels_is_one(batch):
    _, x, _ = batch
    torch.manual_seed(0)
    model = blocks.build({"input": [3, 32, 32], "classes": 4, "layers": [
        {"block": "conv", "params": {"out": 8, "norm": "none", "act": "none"}},
        {"block": "global_avg_pool"}, {"block": "linear"}]})
    conv = model.layers[0].conv
    with torch.no_grad():
        conv.weight[4:] = conv.weight[:4] * 3.0
        conv.bias[4:] = conv.bias[:4] * 3.0
    view = redundancy_view(model, x[:3], "layers.0", pairs=4)
    assert view.data["score"] == pytest.approx(1.0, abs=1e-6)
    assert {(p["i"], p["j"]) for p in view.data["pairs"]} == {(0, 4), (1, 5), (2, 6), (3, 7)}
    sim = np.array(view.data["similarity"])
    assert np.allclose(np.diag(sim), 1) and np.allclose(sim, sim.T)
    layers = redundancy_by_layer(model, x[:3]).data["layers"]
    assert layers == [{"layer": "layers.0", "score": pytest.approx(1.0, abs=1e-6), "channels": 8}]


def test_dead_channels_are_left_out_of_the_score():
    fmap = torch.randn(5, 6, 6, generator=torch.Generator().manual_seed(4))
    fmap[4] = 0
    from visual.ghost import live_channels
    alive = live_channels(fmap)
    assert alive.tolist() == [True, True, True, True, False]
    sim = cosine_similarity_matrix(fmap)
    assert np.all(sim[4, :4] == 0) and sim[4, 4] == 1
    s = np.abs(sim[:4, :4]) - np.eye(4) * 2
    assert redundancy_score(sim, alive) == pytest.approx(float(s.max(1).mean()), abs=1e-12)


# ---------------------------------------------------------------- SE and CBAM against their formulas

def _se_oracle(se: SqueezeExcite, inp: torch.Tensor) -> torch.Tensor:
    z = inp.mean(dim=(2, 3), keepdim=True)
    return torch.sigmoid(F.conv2d(F.relu(F.conv2d(z, se.fc1.weight, se.fc1.bias)), se.fc2.weight,
                                  se.fc2.bias)).flatten(1)


def test_se_excitation_matches_the_formula(net, batch):
    _, x, _ = batch
    se = get_module(net, "layers.2.attn")
    _, store = run_captured(net, x[:1], ["layers.2.attn"], what="input")
    view = se_view(net, x[:1], "layers.2.attn")
    with torch.no_grad():
        expected = _se_oracle(se, store["layers.2.attn"])[0]
    assert np.allclose(view.data["excitation"], expected.numpy(), atol=1e-5)


def test_se_class_channel_rows_are_per_class_means(net, batch):
    _, x, y = batch
    y = y.clone()
    y[y == 7] = 0                                  # class 7 gets no images
    se = get_module(net, "layers.2.attn")
    _, store = run_captured(net, x, ["layers.2.attn"], what="input")
    with torch.no_grad():
        s = _se_oracle(se, store["layers.2.attn"]).double()
    view = se_class_view(net, x, y, "layers.2.attn", batch=5)   # batching must not matter
    m = view.data["matrix"]
    assert len(m) == 10 and len(m[0]) == 32
    for k in range(10):
        if k == 7:
            assert m[k] == [None] * 32
            continue
        assert np.allclose(m[k], s[y == k].mean(0).numpy(), atol=1e-5)
    assert view.data["counts"] == torch.bincount(y, minlength=10).tolist()


def test_cbam_view_matches_the_formula(net, batch):
    images, x, _ = batch
    name = "layers.1.1.attn"
    cbam = get_module(net, name)
    _, store = run_captured(net, x[:1], [name], what="input")
    f = store[name]
    with torch.no_grad():
        mlp = cbam.channel.mlp
        mc = torch.sigmoid(mlp(f.mean(dim=(2, 3))) + mlp(f.amax(dim=(2, 3))))
        f1 = f * mc[:, :, None, None]
        pooled = torch.cat([f1.mean(1, keepdim=True), f1.amax(1, keepdim=True)], 1)
        ms = torch.sigmoid(cbam.spatial.conv(pooled))
    view = cbam_view(net, x[:1], images[0])          # last CBAM by default
    assert view.data["layer"] == name
    assert np.allclose(view.data["channel"], mc[0].numpy(), atol=1e-5)
    assert np.allclose(view.data["spatial"], ms[0, 0].numpy(), atol=1e-5)
    assert view.data["spatial_upsampled_shape"] == [32, 32]


def test_cbam_map_is_upsampled_bilinearly_to_the_input(batch):
    images, x, _ = batch
    torch.manual_seed(2)
    model = blocks.build({"input": [3, 32, 32], "classes": 3, "layers": [
        {"block": "conv", "params": {"out": 8, "stride": 2}}, {"block": "cbam", "params": {"reduction": 2}},
        {"block": "global_avg_pool"}, {"block": "linear"}]})
    view = cbam_view(model, x[:1], images[0])
    small = torch.tensor(view.data["spatial"])[None, None]
    assert view.data["spatial_shape"] == [16, 16]
    up = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    overlay = [t for t in view.figure.data if t.type == "heatmap"][0]
    assert np.allclose(np.asarray(overlay.z), up.numpy(), atol=1e-4)


# ---------------------------------------------------------------- attributions

def test_top5_probabilities_sorted_and_sum_at_most_one(net, batch):
    images, x, _ = batch
    view = attribution_view(net, x[:1], images[0], "saliency", classes=[f"c{i}" for i in range(10)])
    p = view.data["top5"]["probabilities"]
    with torch.no_grad():
        probs = net(x[:1]).softmax(1)[0]
    assert len(p) == 5 and p == sorted(p, reverse=True) and sum(p) <= 1 + 1e-6
    assert view.data["top5"]["classes"] == probs.topk(5).indices.tolist()
    assert np.allclose(p, probs.topk(5).values.numpy(), atol=1e-5)
    assert view.data["target"] == int(probs.argmax()) == view.data["predicted"]
    assert view.data["target_name"] == f"c{view.data['target']}"


def test_gradcam_matches_a_hand_computation(net, batch):
    _, x, _ = batch
    layer = "layers.2"
    target = 3
    module = get_module(net, layer)
    acts = {}
    h = module.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    try:
        net.eval()
        out = net(x[:2])
        a = acts["a"]
        grads = torch.autograd.grad(out[:, target].sum(), a)[0]
    finally:
        h.remove()
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0].detach()
    maps, targets, name = attribution_maps(net, x[:2], "gradcam", target, layer)
    assert name == layer and targets.tolist() == [3, 3]
    assert torch.allclose(maps, expected, atol=1e-6, rtol=1e-4)


def test_saliency_is_the_max_abs_input_gradient(net, batch):
    _, x, _ = batch
    xi = x[:1].clone().requires_grad_(True)
    out = net(xi)
    target = int(out.argmax())
    g = torch.autograd.grad(out[0, target], xi)[0]
    maps, targets, _ = attribution_maps(net, x[:1], "saliency")
    assert targets.tolist() == [target]
    assert torch.allclose(maps[0], g.abs().amax(1)[0], atol=1e-6)


def test_integrated_gradients_is_complete(batch):
    """IG's completeness: Σ attributions = f(x) − f(baseline). On a model whose logit is
    linear in the input every attribution has the sign of w·x, so |·| keeps the total."""
    _, x, _ = batch
    torch.manual_seed(0)
    model = blocks.build({"input": [3, 32, 32], "classes": 2, "layers": [
        {"block": "global_avg_pool"}, {"block": "linear"}]})
    with torch.no_grad():
        model.layers[1].weight.fill_(1.0)
    xp = x[:1].abs()
    maps, _, _ = attribution_maps(model, xp, "ig", target=0, n_steps=16)
    with torch.no_grad():
        delta = model(xp)[0, 0] - model(torch.zeros_like(xp))[0, 0]
    assert float(maps.sum()) == pytest.approx(float(delta), rel=1e-4)


def test_occlusion_window_and_targets(net, batch):
    images, x, _ = batch
    view = attribution_view(net, x[:1], images[0], "occlusion", target=2)
    assert view.data["window"] == [4, 4] and view.data["stride"] == [2, 2]
    assert view.data["target"] == 2 and view.data["map_shape"] == [32, 32]
    with pytest.raises(ValueError, match="target"):
        attribution_view(net, x[:1], images[0], "saliency", target=10)
    with pytest.raises(ValueError, match="method"):
        attribution_maps(net, x[:1], "lime")


# ---------------------------------------------------------------- model views and curves

def test_params_flops_and_stack_follow_the_summary(net):
    s = summarize(net.spec)
    view = params_flops_view(net)
    assert view.data["params"] == s.params == sum(p.numel() for p in net.parameters())
    assert [r["flops"] for r in view.data["layers"]] == [r.flops for r in s.layers]
    stack = stack_diagram(net)
    assert [b["shape"] for b in stack.data["boxes"]] == ["3×32×32"] + ["×".join(map(str, r.out_shape))
                                                                      for r in s.layers]
    assert stack.data["boxes"][2]["label"] == "1: basic_residual ×2"


def test_confusion_matrix_and_per_class_accuracy(net, batch):
    _, x, y = batch
    view = confusion_view(net, x, y, batch=7)
    with torch.no_grad():
        pred = net(x).argmax(1)
    m = np.array(view.data["matrix"])
    assert m.sum() == len(y)
    for t, p in zip(y.tolist(), pred.tolist()):
        m[t, p] -= 1
    assert not m.any()
    assert view.data["accuracy"] == pytest.approx(float((pred == y).double().mean()), abs=1e-6)
    for k in range(10):
        sel = y == k
        expected = float((pred[sel] == k).double().mean())
        assert view.data["per_class_accuracy"][k] == pytest.approx(expected, abs=1e-6)


def _events(n_steps: int, epochs: int) -> list[dict]:
    ev = [{"type": "start"}]
    for s in range(1, n_steps + 1):
        ev.append({"type": "step", "step": s, "epoch": s / (n_steps / epochs), "loss": 3 - s / n_steps})
        if s % (n_steps // epochs) == 0:
            e = s // (n_steps // epochs)
            ev.append({"type": "epoch", "epoch": e, "train_loss": 2.0 / e, "test_loss": 2.2 / e,
                       "train_acc": 0.3 * e, "test_acc": 0.25 * e})
    return ev + [{"type": "end", "status": "completed"}]


def test_curves_overlay_runs():
    view = curves_figure({"a": _events(30, 3), "b": _events(6000, 2)})
    a, b = view.data["runs"]["a"], view.data["runs"]["b"]
    assert a["epoch"] == [1, 2, 3] and a["test_acc"] == [0.25, 0.5, 0.75]
    assert a["train_loss"] == [2.0, 1.0, 2.0 / 3]
    assert len(a["step_loss"]) == 30 and a["step_epoch"][0] == pytest.approx(0.1)
    assert MAX_STEP_POINTS <= len(b["step_loss"]) <= MAX_STEP_POINTS + 1
    assert b["step_epoch"][-1] == 2.0 and b["step_loss"][-1] == 2.0
    traces = view.figure.data
    assert len(traces) == 10 and {t.type for t in traces} == {"scatter"}   # no WebGL
    a_traces = [t for t in traces if t.legendgroup == "a"]
    assert [t.name for t in a_traces] == ["loss per step", "train", "test", "train", "test"]
    assert {t.legendgrouptitle.text for t in a_traces} == {"a"}
    assert len(view.figure.to_json()) < 2e5


def test_curves_tell_runs_and_series_apart():
    """Each run its own colour; train and test differ by dash and marker in both panels;
    one legend group per run with one entry per series (acc reuses the loss entries)."""
    fig = curves_figure({"a": _events(4, 1), "b": _events(4, 1), "c": _events(4, 1)}).figure
    by_run = {g: [t for t in fig.data if t.legendgroup == g] for g in "abc"}
    colours = {g: {t.line.color for t in ts} for g, ts in by_run.items()}
    assert all(len(c) == 1 for c in colours.values()) and len(set.union(*colours.values())) == 3
    for ts in by_run.values():
        epoch = [t for t in ts if t.mode == "lines+markers"]
        train = [t for t in epoch if t.name == "train"]
        test = [t for t in epoch if t.name == "test"]
        assert len(train) == len(test) == 2
        assert {(t.line.dash, t.marker.symbol) for t in train} == {("solid", "circle")}
        assert {(t.line.dash, t.marker.symbol) for t in test} == {("dash", "diamond-open")}
        assert sum(bool(t.showlegend is not False) for t in ts) == 3
    assert fig.layout.legend.groupclick == "togglegroup"


def test_curves_axes_are_there_before_any_epoch_and_loss_can_be_log():
    empty = curves_figure({}).figure
    # a panel without a trace draws no axes in the browser: each has an empty one
    assert sorted(t.xaxis for t in empty.data) == ["x", "x2"]
    assert all(len(t.x) == 0 for t in empty.data)
    assert empty.layout.xaxis.title.text == "epoch" and empty.layout.xaxis2.title.text == "epoch"
    assert tuple(empty.layout.yaxis2.range) == (0, 1.02) and empty.layout.xaxis.range is not None
    steps_only = curves_figure({"a": [e for e in _events(40, 2) if e["type"] == "step"][:10]}).figure
    assert tuple(steps_only.layout.yaxis2.range) == (0, 1.02)
    assert steps_only.layout.xaxis2.range[1] >= 0.5          # shares the loss panel's epochs
    assert curves_figure({"a": _events(4, 1)}).figure.layout.yaxis.type == "linear"
    log = curves_figure({"a": _events(4, 1)}, log_loss=True)
    assert log.figure.layout.yaxis.type == "log" and log.data["log_loss"] is True


def test_captured_keeps_the_last_call(net):
    """A module called twice (CBAM's shared MLP) keeps its last call's output."""
    name = "layers.1.0.attn.channel.mlp"
    seen = []
    mlp = get_module(net, name)
    h = mlp.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with inspection_mode(net), torch.no_grad(), captured(net, [name]) as store:
            net(torch.zeros(1, 3, 32, 32))
    finally:
        h.remove()
    assert len(seen) == 2 and torch.equal(store[name], seen[-1])


# ---------------------------------------------------------------- plot details (issue 15, item 9)

def test_readable_layer_names(net):
    from visual.layers import readable_name
    assert readable_name(net, "layers.1.1.attn") == "layer 1 · block 2 · CBAM"
    assert readable_name(net, "layers.2.attn") == "layer 2 · SE"
    assert readable_name(net, "layers.3.ghost1.primary.0") == "layer 3 · Ghost 1 · primary conv"
    assert readable_name(net, "layers.1") == "layer 1 · basic residual ×2"
    assert readable_name(net, "fc") == "fc"
    choice = {c.name: c for c in layer_choices(net)}["layers.1.1.attn"]
    assert choice.title == "layer 1 · block 2 · CBAM"
    bars = redundancy_by_layer(net, torch.zeros(1, 3, 32, 32)).figure.data[0]
    assert "layer 1 · block 1 · conv 1" in list(bars.x)
    assert not any(str(x).startswith("layers.") for x in bars.x)
    assert any(row[0] == "layers.1.0.conv1" for row in bars.customdata)   # module name on hover
    assert "module %{customdata[0]}" in bars.hovertemplate


def test_colour_bars_have_titles_and_titles_clear_the_toolbar(net, batch):
    images, x, y = batch
    views = [attribution_view(net, x[:1], images[0], "saliency"), cbam_view(net, x[:1], images[0]),
             redundancy_view(net, x[:2], "layers.4"), se_class_view(net, x, y, "layers.2.attn")]
    for v in views:
        bars = [t for t in v.figure.data if t.type == "heatmap" and t.showscale is not False
                and t.colorscale[0][1] != "rgba(0,0,0,0)"]
        assert bars and all(t.colorbar.title.text for t in bars), v.data["view"]
        assert v.figure.layout.margin.t >= 60, v.data["view"]


def test_cbam_map_uses_the_whole_sigmoid_range_and_says_when_flat(net, batch):
    images, x, _ = batch
    v = cbam_view(net, x[:1], images[0])
    heat = [t for t in v.figure.data if t.type == "heatmap"][0]
    assert (heat.zmin, heat.zmax) == (0.0, 1.0)
    lo, hi = v.data["spatial_min"], v.data["spatial_max"]
    title = v.figure.layout.annotations[1].text
    assert f"{lo:.3f}–{hi:.3f}" in title
    assert v.data["nearly_flat"] == (hi - lo < 0.1) and ("nearly flat" in title) == v.data["nearly_flat"]
    stretched = cbam_view(net, x[:1], images[0], fixed_range=False)
    assert [t for t in stretched.figure.data if t.type == "heatmap"][0].zmin is None


def test_ghost_grid_frames_each_intrinsic_map(net, batch):
    images, x, _ = batch
    v = ghost_view(net, x[:1], images[0], "layers.3.ghost1")
    frames = [s for s in v.figure.layout.shapes if s.type == "rect"]
    assert len(frames) == v.data["rows_shown"] == v.data["frames"]
    widths = {round(s.x1 - s.x0, 3) for s in frames}
    assert len(widths) == 1 and widths.pop() >= 16        # one tile each, tiles ≥ 16 px
    assert "framed = intrinsic" in v.figure.layout.annotations[1].text


def test_attribution_view_can_leave_top5_to_the_page(net, batch):
    images, x, _ = batch
    with_bars = attribution_view(net, x[:1], images[0], "saliency")
    without = attribution_view(net, x[:1], images[0], "saliency", show_top5=False)
    assert [t.type for t in with_bars.figure.data].count("bar") == 1
    assert [t.type for t in without.figure.data].count("bar") == 0
    assert without.data["top5"] == with_bars.data["top5"]
