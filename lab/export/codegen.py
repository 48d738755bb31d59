"""A built network as Python source that needs torch alone (the standalone export).

The generator walks the module tree instead of re-deriving it from the spec, so any block
made of supported pieces exports without changes here:

* torch.nn leaf modules (`LEAVES`) become constructor calls with their exact arguments;
* nn.Sequential (and subclasses that keep Sequential's forward) becomes
  `nn.Sequential(OrderedDict(...))` with the same child names;
* any other module class (ConvScope's blocks, `Network`) becomes a class of the same name
  whose `__init__` receives its children and plain attributes ready-made and whose other
  methods (`forward`, `forward_parts`, properties …) are copied verbatim. Every name a
  copied method uses is resolved: torch/nn/F/math and builtins pass; helper functions,
  constants and module classes it refers to are copied too; anything else is refused.
* torchvision's DropBlock2d becomes the torch-only `DropBlock2d` below (same gamma, same
  random draws, so the same output for the same seed).

The result has the same state_dict keys and shapes, so the ConvScope weights load
strictly. The runtime half of the file (load, predict, train, check) is copied from
`lab/export/standalone_runtime.py`.
"""
from __future__ import annotations

import ast
import builtins
import functools
import inspect
import keyword
import math
import numbers
import pprint
import textwrap
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

RUNTIME_FILE = Path(__file__).with_name("standalone_runtime.py")
RUNTIME_MARKER = "# ---8<--- copied into exported files from here"
MAX_LITERAL_TENSOR = 4096   # elements; bigger non-persistent buffers are refused


class ExportError(ValueError):
    """The model holds something the standalone file cannot express; says what and where."""


