"""The Build tab's network diagram (visual/diagram.py) and receptive-field views (visual/erf.py).

The diagram is redrawn whenever the spec or the selected layer changes; clicking a layer
box (or any node inside an expanded block) selects that layer in the editor, and the
editor's selection is drawn with a thick outline. Each visitor's expanded layers live in
a gr.State. Handlers take and return plain values; tests call them without a browser.
"""
from __future__ import annotations

import html
import re
from types import SimpleNamespace
from typing import Any

import gradio as gr

from blocks import SpecError
from ui.common import get_session, spec_of, user_errors

# A click anywhere inside a layer box or an inner node selects that layer (event delegation on
# the component's element, so it survives every redraw of the SVG inside it).
CLICK_JS = """
element.addEventListener('click', (e) => {
  const g = e.target.closest('[data-layer]');
  if (!g) return;
  trigger('click', {layer: parseInt(g.dataset.layer), node: g.dataset.node || ''});
});
"""
# PNG in the browser: the SVG drawn onto a canvas (2× where the canvas allows) and downloaded.
PNG_JS = """
() => {
  const svg = document.querySelector('#cs-diagram svg');
  if (!svg) return;
  const w = svg.width.baseVal.value, h = svg.height.baseVal.value;
  const scale = Math.min(2, 16000 / Math.max(w, h));
  const img = new Image();
  img.onload = () => {
    const c = document.createElement('canvas');
    c.width = Math.round(w * scale); c.height = Math.round(h * scale);
    const ctx = c.getContext('2d'); ctx.scale(scale, scale); ctx.drawImage(img, 0, 0);
    c.toBlob((blob) => {
      const a = document.createElement('a');
      a.href = URL.createObjectURL(blob); a.download = 'diagram.png';
      document.body.appendChild(a); a.click(); a.remove();
    }, 'image/png');
  };
  img.src = 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(new XMLSerializer().serializeToString(svg));
}
"""
DIAGRAM_CSS = """
.cs-diagram-box {overflow: auto; max-height: 720px; border: 1px solid var(--border-color-primary);
                 border-radius: 8px; background: #fff;}
.cs-diagram-box .cs-node, .cs-diagram-box .cs-layer {cursor: pointer;}
.cs-diagram-box .cs-node:hover rect, .cs-diagram-box .cs-layer:hover rect {filter: brightness(0.93);}
"""


def _index(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def _expanded(spec: dict, expanded: Any) -> list[int]:
    n = len(spec.get("layers", []))
    return sorted({int(i) for i in (expanded or []) if isinstance(i, int) and 0 <= i < n})


def diagram_markup(spec: dict, index: Any = None, expanded: Any = None) -> str:
    """The diagram as HTML for the Build tab (a scrolling box around the SVG), or a one-line
    note when the spec cannot be drawn."""
    from visual.diagram import diagram_svg
    if not spec.get("layers"):
        return "<p><em>The network is empty: add layers from the palette, or load a preset.</em></p>"
    try:
        svg = diagram_svg(spec, _expanded(spec, expanded), selected=_index(index))
    except (SpecError, ValueError) as e:
        return f"<p>⚠ {html.escape(str(e))}</p>"
    return f"<div class='cs-diagram-box'>{svg}</div>"


@user_errors
def on_render_diagram(spec_state: Any, index: Any, expanded: Any) -> str:
    return diagram_markup(spec_of(spec_state), index, expanded)


@user_errors
def on_diagram_click(spec_state: Any, expanded: Any, evt: gr.EventData):
    """A click on the diagram: select the clicked layer in the editor (picker + form)."""
    from ui.build import form_updates
    spec = spec_of(spec_state)
    layer = getattr(evt, "_data", {}).get("layer") if evt is not None else None
    n = len(spec.get("layers", []))
    if not isinstance(layer, int) or not 0 <= layer < n:
        return [gr.update()] * (1 + len(form_updates(spec, None)))
    return [gr.update(value=layer)] + form_updates(spec, layer)


@user_errors
def on_toggle_expand(spec_state: Any, index: Any, expanded: Any):
    """Expand the selected layer in place, or fold it back."""
    spec = spec_of(spec_state)
    current = _expanded(spec, expanded)
    i = _index(index)
    if i is None:
        raise gr.Error("Select a layer first (in the picker or by clicking the diagram).")
    new = [j for j in current if j != i] if i in current else sorted(current + [i])
    return new, diagram_markup(spec, index, new)


@user_errors
def on_expand_all(spec_state: Any, index: Any):
    spec = spec_of(spec_state)
    new = list(range(len(spec.get("layers", []))))
    return new, diagram_markup(spec, index, new)


@user_errors
def on_collapse_all(spec_state: Any, index: Any):
    return [], diagram_markup(spec_of(spec_state), index, [])


@user_errors
def on_download_svg(spec_state: Any, index: Any, expanded: Any, session_state: Any = None,
                    request: gr.Request = None):
    """Write the diagram as it is drawn to an .svg file in the session folder."""
    from visual.diagram import diagram_svg
    s = get_session(session_state, request)
    spec = spec_of(spec_state)
    if not spec.get("layers"):
        raise gr.Error("The network is empty: there is nothing to draw.")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(spec.get("name", "network"))).strip("-") or "network"
    folder = s.dir / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-diagram.svg"
    path.write_text(diagram_svg(spec, _expanded(spec, expanded), selected=_index(index)), encoding="utf-8")
    return s, gr.update(value=str(path), visible=True)


