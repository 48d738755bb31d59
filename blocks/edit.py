"""Pure spec editing: every function takes a spec and returns a new one.

The app's Build tab is a thin shell over these. Layers are kept as the user wrote them
(sparse: a parameter equal to its default is left out, as in the preset files), so the
JSON view stays readable. Each edit checks the spec with `normalize_spec` — parameter
types and ranges, block names — and raises `SpecError` naming the layer; shape problems
(a conv after the linear head, a kernel larger than the map) are left to the builder and
shown by `layer_table`, so a user can go through an invalid state while rearranging.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from blocks.registry import GROUPS, BlockInfo, Param, SpecError, get_block, list_blocks
from blocks.builder import scale_channels

MAX_SPEC_BYTES = 256 * 1024  # a spec file larger than this is not a spec


# ----------------------------------------------------------------------------- specs

def empty_spec(input_shape: tuple[int, int, int] | list = (3, 32, 32), classes: int = 10,
               name: str = "my network", width: float = 1.0) -> dict:
    """A spec with no layers yet (not buildable until layers are added)."""
    return {"name": name, "input": list(input_shape), "classes": int(classes),
            "width": float(width), "layers": []}


def _copy(spec: dict) -> dict:
    if not isinstance(spec, dict):
        raise SpecError(f"a spec must be a JSON object, got {type(spec).__name__}")
    out = copy.deepcopy(spec)
    out.setdefault("layers", [])
    if not isinstance(out["layers"], list):
        raise SpecError("'layers' must be a list of layers")
    return out


def _validate(spec: dict) -> dict:
    """normalize_spec on a spec that may have no layers yet; returns `spec` unchanged."""
    from blocks.builder import normalize_spec
    probe = spec if spec["layers"] else {**spec, "layers": [{"block": "flatten"}]}
    normalize_spec(probe)
    return spec


def _index(spec: dict, i: Any, allow_end: bool = False) -> int:
    n = len(spec["layers"])
    if isinstance(i, bool) or not isinstance(i, int):
        raise SpecError(f"layer index must be an integer, got {i!r}")
    if i < 0:
        i += n
    hi = n if allow_end else n - 1
    if not 0 <= i <= hi:
        if n == 0:
            raise SpecError("the network has no layers yet; add one from the palette")
        raise SpecError(f"there is no layer {i}; layers are numbered 0 to {n - 1}")
    return i


def _block(name: str) -> BlockInfo:
    try:
        return get_block(name)
    except KeyError:
        raise SpecError(f"unknown block '{str(name)[:60]}'") from None


def new_layer(block: str) -> dict:
    """A layer of `block` at its defaults (a ResNet-like default stays implicit)."""
    _block(block)
    return {"block": block, "params": {}}


def add_layer(spec: dict, block: str, index: int | None = None) -> dict:
    """Insert a `block` layer at `index` (None: at the end)."""
    out = _copy(spec)
    layer = new_layer(block)
    if index is None:
        index = len(out["layers"])
    index = _index(out, index, allow_end=True)
    out["layers"].insert(index, layer)
    return _validate(out)


def remove_layer(spec: dict, i: int) -> dict:
    """The spec without layer `i`."""
    out = _copy(spec)
    del out["layers"][_index(out, i)]
    return _validate(out)


def duplicate_layer(spec: dict, i: int) -> dict:
    """Layer `i` copied right after itself."""
    out = _copy(spec)
    i = _index(out, i)
    out["layers"].insert(i + 1, copy.deepcopy(out["layers"][i]))
    return _validate(out)


def move_layer(spec: dict, i: int, delta: int) -> dict:
    """Move layer `i` by `delta` places (clamped to the ends of the stack)."""
    out = _copy(spec)
    i = _index(out, i)
    j = max(0, min(len(out["layers"]) - 1, i + int(delta)))
    out["layers"].insert(j, out["layers"].pop(i))
    return _validate(out)


def set_layer_params(spec: dict, i: int, params: dict, repeat: int | None = None) -> dict:
    """Layer `i` with `params` merged in (a value equal to the default is dropped).

    Each value is checked against the block's schema; a bad one raises SpecError naming
    the layer, the block and the parameter.
    """
    out = _copy(spec)
    i = _index(out, i)
    layer = out["layers"][i]
    if not isinstance(layer, dict):
        raise SpecError("a layer must be an object like {\"block\": \"conv\"}", layer=i)
    info = _block(layer.get("block"))
    merged = dict(layer.get("params") or {})
    for name, value in (params or {}).items():
        try:
            p = info.param(name)
        except KeyError:
            allowed = ", ".join(q.name for q in info.params) or "none"
            raise SpecError(f"unknown parameter '{str(name)[:40]}'; allowed: {allowed}",
                            layer=i, block=info.name) from None
        try:
            value = p.validate(value)
        except ValueError as e:
            raise SpecError(str(e), layer=i, block=info.name) from None
        if value == p.default:
            merged.pop(name, None)
        else:
            merged[name] = value
    new = {"block": info.name}
    if merged:
        new["params"] = merged
    if repeat is None:
        repeat = layer.get("repeat", 1)
    if isinstance(repeat, float) and repeat.is_integer():
        repeat = int(repeat)
    if repeat != 1:
        new["repeat"] = repeat
    out["layers"][i] = new
    return _validate(out)


def set_input(spec: dict, input_shape: tuple[int, int, int] | list, classes: int) -> dict:
    """The spec for another data set: new input shape and number of classes."""
    out = _copy(spec)
    out["input"] = [int(v) for v in input_shape]
    out["classes"] = int(classes)
    return _validate(out)


def set_meta(spec: dict, name: str | None = None, width: float | None = None) -> dict:
    """The spec with a new name and/or width multiplier."""
    out = _copy(spec)
    if name is not None:
        out["name"] = str(name).strip() or "network"
    if width is not None:
        out["width"] = width
    return _validate(out)


# ----------------------------------------------------------------------------- JSON

def spec_to_json(spec: dict) -> str:
    """The spec as indented JSON, one layer a line where that fits."""
    head = {k: v for k, v in spec.items() if k != "layers"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    layers = spec.get("layers", [])
    lines.append('  "layers": [')
    for n, layer in enumerate(layers):
        comma = "," if n < len(layers) - 1 else ""
        lines.append(f"    {json.dumps(layer, ensure_ascii=False)}{comma}")
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def spec_from_json(text: str | bytes) -> dict:
    """Parse spec JSON (an editor's text or an uploaded file) and check it; raises SpecError."""
    if isinstance(text, bytes):
        if len(text) > MAX_SPEC_BYTES:
            raise SpecError(f"the spec file is {len(text) // 1024} KiB; at most "
                            f"{MAX_SPEC_BYTES // 1024} KiB is accepted")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError("the spec file is not UTF-8 text; a spec is a JSON file") from None
    if len(text.encode("utf-8")) > MAX_SPEC_BYTES:
        raise SpecError(f"the spec is larger than {MAX_SPEC_BYTES // 1024} KiB")
    try:
        from blocks import load_spec_text  # the library's own reader, where it exists
    except ImportError:
        load_spec_text = None
    if load_spec_text is not None:
        return copy.deepcopy(load_spec_text(text))
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"the spec is not valid JSON: {e.msg} at line {e.lineno}, "
                        f"column {e.colno}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"a spec must be a JSON object, got {type(spec).__name__}")
    return _validate(_copy(spec))


# ----------------------------------------------------------------------------- palette

@dataclass(frozen=True)
class PaletteEntry:
    name: str
    group: str
    help: str       # the description's first sentence
    paper: str
    params: tuple[Param, ...]


def one_line(text: str) -> str:
    """The first sentence (or line) of a description."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    for sep in (". ", "; "):
        if sep in line:
            line = line.split(sep, 1)[0] + ("." if sep == ". " else "")
            break
    return line


def palette() -> list[tuple[str, list[PaletteEntry]]]:
    """The block registry grouped for a palette: [(group, [entries])] in GROUPS order."""
    groups: dict[str, list[PaletteEntry]] = {}
    for b in list_blocks():
        groups.setdefault(b.group, []).append(
            PaletteEntry(b.name, b.group, one_line(b.description), b.paper, b.params))
    return [(g, groups[g]) for g in GROUPS if g in groups]


def palette_choices() -> list[tuple[str, str]]:
    """(label, block name) pairs for a dropdown, e.g. ("attention · cbam", "cbam")."""
    return [(f"{g} · {e.name}", e.name) for g, entries in palette() for e in entries]


def palette_markdown() -> str:
    """The palette as Markdown: a heading per group, a line per block with its paper."""
    parts = []
    for group, entries in palette():
        parts.append(f"**{group}**")
        for e in entries:
            paper = f" — *{e.paper}*" if e.paper else ""
            parts.append(f"- `{e.name}`: {e.help}{paper}")
        parts.append("")
    return "\n".join(parts)


def block_help(name: str) -> str:
    """Markdown help for one block: description, paper and its parameters."""
    b = _block(name)
    lines = [f"**{b.name}** ({b.group}) — {b.description}"]
    if b.paper:
        lines.append(f"\n*Paper:* {b.paper}")
    if b.params:
        lines.append("\n" + "\n".join(f"- `{p.describe()}` {p.help}" for p in b.params))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- forms

def widget_kind(p: Param) -> str:
    """Which input edits a parameter: "number", "checkbox", "dropdown" or "text"."""
    if p.type in ("int", "float") and not (p.optional or p.default is None):
        return "number"
    if p.type == "bool" and not (p.optional or p.default is None):
        return "checkbox"
    if p.type == "str" and p.choices:
        return "dropdown"
    if p.type == "bool":
        return "dropdown"  # auto / true / false
    return "text"


def widget_choices(p: Param) -> list[str]:
    """Choices of a dropdown parameter."""
    if p.type == "bool":
        return ["auto", "true", "false"]
    return list(p.choices or ())


def form_value(p: Param, value: Any) -> Any:
    """A parameter value as its widget shows it."""
    kind = widget_kind(p)
    if kind == "text":
        if value is None:
            return ""
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    if kind == "dropdown" and p.type == "bool":
        return "auto" if value is None else ("true" if value else "false")
    return value


def parse_form_value(p: Param, raw: Any) -> Any:
    """A widget's value back to a parameter value (validated later by set_layer_params)."""
    kind = widget_kind(p)
    if kind == "number":
        if raw is None or raw == "":
            raise ValueError(f"'{p.name}' must not be empty")
        if p.type == "int" and isinstance(raw, float) and raw.is_integer():
            return int(raw)
        return raw
    if kind == "checkbox":
        return bool(raw)
    if kind == "dropdown" and p.type == "bool":
        return None if raw in (None, "", "auto") else raw == "true"
    if kind == "dropdown":
        return raw
    text = "" if raw is None else str(raw).strip()
    if text in ("", "auto", "none", "None"):
        return None
    if p.type == "ints":
        try:
            return [int(v) for v in text.replace("[", "").replace("]", "").split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"'{p.name}' must be integers separated by commas, got '{text[:40]}'") \
                from None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"'{p.name}' must be a number or empty (auto), got '{text[:40]}'") from None
    if p.type == "int":
        if not number.is_integer():
            raise ValueError(f"'{p.name}' must be an integer, got '{text[:40]}'")
        return int(number)
    return number