class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al. 2018), torch only; the same computation as torchvision's
    `DropBlock2d`: block centres drawn with the paper's Eq. 1 rate
    γ = p/bs² · H·W/((H−bs+1)(W−bs+1)), each grown to a bs×bs square by max-pooling, the
    kept activations rescaled by numel/kept. Identity in eval mode or when p = 0."""

    def __init__(self, p: float, block_size: int, inplace: bool = False, eps: float = 1e-06):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
        self.p, self.block_size, self.inplace, self.eps = p, block_size, inplace, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        n, c, h, w = x.shape
        bs = min(self.block_size, h, w)
        if bs % 2 == 0:
            raise ValueError(f"block size should be odd, got {bs}")
        gamma = (self.p * h * w) / ((bs ** 2) * ((h - bs + 1) * (w - bs + 1)))
        noise = torch.empty((n, c, h - bs + 1, w - bs + 1), dtype=x.dtype, device=x.device)
        noise.bernoulli_(gamma)
        noise = F.pad(noise, [bs // 2] * 4, value=0)
        noise = F.max_pool2d(noise, stride=(1, 1), kernel_size=(bs, bs), padding=bs // 2)
        keep = 1 - noise
        return x * keep * (keep.numel() / (self.eps + keep.sum()))


# torch.nn leaves: constructor arguments, read back from attributes of the same name.
# `bias` is written as `bias=<module has a bias>`.
_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
         "groups", "bias", "padding_mode")
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_INPLACE = ("inplace",)
LEAVES: dict[type, tuple[str, ...]] = {
    nn.Conv1d: _CONV, nn.Conv2d: _CONV,
    nn.ConvTranspose2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                         "output_padding", "groups", "bias", "dilation", "padding_mode"),
    nn.BatchNorm1d: _BN, nn.BatchNorm2d: _BN,
    nn.GroupNorm: ("num_groups", "num_channels", "eps", "affine"),
    nn.LayerNorm: ("normalized_shape", "eps", "elementwise_affine", "bias"),
    nn.LocalResponseNorm: ("size", "alpha", "beta", "k"),
    nn.Linear: ("in_features", "out_features", "bias"),
    nn.Identity: (), nn.Flatten: ("start_dim", "end_dim"),
    nn.ReLU: _INPLACE, nn.ReLU6: _INPLACE, nn.SiLU: _INPLACE, nn.Hardswish: _INPLACE,
    nn.Hardsigmoid: _INPLACE, nn.Mish: _INPLACE, nn.Sigmoid: (), nn.Tanh: (),
    nn.GELU: ("approximate",), nn.LeakyReLU: ("negative_slope", "inplace"),
    nn.ELU: ("alpha", "inplace"), nn.Softmax: ("dim",),
    nn.Dropout: ("p", "inplace"), nn.Dropout2d: ("p", "inplace"),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"),
    nn.AdaptiveAvgPool2d: ("output_size",), nn.AdaptiveMaxPool2d: ("output_size", "return_indices"),
    nn.Upsample: ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor"),
    nn.PixelShuffle: ("upscale_factor",), nn.ZeroPad2d: ("padding",),
}
# Modules from other libraries, replaced by a torch-only class defined in this file.
VENDORED: dict[str, type] = {"torchvision.ops.drop_block.DropBlock2d": DropBlock2d}
_SQUARE = {"kernel_size", "stride", "padding", "dilation", "output_padding"}
# What the generated file binds at the top; copied methods may use these names.
_MODULES = {"torch": torch, "nn": nn, "F": F, "math": math}
_RESERVED = {"annotations", "argparse", "os", "sys", "time", "dist", "OrderedDict", "SPEC",
             "INPUT_SHAPE", "NUM_CLASSES", "CLASSES", "MEAN", "STD", "_Module", "_Sequential", "_init",
             "_Buffer", "build_model"}
# Attributes every nn.Module has; not part of a block's state.
_INTERNAL = set(vars(nn.Module())) | set(vars(nn.Sequential()))
_CLASS_SKIP = {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__",
               "__annotations__", "__firstlineno__", "__static_attributes__", "__orig_bases__",
               "__parameters__", "__init__", "__slots__", "__annotate__", "__annotate_func__",
               "__annotations_cache__"}

_PRELUDE = '''
class _Buffer:
    """A tensor for `_Module` to register as a buffer rather than keep as an attribute."""

    def __init__(self, tensor: torch.Tensor, persistent: bool = True):
        self.tensor, self.persistent = tensor, persistent


def _init(module: nn.Module, attrs: dict) -> None:
    for name, value in attrs.items():
        if isinstance(value, _Buffer):
            module.register_buffer(name, value.tensor, persistent=value.persistent)
        else:
            setattr(module, name, value)


class _Module(nn.Module):
    """Base of the blocks below. ConvScope derives a block's sub-modules from a few numbers
    in its constructor; here build_model() hands them over ready-made, so each class needs
    only its forward."""

    def __init__(self, modules: dict | None = None, /, **attrs):
        super().__init__()
        for name, module in (modules or {}).items():
            self.add_module(name, module)
        _init(self, attrs)
'''

_PRELUDE_SEQUENTIAL = '''
class _Sequential(nn.Sequential):
    """`_Module` for blocks that are an nn.Sequential with methods of their own."""

    def __init__(self, modules: dict | None = None, /, **attrs):
        super().__init__(OrderedDict(modules or {}))
        _init(self, attrs)
'''


def _literal(value: Any, what: str) -> str:
    """Python source for a plain value, or ExportError."""
    # Through the builtin types: numpy scalars are numbers but repr as "np.float64(…)".
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, numbers.Integral):
        return repr(int(value))
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, (tuple, list)):
        items = [_literal(v, what) for v in value]
        if isinstance(value, tuple):
            return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
        return f"[{', '.join(items)}]"
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return "{" + ", ".join(f"{k!r}: {_literal(v, what)}" for k, v in value.items()) + "}"
    if isinstance(value, torch.dtype):
        return str(value)
    raise ExportError(f"{what} holds a {type(value).__name__}, which the standalone file cannot "
                      f"write as a constant")


def _tensor_expr(t: torch.Tensor, what: str, in_state_dict: bool) -> str:
    """Source for a tensor: its values when small, else zeros of its shape, which is only
    right for state_dict entries (load() fills them in)."""
    dtype = str(t.dtype)
    if t.numel() > MAX_LITERAL_TENSOR:
        if in_state_dict:
            return f"torch.zeros({tuple(t.shape)!r}, dtype={dtype})"
        raise ExportError(f"{what} is a {t.numel():,}-element tensor that is not in the state_dict; "
                          f"the standalone file can only write small ones ({MAX_LITERAL_TENSOR:,})")
    data = _literal(t.detach().cpu().tolist(), what)
    return f"torch.tensor({data}, dtype={dtype})"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_torch(obj: Any) -> bool:
    return getattr(obj, "__module__", "").split(".")[0] == "torch"


def _free_names(fn: ast.AST) -> set[str]:
    """Global names a function reads (annotations excluded: the file defers them)."""
    args = fn.args
    bound = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    bound |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    used: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.arg):
            bound.add(node.arg)
            return                      # skip its annotation
        if isinstance(node, ast.AnnAssign):
            visit(node.target)
            if node.value is not None:
                visit(node.value)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            for d in node.decorator_list:
                visit(d)
            if not isinstance(node, ast.ClassDef):
                for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                    visit(d)
                visit(node.args)
            for stmt in node.body:
                visit(stmt)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
            return
        if isinstance(node, ast.Name):
            (bound.add if isinstance(node.ctx, (ast.Store, ast.Del)) else used.add)(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            used.update(node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for d in fn.decorator_list:
        visit(d)
    for d in args.defaults + [d for d in args.kw_defaults if d is not None]:
        visit(d)
    for stmt in fn.body:
        visit(stmt)
    return used - bound


def _function_source(func: Callable, what: str) -> tuple[str, ast.FunctionDef]:
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        raise ExportError(f"{what}: its source code is not available") from None
    tree = ast.parse(source)
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise ExportError(f"{what} is not a plain def; the standalone file cannot copy it")
    if node.name != func.__name__:   # the file changed on disk after it was imported
        raise ExportError(f"{what}: its source file changed since ConvScope started; restart it")
    if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node)):
        raise ExportError(f"{what} imports inside its body; the standalone file needs torch alone")
    return source.rstrip() + "\n", node


class SourceWriter:
    """Collects what a model needs (classes, helpers, constants) and writes the file's code."""

    def __init__(self, spec: dict | None = None):
        self.spec = spec
        self.classes: dict[str, str] = {}        # name -> source, in dependency order
        self._class_of: dict[str, type] = {}
        self.helpers: dict[str, str] = {}        # functions, constants and aliases
        self._helper_of: dict[str, Any] = {}
        self.class_aliases: list[str] = []       # `Alias = Class` lines, after the classes
        self.needs: set[str] = set()             # optional prelude parts ("_Sequential")

    # -- names

    def _claim(self, name: str, obj: Any, table: dict[str, Any], what: str) -> bool:
        """True when `name` must still be written; refuses a clash with another object."""
        if name in _RESERVED or name in _MODULES or name in _runtime_names() \
                or keyword.iskeyword(name):
            raise ExportError(f"{what} is named '{name}', a name the standalone file uses itself")
        for other in (self._class_of, self._helper_of):
            if name in other and other is not table:
                raise ExportError(f"{what}: two different objects are both named '{name}'")
        if name in table:
            old = table[name]
            same = old is obj or (type(old) is type(obj) and isinstance(obj, (int, float, str, tuple))
                                  and old == obj)
            if not same:
                raise ExportError(f"{what}: two different objects are both named '{name}'")
            return False
        table[name] = obj
        return True

    def _resolve(self, name: str, env: dict, what: str) -> None:
        """Make a global name that copied code reads available in the file."""
        if name not in env:
            if hasattr(builtins, name):
                return
            raise ExportError(f"{what} uses '{name}', which is not defined where it comes from")
        value = env[name]
        for bound, module in _MODULES.items():
            if value is module:
                if name != bound:
                    self._add_helper(name, value, f"{name} = {bound}\n", what)
                return
        if hasattr(builtins, name) and getattr(builtins, name) is value:
            return
        if isinstance(value, type) and issubclass(value, nn.Module):
            if _qualname(value) in VENDORED or not _is_torch(value):
                written = self.add_class(value)
                if written != name and self._claim(name, value, self._helper_of, what):
                    self.class_aliases.append(f"{name} = {written}\n")
                return
            if getattr(nn, value.__name__, None) is value:
                self._add_helper(name, value, f"{name} = nn.{value.__name__}\n", what)
                return
        if callable(value) and _is_torch(value):
            for prefix, module in (("F", F), ("torch", torch)):
                if getattr(module, getattr(value, "__name__", ""), None) is value:
                    self._add_helper(name, value, f"{name} = {prefix}.{value.__name__}\n", what)
                    return
        if inspect.isfunction(value) and not _is_torch(value):
            if self._claim(name, value, self._helper_of, what):
                source, node = _function_source(value, f"{what} -> {name}")
                if node.name != name:
                    source += f"{name} = {node.name}\n"
                self.helpers[name] = source            # placeholder before recursing
                for free in sorted(_free_names(node)):
                    self._resolve(free, value.__globals__, f"{name}()")
                self.helpers[name] = self.helpers.pop(name)   # after its dependencies
            return
        try:
            text = _literal(value, f"{what} -> {name}")
        except ExportError:
            raise ExportError(f"{what} uses '{name}' ({type(value).__name__}), which the "
                              f"standalone file cannot define with torch alone") from None
        self._add_helper(name, value, f"{name} = {text}\n", what)

    def _add_helper(self, name: str, value: Any, source: str, what: str) -> None:
        if self._claim(name, value, self._helper_of, what):
            self.helpers[name] = source

    # -- classes

    def add_class(self, cls: type) -> str:
        """Write `cls` (and the custom bases and helpers it needs); returns its name."""
        if _qualname(cls) in VENDORED:
            cls = VENDORED[_qualname(cls)]
        name = cls.__name__
        if not self._claim(name, cls, self._class_of, f"class {_qualname(cls)}"):
            return name
        self.classes[name] = ""                       # placeholder: recursion sees it as taken
        if cls is DropBlock2d:   # ours, torch-only: copied whole
            self.classes[name] = self.classes.pop(name) + textwrap.dedent(inspect.getsource(cls))
            return name
        bases = [b for b in cls.__bases__ if b is not object]
        if len(bases) != 1:
            raise ExportError(f"class {_qualname(cls)} has {len(bases)} base classes; the "
                              f"standalone file handles one")
        base = bases[0]
        if base in (nn.Module, nn.Sequential):
            base_name = "_Module" if base is nn.Module else "_Sequential"
            self.needs.add(base_name)
        elif _is_torch(base):
            raise ExportError(f"class {_qualname(cls)} extends {_qualname(base)}; the standalone "
                              f"file supports blocks built on nn.Module or nn.Sequential")
        else:
            base_name = self.add_class(base)
        body: list[str] = []
        doc = inspect.cleandoc(cls.__doc__) if cls.__doc__ else ""
        if doc and '"""' not in doc and "\\" not in doc:
            body.append(f'"""{doc}"""\n')
        env = vars(inspect.getmodule(cls)) if inspect.getmodule(cls) else {}
        for attr, obj in vars(cls).items():
            if attr in _CLASS_SKIP:
                continue
            what = f"{cls.__name__}.{attr}"
            funcs = _methods(obj)
            if funcs is None:
                body.append(f"{attr} = {_literal(obj, what)}\n")
                continue
            for func in funcs:
                source, node = _function_source(func, what)
                body.append(source)
                for free in sorted(_free_names(node)):
                    self._resolve(free, getattr(func, "__globals__", env), what)
        if not body:
            body.append("pass\n")
        text = f"class {name}({base_name}):\n" + textwrap.indent("\n".join(body), "    ")
        self.classes[name] = self.classes.pop(name) + text   # after its dependencies
        return name

    # -- instances

    def expr(self, module: nn.Module, path: str = "model") -> str:
        """A Python expression that builds a module equal in structure to `module`."""
        cls = type(module)
        if cls in LEAVES:
            if module._modules:
                raise ExportError(f"{path} ({cls.__name__}) has children the table does not expect")
            return self._leaf(module, LEAVES[cls], f"nn.{cls.__name__}", path)
        if _qualname(cls) in VENDORED:
            vendored = VENDORED[_qualname(cls)]
            self.add_class(cls)
            args = tuple(inspect.signature(vendored.__init__).parameters)[1:]
            return self._leaf(module, args, vendored.__name__, path)
        if cls in (nn.Sequential, nn.ModuleList, nn.ModuleDict) or (
                isinstance(module, nn.Sequential) and _plain_sequential(module)):
            return self._container(module, path)
        if _is_torch(cls):
            raise ExportError(f"{path} is a {_qualname(cls)}, which the standalone export does not "
                              f"support yet (add it to LEAVES in lab/export/codegen.py)")
        return self._custom(module, path)

    def _leaf(self, module: nn.Module, names: tuple[str, ...], ctor: str, path: str) -> str:
        sig = inspect.signature(type(module).__init__)
        args: list[str] = []
        for name in names:
            if name == "bias" and isinstance(getattr(module, "bias", None), (torch.Tensor, type(None))):
                value = module.bias is not None
            else:
                value = getattr(module, name)
            if name in _SQUARE and isinstance(value, tuple) and value and len(set(value)) == 1:
                value = value[0]
            param = sig.parameters.get(name)
            if param is None:
                raise ExportError(f"{path}: {ctor} takes no argument '{name}'")
            if param.default is inspect.Parameter.empty:
                args.append(_literal(value, f"{path}.{name}"))
            elif not _same(value, param.default):
                args.append(f"{name}={_literal(value, f'{path}.{name}')}")
        for kind, table in (("parameter", module._parameters), ("buffer", module._buffers)):
            for name, t in table.items():
                if t is not None and not hasattr(module, name):
                    raise ExportError(f"{path}: unexpected {kind} '{name}'")
        return f"{ctor}({', '.join(args)})"

    def _container(self, module: nn.Module, path: str) -> str:
        children = list(module._modules.items())
        if type(module) is nn.ModuleDict:
            inner = [f"{n!r}: {self.expr(m, f'{path}.{n}')}," for n, m in children]
            return _block("nn.ModuleDict({", inner, "})")
        ctor = "nn.ModuleList" if type(module) is nn.ModuleList else "nn.Sequential"
        if ctor == "nn.ModuleList" or [n for n, _ in children] == [str(i) for i in range(len(children))]:
            inner = [f"{self.expr(m, f'{path}.{n}')}," for n, m in children]
            return _block(f"{ctor}([", inner, "])") if ctor == "nn.ModuleList" else \
                _block(f"{ctor}(", inner, ")")
        inner = [f"({n!r}, {self.expr(m, f'{path}.{n}')})," for n, m in children]
        return _block(f"{ctor}(OrderedDict([", inner, "]))")

    def _custom(self, module: nn.Module, path: str) -> str:
        cls = type(module)
        name = self.add_class(cls)
        # Everything the class and its copied bases run, to see which attributes are read.
        methods_source = "\n".join(self.classes[k.__name__] for k in cls.__mro__
                                   if self._class_of.get(k.__name__) is k)
        children = [f"{n!r}: {'None' if m is None else self.expr(m, f'{path}.{n}')},"
                    for n, m in module._modules.items()]
        attrs: list[str] = []
        for key, value in vars(module).items():
            if key in _INTERNAL:
                continue
            what = f"{path}.{key}"
            if self.spec is not None and value is self.spec:
                attrs.append(f"{key}=SPEC")
            elif isinstance(value, torch.Tensor):
                # Written but never read by forward: an inspection cache (the last attention
                # map); read: a constant of the block.
                attrs.append(f"{key}={_tensor_expr(value, what, False)}"
                             if _reads_attr(methods_source, key) else f"{key}=None")
            else:
                try:
                    attrs.append(f"{key}={_literal(value, what)}")
                except ExportError:
                    if _reads_attr(methods_source, key):
                        raise
                    continue            # metadata no copied method reads (Network.layer_info)
        persistent_off = module._non_persistent_buffers_set
        for key, t in module._parameters.items():
            if t is not None:
                grad = "" if t.requires_grad else ", requires_grad=False"
                attrs.append(f"{key}=nn.Parameter({_tensor_expr(t, f'{path}.{key}', True)}{grad})")
        for key, t in module._buffers.items():
            if t is None:
                attrs.append(f"{key}=None")
                continue
            if key in persistent_off:
                value = _tensor_expr(t, f"{path}.{key}", False)
                attrs.append(f"{key}=_Buffer({value}, persistent=False)")
            else:
                attrs.append(f"{key}=_Buffer({_tensor_expr(t, f'{path}.{key}', True)})")
        tail = ", ".join(attrs)
        if not children:
            return f"{name}({tail})"
        return _block(f"{name}({{", children, "}" + (f", {tail})" if tail else ")"))

    # -- the file's code part

    def code(self) -> str:
        """Prelude, helpers and classes, in an order Python can execute."""
        parts = [_PRELUDE.strip() + "\n"]
        if "_Sequential" in self.needs:
            parts.append(_PRELUDE_SEQUENTIAL.strip() + "\n")
        parts += [self.helpers[n] for n in self.helpers]
        parts += [self.classes[n] for n in self.classes]
        if self.class_aliases:
            parts.append("".join(self.class_aliases))
        return "\n\n".join(p.rstrip() + "\n" for p in parts)


