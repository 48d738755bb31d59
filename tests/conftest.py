"""Shared fixtures. `app_server` launches the Gradio app in-process for the client and
browser tests (one launch per test session, closed after)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Sessions made by tests keep private runs (the public-host mode) unless a test gives a
# shared runs folder itself: the app's local default would write into ./runs.
os.environ.setdefault("CONVSCOPE_PUBLIC", "1")

# What the app tests run with: a small `shapes` (fast epochs), no downloads, own folders.
APP_TEST_ENV = {
    "CONVSCOPE_SHAPES_TRAIN_SIZE": "512",
    "CONVSCOPE_SHAPES_TEST_SIZE": "256",
    "CONVSCOPE_DOWNLOAD": "0",
    "GRADIO_ANALYTICS_ENABLED": "False",
}


# A real browser for the end-to-end tests: Debian's chromium (.ci/run installs it; never
# `playwright install`), with the flags this closed network needs.
CHROMIUM = os.environ.get("CONVSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def browser_page(args: list[str] = CHROMIUM_ARGS):
    """A fresh Chromium profile and one page (1400×1000, 60 s timeouts), closed after. A
    missing browser fails the test: a skipped browser test would pass a broken set-up."""
    from playwright import sync_api
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set CONVSCOPE_CHROMIUM)")
    profile = tempfile.mkdtemp(prefix="convscope-chromium-")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=args, headless=True,
            viewport={"width": 1400, "height": 1000})
        try:
            pg = ctx.new_page()
            pg.set_default_timeout(60_000)
            yield pg
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def page(app_server):
    """The app opened in a fresh browser."""
    with browser_page() as pg:
        pg.goto(app_server)
        yield pg


@contextlib.contextmanager
def serve_app():
    """The app (built now, from the environment as it is) on a free localhost port; yields
    its URL and closes the server after."""
    import app

    demo = app.make_demo()
    opts = app.launch_options()
    port = free_port()
    opts.update(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    demo.launch(**opts)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_env(tmp_path_factory):
    """APP_TEST_ENV plus a session root under pytest's tmp dir; restored afterwards."""
    env = dict(APP_TEST_ENV, CONVSCOPE_SESSION_ROOT=str(tmp_path_factory.mktemp("sessions")))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def app_server(app_env):
    """The app served on a free localhost port with `prevent_thread_lock=True`; yields its
    URL and closes the server after the last test that uses it."""
    with serve_app() as url:
        yield url


@pytest.fixture(scope="module")
def one_thread():
    """Two busy torch threads on a shared 2-core machine spin against each other (up to 10×
    slower); modules that time nothing but run many small forwards use one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