def form_to_params(block: str, raw: dict[str, Any], layer: int | None = None) -> dict:
    """Widget values {param: raw} to a params dict; raises SpecError naming the layer."""
    info = _block(block)
    out = {}
    for p in info.params:
        if p.name not in raw:
            continue
        try:
            out[p.name] = parse_form_value(p, raw[p.name])
        except ValueError as e:
            raise SpecError(str(e), layer=layer, block=block) from None
    return out


def layer_params(spec: dict, i: int) -> dict:
    """Layer `i`'s effective parameters (defaults filled in), unscaled."""
    spec = _copy(spec)
    layer = spec["layers"][_index(spec, i)]
    info = _block(layer.get("block"))
    given = layer.get("params") or {}
    return {p.name: given.get(p.name, p.default) for p in info.params}


# ----------------------------------------------------------------------------- table

def describe_layer(layer: dict, width: float = 1.0) -> str:
    """'basic_residual(out=128, stride=2) ×2' — the non-default parameters. At a width other
    than 1, channel parameters show the channels the layer gets, then the spec's value:
    'conv(out=16 ← 64)' at width 0.25."""
    params = layer.get("params") or {}
    channels = set()
    if width != 1.0:
        try:
            channels = {p.name for p in get_block(layer.get("block")).params if p.channels}
        except (KeyError, SpecError, AttributeError, TypeError):
            channels = set()

    def shown(k: str, v: Any) -> str:
        if k in channels and isinstance(v, int) and not isinstance(v, bool):
            return f"{scale_channels(v, width)} ← {v}"
        if k in channels and isinstance(v, list) and all(isinstance(c, int) for c in v):
            return f"{[scale_channels(c, width) for c in v]} ← {v}"
        return json.dumps(v) if isinstance(v, str) else str(v)
    inner = ", ".join(f"{k}={shown(k, v)}" for k, v in params.items())
    rep = layer.get("repeat", 1)
    return f"{layer.get('block')}({inner})" + (f" ×{rep}" if rep != 1 else "")