@user_errors
def on_gridding_demo():
    from visual.erf import gridding_demo
    return gridding_demo().figure


@user_errors
def on_erf(spec_state: Any, index: Any, session_state: Any = None, request: gr.Request = None):
    """The effective receptive field of the selected layer, averaged over 8 random inputs
    (the Build tab's network is untrained), within the server's size limits."""
    from blocks import build
    from lab.serve.limits import check_spec_limits
    from visual.erf import erf_view
    s = get_session(session_state, request)
    spec = spec_of(spec_state)
    i = _index(index)
    if i is None or not spec.get("layers"):
        raise gr.Error("Select a layer first.")
    check_spec_limits(spec, 8, s.limits)
    return erf_view(build(spec), i, n=8).figure


# ---------------------------------------------------------------------------- layout

def layout(ui: SimpleNamespace) -> None:
    """The diagram and receptive-field panels (inside the Build tab); components go on `ui`."""
    ui.expanded_state = gr.State([])
    with gr.Accordion("Network diagram", open=True):
        with gr.Row():
            ui.expand_btn = gr.Button("Expand / collapse selected layer", scale=2)
            ui.expand_all_btn = gr.Button("Expand all", scale=1)
            ui.collapse_all_btn = gr.Button("Collapse all", scale=1)
            ui.svg_btn = gr.Button("Download SVG", scale=1)
            ui.png_btn = gr.Button("Download PNG", scale=1)
        ui.svg_file = gr.File(label="Diagram (SVG)", interactive=False, visible=False)
        gr.Markdown("*Click a box (or a node inside an expanded block) to select its layer. "
                    "Blue: convolution, orange: attention, purple: Ghost, green: norm/pool/activation, "
                    "grey: head; wider = more channels, taller = larger maps; RF = receptive field "
                    "in input pixels (j = jump).*")
        ui.diagram_html = gr.HTML("", elem_id="cs-diagram", js_on_load=CLICK_JS, css_template=DIAGRAM_CSS)
    with gr.Accordion("Receptive fields: effective field and the gridding effect", open=False):
        gr.Markdown("The **effective receptive field** (Luo et al. 2016) of the selected layer: the "
                    "gradient of its centre unit with respect to the input, averaged over random "
                    "inputs, with the theoretical field as a red square. The **gridding demo** "
                    "compares three 3×3 convs with dilations 2-2-2 and 1-2-3: the same field of 13, "
                    "holes in the first.")
        with gr.Row():
            ui.erf_btn = gr.Button("Effective receptive field of the selected layer")
            ui.grid_btn = gr.Button("Gridding demo: dilations 2-2-2 vs 1-2-3")
        ui.erf_plot = gr.Plot(label="Receptive field")


def wire(ui: SimpleNamespace) -> None:
    draw = [ui.spec_state, ui.layer_dd, ui.expanded_state]
    ui.spec_state.change(on_render_diagram, draw, ui.diagram_html, api_visibility="private")
    ui.layer_dd.change(on_render_diagram, draw, ui.diagram_html, api_visibility="private")
    ui.diagram_html.click(on_diagram_click, [ui.spec_state, ui.expanded_state],
                          [ui.layer_dd] + ui.form, api_visibility="private")
    ui.expand_btn.click(on_toggle_expand, [ui.spec_state, ui.layer_dd, ui.expanded_state],
                        [ui.expanded_state, ui.diagram_html], api_name="toggle_expand")
    ui.expand_all_btn.click(on_expand_all, [ui.spec_state, ui.layer_dd],
                            [ui.expanded_state, ui.diagram_html], api_visibility="private")
    ui.collapse_all_btn.click(on_collapse_all, [ui.spec_state, ui.layer_dd],
                              [ui.expanded_state, ui.diagram_html], api_visibility="private")
    ui.svg_btn.click(on_download_svg, [ui.spec_state, ui.layer_dd, ui.expanded_state, ui.session_state],
                     [ui.session_state, ui.svg_file], api_name="diagram_svg")
    ui.png_btn.click(None, None, None, js=PNG_JS)
    ui.grid_btn.click(on_gridding_demo, None, ui.erf_plot, api_visibility="private")
    ui.erf_btn.click(on_erf, [ui.spec_state, ui.layer_dd, ui.session_state], ui.erf_plot,
                     api_visibility="private")
