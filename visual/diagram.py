"""The network diagram: one node per spec layer (block, output C×H×W, parameters, FLOPs,
receptive field), coloured by kind and sized by channels (width) and spatial size (height),
as the classic LeNet/AlexNet figures and CNN Explainer draw volumes. A composite block
expands in place to its inside — read from the built module by torch.fx
(blocks.graph.block_graph), so a new block draws without new drawing code: branches, skip
connections with the down-sampling shortcut, the multiply of an attention gate, the concat
of a dense or inception block. An invalid layer is drawn red with its error.

`diagram(spec, expand)` computes the model (plain data, testable); `render_svg` draws it as
a standalone SVG string (hand-made: no browser, no JavaScript). Each layer is a
`<g class="cs-layer" data-layer="i">`, each inner node a `<g class="cs-node" data-layer="i"
data-node="id">`, so a page can wire clicks to the editor.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import torch.nn as nn

from blocks import SpecError, build, get_block, normalize_spec
from blocks.graph import BlockGraph, block_graph
from blocks.summary import LayerSummary, human, summarize

KIND_COLOURS = {  # fill, stroke
    "conv": ("#dbe9fb", "#3b78c4"),
    "attention": ("#fde3c8", "#d9822b"),
    "ghost": ("#e9defa", "#8256c8"),
    "norm/pool": ("#e4efe4", "#5b9a5b"),
    "head": ("#e6e6ea", "#55556a"),
    "other": ("#f3f3f3", "#8a8a8a"),
    "error": ("#fde2e2", "#d33c3c"),
    "merge": ("#ffffff", "#444444"),
}
MAX_EXPANDED_NODES = 3000   # beyond this, expanded blocks fold back (a drawing, not a dump)


def layer_kind(block: str) -> str:
    """conv | attention | ghost | norm/pool | head | other, from the registry's group."""
    if block.startswith("ghost"):
        return "ghost"
    try:
        group = get_block(block).group
    except KeyError:
        return "other"
    return {"convolution": "conv", "composite": "conv", "attention": "attention",
            "normalisation": "norm/pool", "pooling": "norm/pool", "head": "head",
            "regularisation": "norm/pool", "activation": "norm/pool"}.get(group, "other")


def node_kind(module: nn.Module | None, node_id: str, owner: nn.Module) -> str:
    """The colour of an inner node: the kind of the module, or of the attention/ghost module
    it sits in."""
    from blocks.library.attention import CBAM, SqueezeExcite
    from blocks.library.ghost import GhostModule
    parts = node_id.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            parent = owner.get_submodule(".".join(parts[:i]))
        except AttributeError:
            continue
        if isinstance(parent, (SqueezeExcite, CBAM)):
            return "attention"
        if isinstance(parent, GhostModule):
            return "ghost"
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        return "conv"
    if isinstance(module, nn.Linear):
        return "head"
    if module is None:
        return "merge"
    return "norm/pool"


@dataclass
class DiagramLayer:
    index: int
    block: str
    title: str                     # "3 · basic_residual ×2"
    kind: str
    row: LayerSummary | None       # None: not built (invalid, or after an invalid layer)
    error: str = ""
    graph: BlockGraph | None = None          # set when expanded
    owner: nn.Module | None = field(default=None, repr=False)

    @property
    def lines(self) -> list[str]:
        if self.row is None:
            return [self.error or "not built (an earlier layer is invalid)"]
        r = self.row
        rf = r.rf_text + (f" (j{r.jump})" if r.jump is not None else "")
        return ["×".join(map(str, r.out_shape)),
                f"{human(r.params)} params · {human(r.flops)} FLOPs", f"RF {rf}"]


@dataclass
class Diagram:
    name: str
    input: tuple
    layers: list[DiagramLayer]
    error: str = ""


def _title(i: int, layer: dict) -> str:
    rep = layer.get("repeat", 1)
    return f"{i} · {layer.get('block')}" + (f" ×{rep}" if rep != 1 else "")


def _prefix_summary(spec: dict, upto: int):
    """Summary of the layers before `upto` (an invalid layer): closed with a head so it builds."""
    if upto <= 0:
        return None
    prefix = dict(spec, layers=spec["layers"][:upto])
    for tail in ([{"block": "linear"}], [{"block": "flatten"}, {"block": "linear"}]):
        try:
            s = summarize(dict(prefix, layers=prefix["layers"] + tail))
        except SpecError:
            continue
        return s.layers[:upto]
    return None


