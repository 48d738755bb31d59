"""Effective receptive field (visual/erf.py): the gridding demo and the ERF view."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import blocks
from visual.erf import dilation_stack, erf_map, erf_view, gridding_demo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gridding_demo_reproduces_the_handbook_figures():
    v = gridding_demo()
    assert v.data["2-2-2"] == {"receptive_field": 13, "reachable": 49, "square": 169}
    assert v.data["1-2-3"] == {"receptive_field": 13, "reachable": 169, "square": 169}
    assert len(v.figure.data) == 2 and len(v.figure.layout.shapes) == 2
    # with unit weights the gradient counts paths: 7 tap triples of 2-2-2 sum to 0 per axis, 7² = 49
    heat = erf_map(dilation_stack((2, 2, 2)), 2, n=1)
    assert heat[16, 16] == 49 and heat[16, 17] == 0 and heat[10, 10] == 1


def test_erf_view_lies_inside_the_theoretical_field_and_restores_the_model():
    spec = {"input": [3, 24, 24], "classes": 3,
            "layers": [{"block": "conv", "params": {"out": 4}}, {"block": "conv", "params": {"out": 4, "stride": 2}},
                       {"block": "basic_residual", "params": {"out": 4, "attention": "se"}},
                       {"block": "global_avg_pool"}, {"block": "linear"}]}
    torch.manual_seed(0)
    net = blocks.build(spec).train()
    v = erf_view(net, 1, n=4)
    assert v.data["receptive_field"] == 5 and v.data["jump"] == 2
    assert v.data["share_inside"] == pytest.approx(1.0) and 0 < v.data["reachable"] <= 25
    assert v.data["images"] == 4
    assert net.training and all(m.training for m in net.modules())  # flags restored
    images = torch.randn(2, 3, 24, 24)
    assert np.allclose(erf_map(net, 0, images), erf_map(net, 0, torch.flip(images, [0])))
    g = erf_view(net, 2, n=2)
    assert g.data["rf_global"] and g.data["receptive_field"] == 13
    with pytest.raises(ValueError, match="no layer 9"):
        erf_view(net, 9)
