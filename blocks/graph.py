"""A block's inside as a graph, read from the built module by torch.fx.

`trace(module, in_shape)` symbolically traces a block with every childless module kept as
one node (so a new block needs no drawing code), and records each node's output shape by
running the traced graph on the meta device. `block_graph` turns that into the diagram's
graph: one node per leaf-module call site (a module called twice, like CBAM's shared MLP,
is one node with two inputs) plus one node per merge (add, mul, cat, …); every other
function (mean, amax, slicing, sigmoid calls) is contracted into the edge it sits on, its
name kept as the edge's label. A block that cannot be traced (Python control flow on
tensors) becomes a single opaque node.
"""
from __future__ import annotations

import copy
import operator
import threading
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from blocks.registry import Shape

MERGES = {operator.add: "add", operator.mul: "mul", operator.sub: "sub", operator.truediv: "div",
          torch.add: "add", torch.mul: "mul", torch.sub: "sub", torch.cat: "cat",
          torch.concat: "cat", torch.stack: "stack"}
MERGE_METHODS = {"add": "add", "mul": "mul", "sub": "sub", "div": "div"}


# torch.fx patches nn.Module.__call__ and __getattr__ on the class, for every thread, while it
# traces. Two traces at once would undo each other's patches out of order, so they take turns.
_TRACING = threading.Lock()


class _LeafTracer(fx.Tracer):
    """Every module without children is a leaf (GlobalAvgPool, AddCoords, DropBlock2d…).
    No auto-wrapping of math functions: scanning each forward's globals for them cost more
    than the rest of the trace.

    While it traces, every other thread's modules also pass through fx's patched
    `__call__`/`__getattr__` (a visitor's training beside another's Build-tab edit): for
    them the tracer steps aside and the module runs as usual."""

    def __init__(self):
        super().__init__(autowrap_modules=(), autowrap_functions=())
        self._thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return next(m.children(), None) is None

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def fx_trace(module: nn.Module) -> fx.Graph:
    """`module`'s fx graph, leaves as above; safe beside other threads' forwards and traces."""
    with _TRACING:
        return _LeafTracer().trace(module)


@dataclass
class Traced:
    """A traced block: the fx graph, its owner module and each node's output shape."""
    module: nn.Module
    graph: fx.Graph | None          # None: the block could not be traced
    shapes: dict[str, tuple]        # fx node name -> output shape without the batch dim
    in_shape: Shape
    out_shape: tuple | None
    error: str = ""


def _shape_of(value) -> tuple | None:
    if isinstance(value, torch.Tensor):
        return tuple(int(s) for s in value.shape[1:])
    return None


def trace(module: nn.Module, in_shape: Shape) -> Traced:
    """Trace `module` (any device; shapes are found on a meta copy of the input). A module
    without children (a lone pool or norm) is traced as a one-module sequence, node "0"."""
    if next(module.children(), None) is None:
        module = nn.Sequential(module)
    try:
        graph = fx_trace(module)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "draw it as one box"
        return Traced(module, None, {}, tuple(in_shape), None, f"{type(e).__name__}: {e}"[:200])
    shapes: dict[str, tuple] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            s = _shape_of(out)
            if s is not None:
                shapes[n.name] = s
            return out

    was_training = module.training
    module.eval()
    out_shape = None
    try:
        x = torch.empty((1, *in_shape), device="meta")
        from blocks.builder import _ShapeOnly
        with torch.no_grad(), _ShapeOnly():
            out_shape = _shape_of(_Recorder(_on_meta(module), graph=graph).run(x))
    except Exception as e:  # noqa: BLE001 - shapes are a nicety; the graph is still right
        return Traced(module, graph, shapes, tuple(in_shape), None, f"{type(e).__name__}: {e}"[:200])
    finally:
        module.train(was_training)
    return Traced(module, graph, shapes, tuple(in_shape), out_shape)


def _on_meta(module: nn.Module) -> nn.Module:
    """The module itself when its weights are already on meta, else a meta copy."""
    p = next(module.parameters(), None)
    if p is None or p.is_meta:
        return module
    return copy.deepcopy(module).to("meta")


# ----------------------------------------------------------------------------- diagram graph

@dataclass
class Node:
    id: str                      # "conv1.conv", "add", "cat_1", "input", "output"
    kind: str                    # "input" | "output" | "module" | "merge" | "opaque"
    op: str                      # Conv2d, BatchNorm2d, add, cat, …
    label: str                   # short text for the drawing, e.g. "Conv2d 3×3 /2"
    shape: tuple | None = None   # output shape (C, H, W) or (F,)
    module: nn.Module | None = field(default=None, repr=False)
    params: int = 0


@dataclass
class Edge:
    src: str
    dst: str
    label: str = ""              # contracted functions on the way, e.g. "mean"


@dataclass
class BlockGraph:
    nodes: list[Node]
    edges: list[Edge]
    error: str = ""              # why the block is drawn as one box

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    @property
    def inner(self) -> list[Node]:
        """Nodes other than the block's input and output."""
        return [n for n in self.nodes if n.kind not in ("input", "output")]