def _methods(obj: Any) -> list[Callable] | None:
    """The functions behind a class attribute, or None when it is not a method."""
    if isinstance(obj, (staticmethod, classmethod)):
        return [obj.__func__]
    if isinstance(obj, property):
        return [f for f in (obj.fget, obj.fset, obj.fdel) if f is not None]
    if inspect.isfunction(obj):
        return [obj]
    return None


def _plain_sequential(module: nn.Module) -> bool:
    """A Sequential subclass with nothing of its own but its constructor (ConvNormAct …)."""
    own = [k for klass in type(module).__mro__[:type(module).__mro__.index(nn.Sequential)]
           for k, v in vars(klass).items() if k not in _CLASS_SKIP and _methods(v) is not None]
    extra = [k for k in vars(module) if k not in _INTERNAL]
    return not own and not extra and not module._parameters and not module._buffers


def _reads_attr(source: str, name: str) -> bool:
    """Whether code reads an attribute called `name` (of any object: errs towards yes)."""
    return any(isinstance(n, ast.Attribute) and n.attr == name and isinstance(n.ctx, ast.Load)
               for n in ast.walk(ast.parse(source)))


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, tuple) and not isinstance(default, tuple) and value:
        return all(type(v) is type(default) and v == default for v in value)
    return type(value) is type(default) and value == default


