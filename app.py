"""ConvScope in the browser: build, train, inspect, compare and export CNNs.

`python app.py` serves it locally (127.0.0.1:7860, or GRADIO_SERVER_NAME / _PORT); the same
file is a Hugging Face Space's entry point (0.0.0.0 there). This file is the table of
contents: each tab lives in its own module under ui/ (`layout()` places its components,
`wire()` connects its events to plain `on_*` handlers that tests call without a browser).
Nothing heavy runs at import: the UI is built in `build_ui()` and served by `main()`.

State is per browser session: a `gr.State` holds the spec being edited and another one the
`lab.serve.session.Session` (finished runs, data sets, the session's temporary folder).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

from lab.serve import zerogpu  # noqa: F401  first: `spaces` must be imported before CUDA is touched

import gradio as gr

from lab.serve.limits import Limits
from ui import build, compare, export, inspect, photo, runs, train
from ui.common import CSS, EMPTY, JS, UPLOAD, close_session, default_spec, get_session, on_refresh_runs, on_unload, user_errors  # noqa: F401,E501
# The handlers, importable as app.<name> (the tests and scripts call them without a browser).
from ui.build import (FORM_SLOTS, form_updates, on_add_layer, on_apply_json,  # noqa: F401
                      on_apply_params, on_load_preset, on_save_spec, on_upload_spec)
from ui.compare import on_compare  # noqa: F401
from ui.export import FORMAT_LABELS, exporter  # noqa: F401
from ui.inspect import VIEWS, on_inspect, on_pick_run, on_upload_image  # noqa: F401
from ui.train import on_dataset_change, on_stop, on_train  # noqa: F401

ASSETS = Path(__file__).resolve().parent / "assets"


@user_errors
def on_load(request: gr.Request = None):
    """Page opened: a fresh session and the default preset."""
    from lab.serve.session import Session
    s = Session(key=getattr(request, "session_hash", None))
    return [s] + build.build_views(default_spec(), 0)


def build_ui(limits: Limits | None = None) -> gr.Blocks:
    """The whole app as a gr.Blocks (not launched): the five tabs, then their events."""
    limits = limits or Limits.from_env()
    ui = SimpleNamespace(refresh_btns=[])
    # delete_cache: files Gradio served (exports, images) go after an hour, checked hourly.
    with gr.Blocks(title="ConvScope", delete_cache=(3600, 3600)) as demo:
        ui.session_state = gr.State(None, delete_callback=close_session)
        ui.spec_state = gr.State(None)
        ui.image_state = gr.State(None)
        gr.Markdown("# ConvScope\nBuild a CNN from blocks, train it, and look inside.",
                    elem_id="cs-title")
        with gr.Tabs() as ui.tabs:
            build.layout(ui)
            train.layout(ui, limits)
            inspect.layout(ui)
            compare.layout(ui)
            export.layout(ui)
        ui.run_pickers = [ui.run_dd, ui.compare_runs, ui.export_run]

        # The pickers list the runs folder as soon as the page is open (ui/runs.py).
        demo.load(on_load, outputs=[ui.session_state] + ui.build_views, api_visibility="private"
                  ).then(runs.on_list_runs, [ui.session_state],
                         [ui.session_state] + ui.run_pickers + [ui.continue_run, ui.runs_where],
                         api_visibility="private"
                         ).then(photo.on_page_load, None, ui.photo_class, api_visibility="private")
        demo.unload(on_unload)
        build.wire(ui)
        train.wire(ui, limits)
        inspect.wire(ui)
        compare.wire(ui)
        export.wire(ui)
        runs.wire(ui)
    return demo


def launch_options(limits: Limits | None = None, env: dict | None = None) -> dict:
    """Keyword arguments for `demo.launch()` from the environment."""
    env = os.environ if env is None else env
    limits = limits or Limits.from_env()
    on_space = bool(env.get("SPACE_ID"))
    return {
        "server_name": env.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space else "127.0.0.1"),
        "server_port": int(env.get("GRADIO_SERVER_PORT") or 7860),
        "max_file_size": limits.gradio_max_file_size(),
        "allowed_paths": [str(ASSETS)] if ASSETS.is_dir() else [],
        "css": CSS,
        "js": JS,
        "show_error": True,
    }


def make_demo(limits: Limits | None = None) -> gr.Blocks:
    """The app with its queue configured (what `main()` and the tests launch)."""
    limits = limits or Limits.from_env()
    demo = build_ui(limits)
    demo.queue(default_concurrency_limit=4, max_size=64)
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    limits = Limits.from_env()
    make_demo(limits).launch(**launch_options(limits))


if __name__ == "__main__":
    main()