def parse_expand(expand, n_layers: int) -> set[int]:
    """'all' | 'none' | None | [indices] -> the set of layers to expand."""
    if expand in (None, "none", False):
        return set()
    if expand in ("all", True):
        return set(range(n_layers))
    out = set()
    for v in expand:
        i = int(v)
        if not -n_layers <= i < n_layers:
            raise ValueError(f"--expand {v}: there is no layer {v}; layers are numbered 0 to {n_layers - 1}")
        out.add(i % n_layers)
    return out


def diagram(spec: dict, expand="none") -> Diagram:
    """The diagram model of a spec; `expand`: 'all', 'none' or layer indices. A spec that does
    not build still draws: the layers before the problem, the offending layer red with its
    error, the rest grey. Raises SpecError only when the spec's top level is unusable."""
    spec = normalize_spec(spec)
    raw_layers = spec["layers"]
    want = parse_expand(expand, len(raw_layers))
    error, bad, rows, net = "", None, None, None
    try:
        s = summarize(spec)
        rows = s.layers
        net = build(spec, device="meta")
    except SpecError as e:
        error, bad = str(e), e.layer
        rows = _prefix_summary(spec, bad) if bad is not None else None
    layers = []
    budget = MAX_EXPANDED_NODES
    for i, layer in enumerate(raw_layers):
        row = rows[i] if rows is not None and i < len(rows) else None
        dl = DiagramLayer(i, layer["block"], _title(i, layer), layer_kind(layer["block"]), row)
        if bad == i:
            dl.kind, dl.error = "error", _problem(error)
        if i in want and net is not None and budget > 0:
            module = net.layers[i]
            dl.graph = block_graph(module, net.layer_info[i].in_shape)
            dl.owner = module if next(module.children(), None) is not None else nn.Sequential(module)
            budget -= len(dl.graph.nodes)
        layers.append(dl)
    return Diagram(spec["name"], tuple(spec["input"]), layers, error)


def _problem(message: str) -> str:
    """'layer 3 (conv): kernel 7 …' -> 'kernel 7 …'."""
    head, sep, rest = message.partition("): ")
    return rest if sep and head.startswith("layer ") else message


# ----------------------------------------------------------------------------- drawing

PAD = 24
GAP = 26            # between top-level boxes
INNER_W, INNER_H = 128, 32
RANK_GAP = 18
COL_GAP = 16
FONT = "font-family='system-ui, -apple-system, Segoe UI, sans-serif'"


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _box_size(row: LayerSummary | None) -> tuple[float, float]:
    """Width grows with log2(channels), height with log2(spatial side)."""
    if row is None:
        return 240, 64
    shape = row.out_shape
    c = shape[0]
    side = shape[1] if len(shape) == 3 else 1
    return 200 + 12 * math.log2(max(1, c)), 66 + 3 * math.log2(max(1, side))


