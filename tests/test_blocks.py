"""The block library: every registered block's contract, parameter counts against hand
formulas and torchvision, SE/CBAM against their oracles, inspection hooks, CoordConv and
DropBlock behaviour."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.densenet import _DenseBlock, _Transition
from torchvision.models.mobilenetv2 import InvertedResidual as TVInvertedResidual
from torchvision.models.resnet import BasicBlock as TVBasic
from torchvision.models.resnet import Bottleneck as TVBottleneck

import blocks
from blocks.library.attention import CBAM, SqueezeExcite, attention_modules
from blocks.library.ghost import GhostModule

MAP = (3, 32, 32)
TAIL = [{"block": "global_avg_pool"}, {"block": "linear"}]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def one_layer(block: str, params: dict | None = None, input=MAP, flat: bool = False,
              device: str = "cpu", before: list | None = None) -> tuple[nn.Module, blocks.LayerInfo]:
    """Build `block` inside a minimal spec (after `before`, or after a flatten when `flat`);
    return its module and LayerInfo."""
    layers = list(before or []) + ([{"block": "flatten"}] if flat else [])
    layers.append({"block": block, "params": params or {}})
    spec = {"input": list(input), "layers": layers}
    try:
        blocks.build(spec, "meta")
    except blocks.SpecError as e:       # not a classifier yet: close the network with a linear
        if not e.problem.startswith("the network ends with"):
            raise
        spec["layers"] = layers + [{"block": "linear"}]
    net = blocks.build(spec, device)
    i = len(layers) - 1
    return net.layers[i], net.layer_info[i]


BLOCK_NAMES = [b.name for b in blocks.list_blocks()]


# ------------------------------------------------------------------ every registered block

@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_registry_entry_is_complete(name):
    info = blocks.get_block(name)
    assert info.description and info.group in ("convolution", "attention", "regularisation",
                                               "activation", "normalisation", "pooling",
                                               "composite", "head")
    for p in info.params:
        assert p.help, f"{name}.{p.name} has no help line"
        # every default passes its own validation
        assert p.validate(p.default) == p.default or p.default is None


def _inputs_for(name: str):
    info = blocks.get_block(name)
    # 32 channels: grouped_conv's default groups=2 divides them, and SE/CBAM's default
    # reduction 16 leaves two hidden units (a single one can be a dead ReLU)
    cases = [((32, 16, 16), False)]
    if info.takes_flat:
        cases.append(((3, 4, 4), True))
    return cases


CASES = [(n, shape, flat) for n in BLOCK_NAMES for shape, flat in _inputs_for(n)]


@pytest.mark.parametrize("name,shape,flat", CASES,
                         ids=[f"{n}-{'flat' if f else 'map'}" for n, _, f in CASES])
def test_block_contract(name, shape, flat):
    torch.manual_seed(0)
    module, info = one_layer(name, input=shape, flat=flat)
    x = torch.randn(2, *info.in_shape, requires_grad=True)
    if flat:
        assert len(info.in_shape) == 1 and info.in_shape[0] == math.prod(shape)

    # forward in training mode; the output shape is what the builder promised
    module.train()
    y = module(x)
    assert tuple(y.shape) == (2, *info.out_shape)
    assert torch.isfinite(y).all()

    # gradients reach every parameter (a random projection, so BN cannot cancel them)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()   # attributions need this
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: gradient of {pname} is not finite"
        assert p.grad.abs().sum() > 0, f"{name}: gradient of {pname} is zero"

    # no in-place ops (Captum needs them pure)
    for mname, m in module.named_modules():
        assert getattr(m, "inplace", False) is False, f"{name}: {mname or 'module'} is in-place"

    # eval mode is deterministic (DropBlock/Dropout off, BN on running stats)
    module.eval()
    with torch.no_grad():
        x = x.detach()
        assert torch.equal(module(x), module(x))


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_meta_build_matches_cpu_build(name):
    """The builder infers shapes on the meta device; a CPU forward must agree for a second
    input size too (odd sides catch rounding in strides and pools)."""
    torch.manual_seed(0)
    module, info = one_layer(name, input=(6, 23, 19))
    module.eval()
    with torch.no_grad():
        y = module(torch.randn(1, 6, 23, 19))
    assert tuple(y.shape[1:]) == info.out_shape
    meta_module, meta_info = one_layer(name, input=(6, 23, 19), device="meta")
    assert meta_info.out_shape == info.out_shape
    assert n_params(meta_module) == n_params(module)
    assert all(p.is_meta for p in meta_module.parameters())


# ------------------------------------------------------------------ parameter counts

def count(block, params=None, input=MAP):
    return n_params(one_layer(block, params, input)[0])


def test_handbook_conv_counts():
    # the handbook's 10×10 conv, 3 -> 30 channels, with bias: 30·(3·10·10) + 30
    plain = dict(out=30, kernel=10, norm="none", act="none")
    assert count("conv", plain) == 9_030
    assert count("conv", {**plain, "groups": 3}) == 3_030       # 30·(1·100) + 30
    assert count("conv", {**plain, "kernel": 1}) == 120          # 30·3 + 30
    assert count("depthwise_separable", plain) == 423            # (3·100 + 3) + (3·30 + 30)


def test_conv_counts_with_norm_and_bias_switch():
    # with BatchNorm the conv has no bias; BN adds 2 per channel
    assert count("conv", dict(out=16, kernel=3)) == 16 * 3 * 9 + 2 * 16
    assert count("conv", dict(out=16, kernel=3, bias=True)) == 16 * 3 * 9 + 16 + 2 * 16
    assert count("conv", dict(out=16, kernel=3, norm="none", bias=False)) == 16 * 3 * 9
    assert count("pointwise_conv", dict(out=16)) == 16 * 3 + 2 * 16


def test_depthwise_grouped_dilated_counts():
    c = (8, 16, 16)
    assert count("depthwise_conv", dict(kernel=5), c) == 8 * 25 + 2 * 8
    assert count("grouped_conv", dict(out=12, groups=4), c) == 12 * (8 // 4) * 9 + 2 * 12
    # dilation widens the field, not the weights
    assert count("dilated_conv", dict(out=16, dilation=3), c) == count("conv", dict(out=16), c)
    module, info = one_layer("dilated_conv", dict(out=16, dilation=3), c)
    assert module.conv.dilation == (3, 3) and info.out_shape == (16, 16, 16)


def test_depthwise_separable_with_norm():
    # MobileNetV1 Fig. 3: dw 3×3 + BN + ReLU, pw 1×1 + BN + ReLU
    assert count("depthwise_separable", dict(out=32), (8, 16, 16)) == \
        (8 * 9 + 2 * 8) + (8 * 32 + 2 * 32)


def test_transposed_conv_count_and_shape():
    module, info = one_layer("transposed_conv", dict(out=16))
    assert n_params(module) == 3 * 16 * 2 * 2 + 2 * 16
    assert info.out_shape == (16, 64, 64)   # (32 − 1)·2 − 0 + 2
    _, info = one_layer("transposed_conv", dict(out=4, kernel=3, stride=2, padding=1,
                                                  output_padding=1))
    assert info.out_shape == (4, 64, 64)    # (32 − 1)·2 − 2 + 3 + 1


@pytest.mark.parametrize("with_r,extra", [(False, 2), (True, 3)])
def test_coord_conv_count(with_r, extra):
    module, info = one_layer("coord_conv", dict(out=16, with_r=with_r))
    assert module.conv.conv.in_channels == 3 + extra
    assert n_params(module) == 16 * (3 + extra) * 9 + 2 * 16
    assert info.out_shape == (16, 32, 32)


@pytest.mark.parametrize("out,ratio,kernel,dw", [(16, 2, 1, 3), (10, 3, 3, 3), (64, 4, 1, 5)])
def test_ghost_module_count(out, ratio, kernel, dw):
    m = math.ceil(out / ratio)          # intrinsic maps
    primary = m * 3 * kernel * kernel + 2 * m
    cheap = m * (ratio - 1) * dw * dw + 2 * m * (ratio - 1)
    module, info = one_layer("ghost_module", dict(out=out, ratio=ratio, kernel=kernel,
                                                  dw_kernel=dw))
    assert n_params(module) == primary + cheap
    assert info.out_shape == (out, 32, 32)


def test_ghost_module_is_cheaper_than_a_conv():
    # GhostNet Sec. 3.1: about s times fewer weights than the conv it replaces
    ghost = count("ghost_module", dict(out=64, kernel=3, ratio=2), (64, 8, 8))
    conv = count("conv", dict(out=64, kernel=3), (64, 8, 8))
    assert conv / ghost == pytest.approx(2, rel=0.05)


@pytest.mark.parametrize("c,r", [(64, 16), (32, 4), (8, 16)])
def test_se_count(c, r):
    hidden = max(1, c // r)
    assert count("se", dict(reduction=r), (c, 8, 8)) == (c * hidden + hidden) + (hidden * c + c)


@pytest.mark.parametrize("c,r,k", [(64, 16, 7), (32, 8, 3)])
def test_cbam_count(c, r, k):
    hidden = max(1, c // r)
    mlp = (c * hidden + hidden) + (hidden * c + c)
    spatial = 2 * k * k + 1
    assert count("cbam", dict(reduction=r, kernel=k), (c, 8, 8)) == mlp + spatial


def _conv_bn(c_in, c_out, k):
    return c_in * c_out * k * k + 2 * c_out


def test_basic_residual_counts_match_formula_and_torchvision():
    same = count("basic_residual", dict(out=16), (16, 8, 8))
    assert same == 2 * _conv_bn(16, 16, 3)
    assert same == n_params(TVBasic(16, 16))
    down = count("basic_residual", dict(out=32, stride=2), (16, 8, 8))
    assert down == _conv_bn(16, 32, 3) + _conv_bn(32, 32, 3) + _conv_bn(16, 32, 1)
    tv = TVBasic(16, 32, 2, downsample=nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False),
                                                    nn.BatchNorm2d(32)))
    assert down == n_params(tv)
    # attention adds exactly the attention module's weights
    hidden = 32 // 16
    assert count("basic_residual", dict(out=32, stride=2, attention="se"), (16, 8, 8)) == \
        down + (32 * hidden + hidden) + (hidden * 32 + 32)


def test_bottleneck_counts_match_torchvision():
    ours = count("bottleneck_residual", dict(out=256), (64, 8, 8))
    tv = TVBottleneck(64, 64, downsample=nn.Sequential(nn.Conv2d(64, 256, 1, bias=False),
                                                       nn.BatchNorm2d(256)))
    assert ours == n_params(tv) == _conv_bn(64, 64, 1) + _conv_bn(64, 64, 3) + \
        _conv_bn(64, 256, 1) + _conv_bn(64, 256, 1)
    # identity shortcut, ResNeXt groups
    assert count("bottleneck_residual", dict(out=64, mid=32, groups=4), (64, 8, 8)) == \
        _conv_bn(64, 32, 1) + (32 * 8 * 9 + 64) + _conv_bn(32, 64, 1)


def test_dense_block_and_transition_counts_match_torchvision():
    c0, layers, k, bs = 16, 4, 12, 4
    formula = sum(2 * (c0 + i * k) + (c0 + i * k) * bs * k + 2 * bs * k + bs * k * k * 9
                  for i in range(layers))
    module, info = one_layer("dense_block", dict(layers=layers, growth=k, bn_size=bs), (c0, 8, 8))
    assert n_params(module) == formula
    assert n_params(module) == n_params(_DenseBlock(layers, c0, bs, k, 0.0))
    assert info.out_shape == (c0 + layers * k, 8, 8)
    c = c0 + layers * k
    module, info = one_layer("transition", dict(compression=0.5), (c, 8, 8))
    assert n_params(module) == 2 * c + c * (c // 2) == n_params(_Transition(c, c // 2))
    assert info.out_shape == (c // 2, 4, 4)


@pytest.mark.parametrize("c_in,out,t,stride", [(16, 24, 6, 2), (24, 24, 6, 1), (16, 16, 1, 1)])
def test_inverted_residual_counts_match_torchvision(c_in, out, t, stride):
    hidden = c_in * t
    formula = (_conv_bn(c_in, hidden, 1) if t != 1 else 0) + (hidden * 9 + 2 * hidden) + \
        _conv_bn(hidden, out, 1)
    module, info = one_layer("inverted_residual", dict(out=out, expand=t, stride=stride),
                             (c_in, 16, 16))
    assert n_params(module) == formula == n_params(TVInvertedResidual(c_in, out, stride, t))
    assert module.use_residual == (stride == 1 and c_in == out)
    assert info.out_shape == (out, 16 // stride, 16 // stride)


def test_inception_count():
    # GoogLeNet's inception (3a): 192 -> 64 + 128 + 32 + 32 = 256 channels
    c = 192
    p = dict(c1=64, c2=[96, 128], c3=[16, 32], c4=32)
    formula = _conv_bn(c, 64, 1) + _conv_bn(c, 96, 1) + _conv_bn(96, 128, 3) + \
        _conv_bn(c, 16, 1) + _conv_bn(16, 32, 5) + _conv_bn(c, 32, 1)
    module, info = one_layer("inception", p, (3, 8, 8), before=[
        {"block": "conv", "params": {"out": c, "kernel": 1}}])
    assert n_params(module) == formula
    assert info.out_shape == (256, 8, 8)


def test_vgg_nin_linear_counts():
    assert count("vgg_block", dict(out=64, convs=2)) == (64 * 3 * 9 + 64) + (64 * 64 * 9 + 64)
    _, info = one_layer("vgg_block", dict(out=64, convs=2))
    assert info.out_shape == (64, 16, 16)
    # NiN: k×k conv then two 1×1 convs, all with bias (no norm)
    assert count("nin_block", dict(out=96, kernel=11, stride=4)) == \
        (96 * 3 * 121 + 96) + 2 * (96 * 96 + 96)
    _, info = one_layer("nin_block", dict(out=96, kernel=11, stride=4))
    assert info.out_shape == (96, 6, 6)     # ⌊(32 − 11)/4⌋ + 1
    # linear flattens a map: C·H·W inputs
    assert count("linear", dict(out=10)) == 3 * 32 * 32 * 10 + 10
    assert count("linear", dict(out=10, bias=False), (3, 4, 4)) == 48 * 10


def test_parameter_free_blocks():
    for name in ("relu", "relu6", "swish", "hardswish", "sigmoid", "tanh", "maxpool", "avgpool",
                 "global_avg_pool", "flatten", "dropout", "dropblock", "lrn"):
        assert count(name) == 0, name
    assert count("batchnorm") == 2 * 3


# ------------------------------------------------------------------ SE and CBAM against oracles

@pytest.mark.parametrize("c,r", [(64, 16), (24, 4)])
def test_se_matches_torchvision(c, r):
    torch.manual_seed(0)
    ours = SqueezeExcite(c, r)
    tv = torchvision.ops.SqueezeExcitation(c, c // r)
    with torch.no_grad():
        for p in tv.parameters():
            p.normal_(0, 0.5)
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(3, c, 7, 5)
    torch.testing.assert_close(ours(x), tv(x))


def test_se_from_registry_matches_torchvision():
    module, _ = one_layer("se", dict(reduction=8), (32, 6, 6))
    tv = torchvision.ops.SqueezeExcitation(32, 4)
    module.load_state_dict(tv.state_dict())
    x = torch.randn(2, 32, 6, 6)
    torch.testing.assert_close(module(x), tv(x))


def test_se_gate_by_hand():
    # one channel, hidden 1, every weight written out: s = σ(w2·relu(w1·mean + b1) + b2)
    se = SqueezeExcite(1, reduction=1)
    with torch.no_grad():
        se.fc1.weight.fill_(2.0)
        se.fc1.bias.fill_(-1.0)
        se.fc2.weight.fill_(3.0)
        se.fc2.bias.fill_(0.5)
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])          # mean 3
    s = torch.sigmoid(torch.tensor(3.0 * max(0.0, 2.0 * 3 - 1.0) + 0.5))
    torch.testing.assert_close(se(x), x * s)


def cbam_by_the_paper(m: CBAM, feat: torch.Tensor) -> torch.Tensor:
    """Woo et al. 2018, Eq. 2-3, with plain tensor ops and the module's own weights."""
    w0, b0 = m.channel.mlp[1].weight, m.channel.mlp[1].bias      # C/r × C
    w1, b1 = m.channel.mlp[3].weight, m.channel.mlp[3].bias      # C × C/r

    def mlp(v):                                                  # shared MLP, ReLU between
        return torch.clamp(v @ w0.T + b0, min=0) @ w1.T + b1

    f_avg = feat.sum(dim=(2, 3)) / (feat.shape[2] * feat.shape[3])
    f_max = feat.flatten(2).max(dim=2).values
    mc = 1 / (1 + torch.exp(-(mlp(f_avg) + mlp(f_max))))         # Mc = σ(MLP(avg) + MLP(max))
    f1 = mc[:, :, None, None] * feat                             # F' = Mc ⊗ F
    desc = torch.stack([f1.mean(dim=1), f1.max(dim=1).values], dim=1)   # [AvgPool_c; MaxPool_c]
    k = m.spatial.conv.weight.shape[-1]
    ms = 1 / (1 + torch.exp(-(F.conv2d(desc, m.spatial.conv.weight, m.spatial.conv.bias,
                                       padding=k // 2))))        # Ms = σ(f7×7(·))
    return ms * f1                                               # F'' = Ms ⊗ F'


@pytest.mark.parametrize("c,r,k,hw", [(32, 16, 7, (9, 11)), (8, 2, 3, (5, 5))])
def test_cbam_matches_the_paper(c, r, k, hw):
    torch.manual_seed(0)
    m, _ = one_layer("cbam", dict(reduction=r, kernel=k), (c, *hw))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, c, *hw)
    torch.testing.assert_close(m(x), cbam_by_the_paper(m, x))


def test_cbam_spatial_conv_padding_by_hand():
    # with a 7×7 kernel that only reads the centre of the max channel, Ms = σ(max_c F')
    m = CBAM(2, reduction=1, kernel=7)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.spatial.conv.weight[0, 1, 3, 3] = 1.0
    x = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])             # 1×2×1×2
    f1 = 0.5 * x                                                   # Mc = σ(0) = 0.5
    ms = torch.sigmoid(f1.max(dim=1, keepdim=True).values)
    torch.testing.assert_close(m(x), ms * f1)


# ------------------------------------------------------------------ inspection contracts

def test_se_keeps_the_weights_it_applied():
    se, _ = one_layer("se", dict(reduction=4), (16, 6, 6))
    x = torch.randn(3, 16, 6, 6)
    se(x)
    assert se.last_weights is None                     # not asked: nothing stored
    se.keep_weights = True
    y = se(x)
    w = se.last_weights
    assert w.shape == (3, 16) and not w.requires_grad
    assert ((w > 0) & (w < 1)).all()
    torch.testing.assert_close(y, x * w[:, :, None, None])


def test_cbam_keeps_the_maps_it_applied():
    cbam, _ = one_layer("cbam", dict(reduction=4), (16, 6, 7))
    x = torch.randn(3, 16, 6, 7, requires_grad=True)
    cbam(x)
    assert cbam.last_channel is None and cbam.last_spatial is None
    cbam.keep_weights = True
    y = cbam(x)
    mc, ms = cbam.last_channel, cbam.last_spatial
    assert mc.shape == (3, 16) and ms.shape == (3, 1, 6, 7)
    assert not mc.requires_grad and not ms.requires_grad
    torch.testing.assert_close(y, x * mc[:, :, None, None] * ms)


def test_attention_inside_residual_blocks_is_found_and_inspectable():
    spec = {"input": [3, 16, 16], "layers": [
        {"block": "conv", "params": {"out": 16}},
        {"block": "basic_residual", "params": {"out": 16, "attention": "cbam"}, "repeat": 2},
        {"block": "inverted_residual", "params": {"out": 16, "attention": "se"}},
        *TAIL]}
    net = blocks.build(spec)
    found = attention_modules(net)
    assert [type(m) for _, m in found] == [CBAM, CBAM, SqueezeExcite]
    assert [n for n, _ in found] == ["layers.1.0.attn", "layers.1.1.attn", "layers.2.attn"]
    for _, m in found:
        m.keep_weights = True
    net(torch.randn(2, 3, 16, 16))
    assert found[0][1].last_spatial.shape == (2, 1, 16, 16)
    assert found[2][1].last_weights.shape == (2, 16 * 6)


INSPECTABLE = [(b.name, kind) for b in blocks.list_blocks() for kind in b.inspect]


@pytest.mark.parametrize("name,kind", INSPECTABLE, ids=[f"{n}-{k}" for n, k in INSPECTABLE])
def test_every_inspectable_block_offers_what_it_declares(name, kind):
    """A block whose registry entry lists `se`, `cbam` or `ghost` hands inspection those."""
    torch.manual_seed(0)
    info = blocks.get_block(name)
    params = {"attention": kind} if kind in ("se", "cbam") and "attention" in info.defaults() else {}
    module, layer = one_layer(name, params, (16, 12, 12))
    x = torch.randn(2, 16, 12, 12)
    if kind == "ghost":
        ghosts = [m for m in module.modules() if isinstance(m, GhostModule)]
        assert ghosts
        intrinsic, ghost = ghosts[0].forward_parts(torch.randn(2, ghosts[0].primary[0].in_channels,
                                                               12, 12))
        assert intrinsic.shape[1] == math.ceil(ghosts[0].c_out / ghosts[0].ratio)
        assert ghost.shape[1] == intrinsic.shape[1] * (ghosts[0].ratio - 1)
        return
    found = attention_modules(module)
    assert found and all(isinstance(m, CBAM if kind == "cbam" else SqueezeExcite) for _, m in found)
    for _, m in found:
        m.keep_weights = True
    module.eval()
    with torch.no_grad():
        module(x)
    for _, m in found:
        stored = m.last_channel if kind == "cbam" else m.last_weights
        assert stored is not None and stored.shape[0] == 2


@pytest.mark.parametrize("out,ratio", [(16, 2), (10, 3), (12, 4)])
def test_ghost_forward_parts(out, ratio):
    torch.manual_seed(0)
    m, _ = one_layer("ghost_module", dict(out=out, ratio=ratio), (6, 8, 8))
    m.eval()
    x = torch.randn(2, 6, 8, 8)
    intrinsic, ghost = m.forward_parts(x)
    init = math.ceil(out / ratio)
    assert intrinsic.shape == (2, init, 8, 8)
    assert ghost.shape == (2, init * (ratio - 1), 8, 8)
    torch.testing.assert_close(ghost, m.cheap(intrinsic))
    torch.testing.assert_close(m(x), torch.cat([intrinsic, ghost], dim=1)[:, :out])


def test_ghost_channel_derives_from_one_intrinsic_channel():
    """Ghost channel j·(s−1)+t is a cheap op on intrinsic channel j, and on no other."""
    torch.manual_seed(0)
    s = 3
    m = GhostModule(4, 12, ratio=s)
    m.eval()
    intrinsic = torch.randn(1, 4, 6, 6, requires_grad=True)
    ghost = m.cheap(intrinsic)
    assert ghost.shape[1] == 4 * (s - 1)
    for g in range(ghost.shape[1]):
        (grad,) = torch.autograd.grad(ghost[:, g].sum(), intrinsic, retain_graph=True)
        touched = grad.abs().sum(dim=(0, 2, 3)) > 0
        expected = torch.zeros(4, dtype=torch.bool)
        expected[g // (s - 1)] = True
        assert torch.equal(touched, expected), f"ghost {g} reads intrinsic {touched.nonzero().flatten().tolist()}"


def test_ghost_perturbing_one_intrinsic_channel_moves_only_its_ghosts():
    torch.manual_seed(0)
    s = 4
    m = GhostModule(3, 8, ratio=s)
    m.eval()
    intrinsic = torch.randn(1, 2, 5, 5)
    bumped = intrinsic.clone()
    bumped[:, 1] += 1.0
    with torch.no_grad():
        moved = (m.cheap(bumped) - m.cheap(intrinsic)).abs().sum(dim=(0, 2, 3)) > 0
    assert moved.tolist() == [False] * (s - 1) + [True] * (s - 1)


# ------------------------------------------------------------------ CoordConv

@pytest.mark.parametrize("with_r", [False, True])
def test_coord_channels(with_r):
    m, _ = one_layer("coord_conv", dict(out=4, with_r=with_r), (2, 5, 7))
    x = torch.randn(2, 2, 5, 7)
    c = m.coords(x)
    assert c.shape == (2, 4 + int(with_r), 5, 7)
    torch.testing.assert_close(c[:, :2], x)                  # input first, untouched
    xx, yy = c[:, 2], c[:, 3]
    assert xx.min() == -1 and xx.max() == 1 and yy.min() == -1 and yy.max() == 1
    # x varies along the width only, y along the height only
    torch.testing.assert_close(xx[0, 2], torch.linspace(-1, 1, 7))
    torch.testing.assert_close(yy[0, :, 4], torch.linspace(-1, 1, 5))
    assert (xx == xx[:, :1, :]).all() and (yy == yy[:, :, :1]).all()
    if with_r:
        torch.testing.assert_close(c[:, 4], torch.sqrt(xx ** 2 + yy ** 2))
        assert c[0, 4, 2, 3].item() == pytest.approx(0, abs=1e-6)  # the centre of a 5×7 map
        assert c[0, 4, 0, 0].item() == pytest.approx(math.sqrt(2))


def test_coord_channels_on_a_single_row_or_column():
    m, _ = one_layer("coord_conv", dict(out=4, kernel=1), (1, 1, 4))
    c = m.coords(torch.zeros(1, 1, 1, 4))
    torch.testing.assert_close(c[0, 1, 0], torch.linspace(-1, 1, 4))
    assert (c[0, 2] == 0).all()                              # a single row sits at y = 0


def test_coord_conv_is_not_translation_invariant():
    # the same pattern at two places gives different outputs (the point of CoordConv)
    torch.manual_seed(0)
    m, _ = one_layer("coord_conv", dict(out=4, norm="none", act="none"), (1, 8, 8))
    a = torch.zeros(1, 1, 8, 8)
    b = torch.zeros(1, 1, 8, 8)
    a[0, 0, 2, 2] = 1
    b[0, 0, 5, 5] = 1
    with torch.no_grad():
        ya, yb = m(a), m(b)
    assert not torch.allclose(ya[..., 1:4, 1:4], yb[..., 4:7, 4:7])


# ------------------------------------------------------------------ DropBlock

def _dropblock(p, block_size=3, shape=(64, 32, 32)):
    return one_layer("dropblock", dict(p=p, block_size=block_size), shape)[0]


def test_dropblock_p0_is_identity_in_training():
    m = _dropblock(0.0)
    m.train()
    x = torch.randn(2, 64, 32, 32)
    assert torch.equal(m(x), x)


def test_dropblock_is_identity_in_eval():
    m = _dropblock(0.5)
    m.eval()
    x = torch.randn(2, 64, 32, 32)
    assert torch.equal(m(x), x)


def _covered_by_full_blocks(zero: torch.Tensor, bs: int) -> torch.Tensor:
    """Pixels that lie in some bs×bs window that is entirely zero."""
    full = F.avg_pool2d(zero, bs, stride=1) > 1 - 1e-6            # windows wholly dropped
    return F.max_pool2d(F.pad(full.float(), (bs - 1,) * 4), bs, stride=1) > 0


def test_dropblock_rate_blocks_and_rescaling():
    torch.manual_seed(1234)
    p, bs = 0.2, 3
    m = _dropblock(p, bs)
    m.train()
    x = torch.ones(1, 64, 32, 32)
    shares = []
    for _ in range(8):
        y = m(x)
        zero = (y == 0).float()
        share = zero.mean().item()
        shares.append(share)
        # every dropped pixel belongs to a dropped bs×bs block: contiguous squares
        assert torch.equal(_covered_by_full_blocks(zero, bs), zero.bool())
        # the kept values are rescaled so that the mean stays 1
        kept = y[y != 0]
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - share)), rtol=1e-4, atol=0)
        assert y.mean().item() == pytest.approx(1.0, abs=1e-4)
    assert sum(shares) / len(shares) == pytest.approx(p, abs=0.05)


def test_dropblock_drops_more_at_higher_p():
    torch.manual_seed(0)
    x = torch.ones(1, 64, 32, 32)
    low, high = _dropblock(0.1), _dropblock(0.4)
    low.train()
    high.train()
    z_low = sum((low(x) == 0).float().mean().item() for _ in range(4)) / 4
    z_high = sum((high(x) == 0).float().mean().item() for _ in range(4)) / 4
    assert z_low == pytest.approx(0.1, abs=0.05)
    assert z_high > 2 * z_low


def test_dropout_rate_and_rescaling():
    torch.manual_seed(0)
    m, _ = one_layer("dropout", dict(p=0.3))
    m.train()
    y = m(torch.ones(4, 3, 32, 32))
    assert (y == 0).float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / 0.7)]
