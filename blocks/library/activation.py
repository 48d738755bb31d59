"""Activations as standalone layers. None is in-place (Captum needs distinct, pure modules)."""
from __future__ import annotations

from blocks.library.common import make_act
from blocks.registry import register

_ACTS = [
    ("relu", "ReLU: max(0, x).", "Nair & Hinton 2010"),
    ("relu6", "ReLU6: min(max(0, x), 6), robust under low precision.", "Howard et al. 2017, MobileNets"),
    ("swish", "Swish / SiLU: x·sigmoid(x), smooth and non-monotonic.",
     "Ramachandran et al. 2017, Searching for Activation Functions"),
    ("hardswish", "Hard-swish: x·ReLU6(x+3)/6, a cheap Swish.", "Howard et al. 2019, MobileNetV3"),
    ("sigmoid", "Sigmoid: 1/(1+e^−x).", ""),
    ("tanh", "Tanh: hyperbolic tangent.", ""),
]


def _make(name: str):
    def factory(in_shape):
        return make_act(name)
    factory.__name__ = name
    return factory


for _name, _desc, _paper in _ACTS:
    register(_name, "activation", [], _desc, _paper, takes_flat=True)(_make(_name))