def _inner_layout(g: BlockGraph) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Ranks by longest path from the input, columns inherited along chains; returns each
    node's centre (relative to the frame), the frame's width and height."""
    preds: dict[str, list[str]] = {n.id: [] for n in g.nodes}
    for e in g.edges:
        preds[e.dst].append(e.src)
    rank: dict[str, int] = {}
    for n in g.nodes:  # nodes come in topological (fx) order
        rank[n.id] = 1 + max((rank[p] for p in preds[n.id] if p in rank), default=-1)
    col: dict[str, int] = {}
    taken: set[tuple[int, int]] = set()
    claimed: set[str] = set()
    for n in g.nodes:
        ps = [p for p in preds[n.id] if p in col]
        want = 0
        for p in ps:
            if p not in claimed:
                want = col[p]
                claimed.add(p)
                break
        else:
            if ps:
                want = col[ps[0]] + 1
        while (rank[n.id], want) in taken:
            want += 1
        col[n.id] = want
        taken.add((rank[n.id], want))
    n_cols = 1 + max(col.values(), default=0)
    n_ranks = 1 + max(rank.values(), default=0)
    pos = {n.id: (PAD + col[n.id] * (INNER_W + COL_GAP) + INNER_W / 2,
                  PAD / 2 + rank[n.id] * (INNER_H + RANK_GAP) + INNER_H / 2) for n in g.nodes}
    width = 2 * PAD + n_cols * INNER_W + (n_cols - 1) * COL_GAP
    height = PAD + n_ranks * (INNER_H + RANK_GAP) - RANK_GAP
    return pos, width, height


def _edge(x1, y1, x2, y2, label: str = "", side: float = 0.0) -> str:
    dy = max(12.0, (y2 - y1) / 2)
    if side:
        d = f"M{x1:.1f},{y1:.1f} C{x1 + side:.1f},{y1 + dy:.1f} {x2 + side:.1f},{y2 - dy:.1f} {x2:.1f},{y2:.1f}"
    else:
        d = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + dy:.1f} {x2:.1f},{y2 - dy:.1f} {x2:.1f},{y2:.1f}"
    out = f"<path d='{d}' class='cs-edge' fill='none' stroke='#777' stroke-width='1.2' marker-end='url(#cs-arrow)'/>"
    if label:
        out += (f"<text x='{(x1 + x2) / 2 + side * 0.6 + 4:.1f}' y='{(y1 + y2) / 2:.1f}' font-size='9' "
                f"fill='#777'>{_esc(label[:24])}</text>")
    return out


def _inner_svg(dl: DiagramLayer, ox: float, oy: float) -> tuple[str, float, float]:
    g = dl.graph
    pos, width, height = _inner_layout(g)
    parts = [f"<rect x='{ox:.1f}' y='{oy:.1f}' width='{width:.1f}' height='{height:.1f}' rx='8' "
             f"fill='#fafafa' stroke='#bbb' stroke-dasharray='4 3'/>"]
    half = {n.id: (INNER_H / 2 if n.kind in ("module", "opaque") else 9) for n in g.nodes}
    rank_of = {nid: round((y - PAD / 2 - INNER_H / 2) / (INNER_H + RANK_GAP)) for nid, (_, y) in pos.items()}
    lane = 0
    for e in g.edges:
        (x1, y1), (x2, y2) = pos[e.src], pos[e.dst]
        y1, y2 = oy + y1 + half[e.src], oy + y2 - half[e.dst]
        x1, x2 = ox + x1, ox + x2
        if abs(x1 - x2) < 1 and rank_of[e.dst] - rank_of[e.src] > 1:
            # a skip along the same column: down a lane left of the column, clear of its nodes
            lx = x1 - INNER_W / 2 - 5 - 4 * (lane % 3)
            lane += 1
            parts.append(f"<path d='M{x1:.1f},{y1:.1f} C{x1:.1f},{y1 + 8:.1f} {lx:.1f},{y1 + 2:.1f} {lx:.1f},"
                         f"{y1 + 10:.1f} L{lx:.1f},{y2 - 10:.1f} C{lx:.1f},{y2 - 2:.1f} {x2:.1f},{y2 - 8:.1f} "
                         f"{x2:.1f},{y2:.1f}' class='cs-edge' fill='none' stroke='#777' stroke-width='1.2' "
                         f"marker-end='url(#cs-arrow)'/>")
            if e.label:
                parts.append(f"<text x='{lx + 3:.1f}' y='{y1 + 20:.1f}' font-size='9' fill='#777'>"
                             f"{_esc(e.label[:24])}</text>")
            continue
        parts.append(_edge(x1, y1, x2, y2, e.label))
    for n in g.nodes:
        x, y = ox + pos[n.id][0], oy + pos[n.id][1]
        attrs = f"class='cs-node' data-layer='{dl.index}' data-node='{_esc(n.id)}'"
        shape = "" if n.shape is None else "×".join(map(str, n.shape))
        tip = f"{n.id}: {n.label}" + (f" → {shape}" if shape else "") + (f", {n.params:,} params" if n.params else "")
        if n.kind in ("input", "output"):
            parts.append(f"<g {attrs}><title>{_esc(n.kind + (' ' + shape if shape else ''))}</title>"
                         f"<circle cx='{x:.1f}' cy='{y:.1f}' r='5' fill='#999'/></g>")
            continue
        if n.kind == "merge":
            parts.append(f"<g {attrs}><title>{_esc(tip)}</title><circle cx='{x:.1f}' cy='{y:.1f}' r='9' "
                         f"fill='#fff' stroke='#444' stroke-width='1.3'/><text x='{x:.1f}' y='{y + 3.5:.1f}' "
                         f"font-size='11' text-anchor='middle'>{_esc(n.label if len(n.label) < 3 else '⧺')}</text></g>")
            continue
        kind = node_kind(n.module, n.id, dl.owner) if n.kind == "module" else "other"
        fill, stroke = KIND_COLOURS[kind]
        parts.append(f"<g {attrs}><title>{_esc(tip)}</title><rect x='{x - INNER_W / 2:.1f}' "
                     f"y='{y - INNER_H / 2:.1f}' width='{INNER_W}' height='{INNER_H}' rx='5' fill='{fill}' "
                     f"stroke='{stroke}'/><text x='{x:.1f}' y='{y - 2:.1f}' font-size='10' "
                     f"text-anchor='middle'>{_esc(n.label[:24])}</text><text x='{x:.1f}' y='{y + 10:.1f}' "
                     f"font-size='9' fill='#555' text-anchor='middle'>{_esc(shape)}</text></g>")
    return "".join(parts), width, height


def render_svg(d: Diagram, selected: int | None = None) -> str:
    """The diagram as a standalone SVG document (top to bottom)."""
    body: list[str] = []
    y = PAD
    centre = 0.0
    widths = [_box_size(dl.row)[0] for dl in d.layers]
    inner = {}
    for dl in d.layers:
        if dl.graph is not None:
            inner[dl.index] = _inner_layout(dl.graph)[1]
    page_w = max([240.0] + [w + 2 * PAD for w in widths] + [w + 2 * PAD for w in inner.values()])
    centre = page_w / 2
    # the input
    body.append(f"<text x='{centre:.1f}' y='{y + 12:.1f}' font-size='12' text-anchor='middle' fill='#444'>"
                f"input {_esc('×'.join(map(str, d.input)))}</text>")
    prev_bottom = y + 18
    y += 18 + GAP
    for dl in d.layers:
        w, h = _box_size(dl.row)
        fill, stroke = KIND_COLOURS[dl.kind if dl.row is not None or dl.kind == "error" else "other"]
        if dl.row is None and dl.kind != "error":
            fill, stroke = "#f6f6f6", "#bbbbbb"
        body.append(_edge(centre, prev_bottom, centre, y))
        sel = " cs-selected" if selected == dl.index else ""
        width_px = 3 if selected == dl.index else 1.5
        lines = dl.lines
        tip = f"layer {dl.index}: {dl.block}" + (f" — {dl.error}" if dl.error else "")
        body.append(f"<g class='cs-layer{sel}' data-layer='{dl.index}' data-kind='{dl.kind}' "
                    f"style='cursor:pointer'><title>{_esc(tip)}</title>"
                    f"<rect x='{centre - w / 2:.1f}' y='{y:.1f}' width='{w:.1f}' height='{h:.1f}' rx='7' "
                    f"fill='{fill}' stroke='{stroke}' stroke-width='{width_px}'/>"
                    f"<text x='{centre:.1f}' y='{y + 17:.1f}' font-size='13' font-weight='600' "
                    f"text-anchor='middle'>{_esc(dl.title)}</text>")
        for k, line in enumerate(lines):
            colour = "#b02020" if dl.kind == "error" else "#333"
            body.append(f"<text x='{centre:.1f}' y='{y + 33 + 13 * k:.1f}' font-size='11' fill='{colour}' "
                        f"text-anchor='middle'>{_esc(line[:70])}</text>")
        body.append("</g>")
        prev_bottom = y + h
        y += h
        if dl.graph is not None:
            y += 10
            body.append(_edge(centre, prev_bottom, centre, y))
            svg, iw, ih = _inner_svg(dl, centre - inner[dl.index] / 2, y)
            body.append(svg)
            prev_bottom = y + ih
            y += ih
        y += GAP
    height = y + PAD
    head = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{page_w:.0f}' height='{height:.0f}' "
            f"viewBox='0 0 {page_w:.0f} {height:.0f}' {FONT} class='cs-diagram'>"
            f"<title>{_esc(d.name)}</title>"
            "<defs><marker id='cs-arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='6' "
            "markerHeight='6' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='#777'/>"
            "</marker></defs><rect width='100%' height='100%' fill='#fff'/>")
    return head + "".join(body) + "</svg>"


def diagram_svg(spec: dict, expand="none", selected: int | None = None) -> str:
    """`render_svg(diagram(spec, expand), selected)`."""
    return render_svg(diagram(spec, expand), selected)


def diagram_html(spec: dict, expand="none") -> str:
    """A standalone HTML page holding the SVG (for `lab diagram --out FILE.html`)."""
    d = diagram(spec, expand)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>"
            f"{_esc(d.name)} — ConvScope diagram</title></head><body style='margin:0'>"
            f"{render_svg(d)}</body></html>\n")