TABLE_HEADERS = ["#", "layer", "output", "params", "FLOPs", "act. mem", "RF (jump)", "problem"]


def short(n: float, unit: str = "") -> str:
    """A compact number for narrow columns: 884736 -> '885k', 19283456 -> '19.3M'."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.3g}{suffix}{unit}" if v < 1000 else f"{v:.0f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def rf_cell(r) -> str:
    """A summary row's receptive field for the table: '43 (j4)', '91 +global (j4)', 'global'."""
    return r.rf_text + (f" (j{r.jump})" if r.jump is not None else "")


def layer_table(spec: dict) -> tuple[list[list], str]:
    """Rows for the live summary and a one-line status.

    When the spec builds: output shape, parameters, FLOPs, activation memory and receptive
    field (size and jump, blocks.receptive) per layer plus a total row. When it does not: the layers with the problem on the offending row.
    """
    from blocks.summary import summarize
    layers = spec.get("layers") if isinstance(spec, dict) else None
    if not layers:
        return [], "The network is empty: add layers from the palette, or load a preset."
    try:
        s = summarize(spec)
    except SpecError as e:
        rows = [[i, describe_layer(l) if isinstance(l, dict) else str(l)[:60], "", "", "", "", "",
                 e.problem if e.layer == i else ""] for i, l in enumerate(layers)]
        if e.layer is None:
            return rows, f"⚠ {e}"
        return rows, f"⚠ {e}"
    rows = []
    width = float(spec.get("width", 1.0) or 1.0)
    for r, layer in zip(s.layers, layers):
        rows.append([r.index, describe_layer(layer, width), "×".join(map(str, r.out_shape)),
                     f"{r.params:,}", short(r.flops), short(r.activation_bytes, "B"), rf_cell(r), ""])
    rows.append(["", "total", "", f"{s.params:,}", short(s.flops),
                 short(s.activation_bytes, "B"), "", ""])
    status = (f"✓ {s.name}: input {'×'.join(map(str, s.input))}, {s.classes} classes — "
              f"{short(s.params)} parameters, {short(s.flops)} FLOPs per image")
    if width != 1.0:
        status += f" — width ×{width:g}: channels shown as used ← as written"
    return rows, status
