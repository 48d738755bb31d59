"""What every tab shares: constants, the error wrapper, the per-visitor session, run pickers.

Nothing here builds UI: the tabs (ui/build.py … ui/export.py) lay themselves out and wire
their own events; app.py assembles them.
"""
from __future__ import annotations

import errno
import functools
import html
import inspect
import logging
import re
from typing import Any, Callable

import gradio as gr

import visual
from blocks import SpecError
from lab.datasets import DatasetError
from lab.serve import session as sess
from lab.serve.limits import LimitError
from lab.serve.session import Session, SessionError
from presets import DEFAULT_CLASSES, DEFAULT_INPUT, DEFAULT_PRESET, DEFAULT_WIDTH, load_preset

log = logging.getLogger("convscope.app")

EMPTY = "(empty network)"
UPLOAD = "my images (.zip)"
USER_ERRORS = (SpecError, LimitError, SessionError, DatasetError, ValueError, KeyError,
               FileNotFoundError)

CSS = """
.cs-progress {height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden;}
.cs-progress > div {height: 100%; background: var(--color-accent); transition: width .2s;}
.cs-progress-text {font-size: var(--text-sm); margin-top: 4px; color: var(--body-text-color-subdued);}
#cs-title h1 {margin-bottom: 0;}
"""


# ============================================================================ errors

def one_line(e: BaseException) -> str:
    text = str(e).strip().strip("'\"").splitlines()
    return (text[0] if text else type(e).__name__)[:400]


def md_text(text: str) -> str:
    """Text (file names from an upload among it) shown literally inside Markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>])", r"\\\1", html.escape(text, quote=False))


def user_errors(fn: Callable) -> Callable:
    """Turn exceptions into a gr.Error with one readable line; the app keeps serving."""
    def convert(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return gr.Error("The server's disk is full, so nothing could be written; "
                            "try again later.")
        if isinstance(e, USER_ERRORS):
            return gr.Error(one_line(e))
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Something went wrong: {one_line(e)}")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every error becomes a message
                raise convert(e) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise convert(e) from None
    return call


# ============================================================================ session

def get_session(state: Any, request: gr.Request | None = None) -> Session:
    """The session held in `state`, or a new one keyed by the browser session."""
    if isinstance(state, Session) and not state.closed:
        return state
    return Session(key=getattr(request, "session_hash", None))


def close_session(value: Any) -> None:
    """gr.State's delete callback: the session's training stops and its folder goes."""
    if isinstance(value, Session):
        value.close()


def on_unload(request: gr.Request) -> None:
    """The tab was closed: close its session at once — the training stops after the current
    batch, runs and data sets are released and the folder is removed. (Gradio keeps a closed
    tab's gr.State for an hour before `close_session` runs; by then it holds nothing.)"""
    key = getattr(request, "session_hash", None) if request is not None else None
    if key:
        sess.close_sessions(key)
        sess.remove_session_dir(key)


def default_spec() -> dict:
    return load_preset(DEFAULT_PRESET, input_shape=DEFAULT_INPUT, classes=DEFAULT_CLASSES,
                       width=DEFAULT_WIDTH)


def spec_of(state: Any) -> dict:
    return state if isinstance(state, dict) else default_spec()




def progress_html(frac: float, text: str) -> str:
    pct = max(0.0, min(1.0, frac)) * 100
    return (f'<div class="cs-progress" role="progressbar" aria-valuenow="{pct:.0f}" '
            f'aria-valuemin="0" aria-valuemax="100"><div style="width:{pct:.1f}%"></div></div>'
            f'<div class="cs-progress-text">{html.escape(text)}</div>')


def run_updates(s: Session, select: str | None = None) -> list:
    """Run pickers of the Inspect, Compare and Export tabs."""
    choices = s.run_choices()
    ids = [v for _, v in choices]
    value = select if select in ids else (ids[0] if ids else None)
    compare = [v for v in ids[:4]]
    return [gr.update(choices=choices, value=value), gr.update(choices=choices, value=compare),
            gr.update(choices=choices, value=value)]

def to_int(value: Any, what: str) -> int:
    if value is None or value == "":
        raise gr.Error(f"Enter a whole number for {what}.")
    v = float(value)
    if not v.is_integer():
        raise gr.Error(f"{what} must be a whole number, got {value}.")
    return int(v)


def curves(events_by_run: dict[str, list[dict]]):
    return visual.curves_figure(events_by_run).figure

def on_refresh_runs(session_state: Any, current: Any):
    """A tab was opened: its run picker lists the session's runs (a run finished after a
    Stop that returned early appears here), keeping the current choice."""
    if not isinstance(session_state, Session):
        return gr.skip()
    choices = session_state.run_choices()
    ids = [v for _, v in choices]
    if isinstance(current, list):
        return gr.update(choices=choices, value=[v for v in current if v in ids] or ids[:4])
    return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))