def merge_name(n: fx.Node) -> str | None:
    """'add', 'mul', 'cat', … when an fx node merges two or more tensors, else None."""
    if n.op == "call_function" and n.target in MERGES:
        name = MERGES[n.target]
    elif n.op == "call_method" and n.target in MERGE_METHODS:
        name = MERGE_METHODS[n.target]
    else:
        return None
    args = n.args[0] if name in ("cat", "stack") else n.args
    return name if sum(1 for a in _flat(args) if isinstance(a, fx.Node)) >= 2 else None


def _flat(args) -> list:
    out = []
    for a in (args if isinstance(args, (list, tuple)) else [args]):
        if isinstance(a, (list, tuple)):
            out.extend(_flat(a))
        else:
            out.append(a)
    return out


def _fn_name(n: fx.Node) -> str:
    t = n.target
    if n.op == "call_method":
        return str(t)
    if t is operator.getitem:
        return "slice"
    return getattr(t, "__name__", str(t))


def describe_module(m: nn.Module) -> str:
    """A short label for a leaf module: 'Conv2d 3×3 /2 d2', 'MaxPool2d 3×3 /2', 'Linear 512→10'."""
    name = type(m).__name__
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        k, s, d, g = m.kernel_size[0], m.stride[0], m.dilation[0], m.groups
        text = f"{name} {k}×{k}"
        text += f" /{s}" if s > 1 else ""
        text += f" d{d}" if d > 1 else ""
        text += " dw" if g > 1 and g == m.in_channels else (f" g{g}" if g > 1 else "")
        return text
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        s = m.stride if isinstance(m.stride, int) else m.stride[0]
        return f"{name} {k}×{k} /{s}"
    if isinstance(m, nn.Linear):
        return f"Linear {m.in_features}→{m.out_features}"
    return name


def block_graph(module: nn.Module, in_shape: Shape, traced: Traced | None = None) -> BlockGraph:
    """The diagram graph of one block (see the module docstring)."""
    t = traced or trace(module, in_shape)
    if t.graph is None:
        n = Node("block", "opaque", type(module).__name__, type(module).__name__, t.out_shape, module,
                 sum(p.numel() for p in module.parameters()))
        return BlockGraph([Node("input", "input", "input", "input", tuple(in_shape)), n,
                           Node("output", "output", "output", "output", t.out_shape)],
                          [Edge("input", "block"), Edge("block", "output")], t.error)
    nodes: dict[str, Node] = {"input": Node("input", "input", "input", "input", tuple(in_shape))}
    edges: list[Edge] = []
    seen_edges: set[tuple[str, str]] = set()
    # each fx node -> the set of (graph node id, label of contracted ops since it) it stands for
    src: dict[str, list[tuple[str, str]]] = {}
    modules = dict(t.module.named_modules())

    def add_edge(a: str, b: str, label: str) -> None:
        if (a, b) not in seen_edges:
            seen_edges.add((a, b))
            edges.append(Edge(a, b, label))
        elif label:  # a second path between the same nodes (CBAM's mean and max): one edge
            e = next(e for e in edges if (e.src, e.dst) == (a, b))
            if label not in e.label.split(", "):
                e.label = f"{e.label}, {label}" if e.label else label

    def sources(n: fx.Node) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for a in _flat(list(n.args) + list(n.kwargs.values())):
            if isinstance(a, fx.Node):
                for s in src.get(a.name, []):
                    if s not in out:
                        out.append(s)
        return out

    for n in t.graph.nodes:
        if n.op == "placeholder":
            src[n.name] = [("input", "")]
        elif n.op == "get_attr":
            src[n.name] = []
        elif n.op == "call_module":
            node_id = str(n.target)
            if node_id not in nodes:
                m = modules[node_id]
                nodes[node_id] = Node(node_id, "module", type(m).__name__, describe_module(m),
                                      t.shapes.get(n.name), m, sum(p.numel() for p in m.parameters()))
            for s, label in sources(n):
                add_edge(s, node_id, label)
            src[n.name] = [(node_id, "")]
        elif n.op in ("call_function", "call_method") and merge_name(n):
            name = merge_name(n)
            node_id = name if name not in nodes else f"{name}_{sum(1 for k in nodes if k.split('_')[0] == name)}"
            nodes[node_id] = Node(node_id, "merge", name, {"add": "+", "mul": "×", "cat": "concat"}.get(name, name),
                                  t.shapes.get(n.name))
            for s, label in sources(n):
                add_edge(s, node_id, label)
            src[n.name] = [(node_id, "")]
        elif n.op in ("call_function", "call_method"):
            fn = _fn_name(n)
            if fn in ("size", "dim"):
                src[n.name] = []
                continue
            src[n.name] = [(s, f"{label}·{fn}" if label else fn) for s, label in sources(n)]
        elif n.op == "output":
            nodes["output"] = Node("output", "output", "output", "output", t.out_shape)
            for s, label in sources(n):
                add_edge(s, "output", label)
    return BlockGraph(list(nodes.values()), edges)
