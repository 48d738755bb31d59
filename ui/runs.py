"""Runs across tabs: the pickers filled on start and by a Refresh button, and the "Manage
runs" panel of the Export tab (open a run .zip, rename, delete with a confirmation).

Locally the pickers list every complete run in the shared runs folder ($CONVSCOPE_RUNS_DIR
or ./runs: the app's, `lab train`'s and torchrun's); on a public host each visitor's own
(lab/serve/session.py). Damaged folders are named in the panel, never opened.
"""
from __future__ import annotations

import html
from types import SimpleNamespace
from typing import Any

import gradio as gr

from lab.serve.session import Session
from ui.common import get_session, run_updates, user_errors


def where_text(s: Session) -> str:
    """One line: where this visitor's runs live, and the damaged folders skipped."""
    if s.shared is None:
        text = "Runs are private to this browser session (public host)."
    else:
        text = f"Runs folder: `{html.escape(str(s.shared))}` (shared with `lab train` and torchrun)."
    damaged = s.damaged_runs()
    if damaged:
        shown = "; ".join(html.escape(d) for d in damaged[:3])
        more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        text += f" Skipped as damaged: {shown}{more}."
    return text


def _continue_update(s: Session, select: str | None = None) -> Any:
    choices = s.run_choices()
    ids = [v for _, v in choices]
    return gr.update(choices=choices, value=select if select in ids else (ids[0] if ids else None))


@user_errors
def on_list_runs(session_state: Any, request: gr.Request = None):
    """Page opened or Refresh: every picker lists the runs as they are on disk now."""
    s = get_session(session_state, request)
    return [s] + run_updates(s) + [_continue_update(s), where_text(s)]


@user_errors
def on_upload_run(session_state: Any, file: Any, request: gr.Request = None):
    """A run .zip: checked like every upload, then opened as a run (lab/runzip.py)."""
    s = get_session(session_state, request)
    if file is None:
        return [s] + [gr.skip()] * 4 + ["Choose a run .zip first."]
    path = file if isinstance(file, str) else getattr(file, "name", None) or file.get("path")
    rec = s.import_run(path)
    return [s] + run_updates(s, rec.id) + [_continue_update(s, rec.id),
                                            f"✓ Opened {html.escape(rec.label)}."]


@user_errors
def on_rename_run(session_state: Any, run_id: Any, new_name: str, request: gr.Request = None):
    s = get_session(session_state, request)
    if not run_id:
        raise gr.Error("Pick a run to rename.")
    new_id = s.rename_run(run_id, new_name)
    return [s] + run_updates(s, new_id) + [_continue_update(s, new_id), f"✓ Renamed to {html.escape(new_id)}."]


def on_ask_delete(run_id: Any):
    """First click: show the confirmation (nothing is deleted yet)."""
    if not run_id:
        return [gr.update(visible=False), gr.update(visible=False), "Pick a run to delete."]
    return [gr.update(visible=True), gr.update(visible=True),
            f"Delete **{html.escape(str(run_id))}** for good? Its folder is removed from disk."]


def on_cancel_delete():
    return [gr.update(visible=False), gr.update(visible=False), "Nothing was deleted."]


@user_errors
def on_delete_run(session_state: Any, run_id: Any, request: gr.Request = None):
    s = get_session(session_state, request)
    if not run_id:
        raise gr.Error("Pick a run to delete.")
    s.remove_run(str(run_id))
    return [s] + run_updates(s) + [_continue_update(s), f"✓ Deleted {html.escape(str(run_id))}.",
                                   gr.update(visible=False), gr.update(visible=False)]


# ---------------------------------------------------------------------------- layout

def refresh_button() -> gr.Button:
    return gr.Button("↻ Refresh runs", size="sm", scale=0, min_width=140)


def manage_layout(ui: SimpleNamespace) -> None:
    """The "Manage runs" panel (inside the Export tab); components go on `ui`."""
    with gr.Accordion("Manage runs: open a run .zip, rename, delete", open=False):
        ui.runs_where = gr.Markdown()
        ui.run_zip = gr.File(label="Open a run (.zip, as Export → run (.zip) writes it)",
                             file_types=[".zip"], type="filepath")
        with gr.Row():
            ui.rename_box = gr.Textbox(label="New name for the chosen run", max_lines=1, scale=3)
            ui.rename_btn = gr.Button("Rename", scale=1)
            ui.delete_btn = gr.Button("Delete…", variant="stop", scale=1)
        with gr.Row():
            ui.delete_confirm = gr.Button("Yes, delete it", variant="stop", visible=False)
            ui.delete_cancel = gr.Button("Cancel", visible=False)
        ui.runs_note = gr.Markdown()


def wire(ui: SimpleNamespace) -> None:
    """Refresh buttons of the three pickers, and the Manage runs panel (after every tab
    is laid out: the outputs span tabs)."""
    listed = [ui.session_state] + ui.run_pickers + [ui.continue_run]
    for i, btn in enumerate(ui.refresh_btns):
        btn.click(on_list_runs, [ui.session_state], listed + [ui.runs_where],
                  **({"api_name": "list_runs"} if i == 0 else {"api_visibility": "private"}))
    ui.list_runs_event = on_list_runs
    ui.run_zip.upload(on_upload_run, [ui.session_state, ui.run_zip], listed + [ui.runs_note],
                      api_name="upload_run")
    ui.rename_btn.click(on_rename_run, [ui.session_state, ui.export_run, ui.rename_box],
                        listed + [ui.runs_note], api_name="rename_run")
    confirm = [ui.delete_confirm, ui.delete_cancel]
    ui.delete_btn.click(on_ask_delete, [ui.export_run], confirm + [ui.runs_note], api_visibility="private")
    ui.delete_cancel.click(on_cancel_delete, None, confirm + [ui.runs_note], api_visibility="private")
    ui.delete_confirm.click(on_delete_run, [ui.session_state, ui.export_run],
                            listed + [ui.runs_note] + confirm, api_name="delete_run")