def _block(head: str, lines: list[str], tail: str) -> str:
    if not lines:
        return head + tail
    return head + "\n" + textwrap.indent("\n".join(lines), "    ") + "\n" + tail


def runtime_source() -> str:
    """The fixed half of an exported file (load, predict, train, check, main)."""
    text = RUNTIME_FILE.read_text(encoding="utf-8")
    _, sep, tail = text.partition(RUNTIME_MARKER)
    if not sep:
        raise RuntimeError(f"{RUNTIME_FILE} lost its marker line")
    return tail.lstrip("\n")


@functools.lru_cache(maxsize=1)
def _runtime_names() -> frozenset[str]:
    """Top-level names the runtime half defines; generated code must not reuse them."""
    tree = ast.parse(runtime_source())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return frozenset(names)


def _constant(name: str, value: Any, comment: str) -> str:
    text = _literal(value, name)
    if len(text) > 90:
        text = pprint.pformat(value, width=96, sort_dicts=False)
        if not isinstance(value, (list, tuple, dict)):
            text = _literal(value, name)
    return f"# {comment}\n{name} = {text}\n"


def generate(model: nn.Module, *, name: str, filename: str, input_shape: tuple[int, ...],
             num_classes: int, spec: dict | None = None, mean=None, std=None,
             classes=None) -> str:
    """The whole standalone file for `model` (no checks; `lab.export.formats.export_py` verifies)."""
    writer = SourceWriter(spec)
    tree = writer.expr(model)
    code = writer.code()
    header = _HEADER.format(name=name.replace('"""', "'''").replace("\\", "/"), file=filename,
                            module=Path(filename).stem,
                            torch_version=torch.__version__.split("+")[0])
    constants = [
        _constant("SPEC", spec, "The ConvScope spec this file was generated from (for reference)."),
        _constant("INPUT_SHAPE", tuple(input_shape), "One input image: (channels, height, width)."),
        _constant("NUM_CLASSES", num_classes, "Outputs of the network (logits)."),
        _constant("CLASSES", None if classes is None else list(classes),
                  "Class names, index = label; None when the export did not know them."),
        _constant("MEAN", None if mean is None else tuple(float(v) for v in mean),
                  "Per-channel mean and std on the 0..1 scale (None: images are only scaled to 0..1)."),
        _constant("STD", None if std is None else tuple(float(v) for v in std), "(see MEAN)"),
    ]
    build = ('def build_model() -> nn.Module:\n'
             '    """The network with a fresh initialisation; `load()` fills in trained weights."""\n'
             + textwrap.indent("return " + tree, "    ") + "\n")
    sections = [header, "\n".join(constants),
                "# " + "-" * 30 + " the network\n\n" + code, build,
                "# " + "-" * 30 + " using and training it\n\n" + runtime_source()]
    return "\n\n".join(s.rstrip() + "\n" for s in sections)


