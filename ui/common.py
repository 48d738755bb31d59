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
.cs-progress > div {height: 100%; background: var(--color-accent);}
.cs-progress-text {font-size: var(--text-sm); margin-top: 4px; color: var(--body-text-color-subdued);}
#cs-title h1 {margin-bottom: 0;}
"""


# Gradio's gr.Plot mounts a new Plotly graph for every new figure and drops the old one
# without Plotly.purge; Plotly's window "resize" listener (config.responsive, which Gradio
# sets) then keeps every old graph alive: ~500 detached nodes and ~100 listeners per redraw,
# so a page that redraws live curves grows and slows with every run. This purges a graph
# as soon as it leaves the page.
JS = """
() => {
  const purge = (node) => {
    if (!(node instanceof Element) || !window.Plotly) return;
    const graphs = node.classList.contains('js-plotly-plot') ? [node]
      : node.querySelectorAll('.js-plotly-plot');
    for (const gd of graphs) if (!gd.isConnected) window.Plotly.purge(gd);
  };
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.removedNodes) purge(n);
  }).observe(document.body, {childList: true, subtree: true});
}
"""


# ============================================================================ errors

def one_line(e: BaseException) -> str:
    text = str(e).strip().strip("'\"").splitlines()
    return (text[0] if text else type(e).__name__)[:400]


def md_text(text: str) -> str:
    """Text (file names from an upload among it) shown literally inside Markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>])", r"\\\1", html.escape(text, quote=False))


class BugError(gr.Error):
    """An unexpected error turned into a message: a bug, whose traceback is logged once."""


def user_errors(fn: Callable) -> Callable:
    """Turn exceptions into a gr.Error with one readable line; the app keeps serving.
    Expected user errors (USER_ERRORS, or a gr.Error the handler raised) log one line; a
    real bug logs its traceback and becomes a BugError."""
    def convert(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            if not isinstance(e, BugError):
                log.info("%s: %s", fn.__name__, one_line(Exception(e.message)))
                e.print_exception = False
            return e
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            log.warning("%s: disk full (%s)", fn.__name__, one_line(e))
            return gr.Error("The server's disk is full, so nothing could be written; "
                            "try again later.", print_exception=False)
        if isinstance(e, USER_ERRORS):
            log.info("%s: %s", fn.__name__, one_line(e))
            return gr.Error(one_line(e), print_exception=False)
        log.exception("unexpected error in %s", fn.__name__)
        return BugError(f"Something went wrong: {one_line(e)}", print_exception=False)

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


def keeps_outputs(fn: Callable, n: int, status: int | tuple[int, ...] | None = None) -> Callable:
    """`fn` as an event handler whose expected errors leave all its `n` outputs as they were:
    the message goes to a popup (gr.Warning) and, as "⚠ message", to output(s) `status` (a
    status line, a note beside the field), instead of Gradio's red "Error" badge over every output — which hid the
    very JSON or value the user has to fix. Bugs (BugError) still fail the event. The
    handler itself keeps raising gr.Error, for tests and scripts that call it directly."""
    def kept(e: gr.Error) -> list:
        message = one_line(Exception(e.message))
        gr.Warning(message)
        out = [gr.skip()] * n
        for i in (status,) if isinstance(status, int) else (status or ()):
            out[i] = f"⚠ {md_text(message)}"
        return out if n > 1 else out[0]

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except BugError:
                raise
            except gr.Error as e:
                yield kept(e)
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BugError:
            raise
        except gr.Error as e:
            return kept(e)
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


def curves(events_by_run: dict[str, list[dict]], log_loss: bool = False):
    return visual.curves_figure(events_by_run, log_loss=bool(log_loss)).figure

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