_HEADER = '''#!/usr/bin/env python3
"""{name}: a standalone PyTorch network exported by ConvScope.

This file needs PyTorch alone to define the network: no ConvScope, no torchvision
(generated with PyTorch {torch_version}). Weights are read and written as .safetensors,
never as pickles, which needs the small `safetensors` package (pip install safetensors);
NumPy is needed only for .npz training data.

    python {file} check --weights weights.safetensors   # load, run a random batch, print shapes
    python {file} train --synthetic --epochs 1           # smoke test on random images
    python {file} train --data data.npz --epochs 10 --out trained.safetensors
    torchrun --nproc_per_node=4 {file} train --data data.npz --epochs 10 [--sync-bn]

In Python:

    from {module} import load, predict
    model = load("weights.safetensors")
    probs = predict(model, images)   # uint8 (N, C, H, W) -> class probabilities (N, classes)

Training data (--data) is an .npz or .safetensors file holding `x`, uint8 images
(N, C, H, W) or (N, H, W, C), and `y`, integer labels (N,); optional `x_test` and
`y_test` are evaluated after every epoch. Under torchrun (WORLD_SIZE > 1) each process
trains on its own shard of every epoch with DistributedDataParallel (NCCL on GPUs, gloo
on CPUs); only rank 0 prints and saves.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import OrderedDict

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
'''
