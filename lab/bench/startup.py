"""App start-up against the bare import of its heavy libraries (issue 15, item 12).

Each round starts two fresh Python processes, alternating which goes first: one only runs
`import torch, gradio, plotly, captum`; the other runs `python app.py` and is timed until
its server answers an HTTP request for the page. The ratio (app / bare import, the median
over rounds) says how much the app adds to what it cannot avoid importing; the app imports
what the first page does not need (ONNX, Captum, torchvision, data sets) on first use.
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from lab.bench import BenchOptions, register_case

BARE_IMPORT = "import torch, gradio, plotly, captum"
APP = Path(__file__).resolve().parents[2] / "app.py"
SERVE_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quiet_env(**extra: str) -> dict:
    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONWARNINGS": "ignore", **extra}


def time_bare_import() -> float:
    """Seconds for a fresh interpreter to import the app's unavoidable libraries."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE_IMPORT], check=True, env=_quiet_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def time_app_start(app: Path = APP) -> float:
    """Seconds from starting `python app.py` until its page is served (HTTP 200)."""
    port = _free_port()
    env = _quiet_env(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(app)], cwd=str(app.parent), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with status {proc.returncode} before serving")
            if time.perf_counter() - t0 > SERVE_TIMEOUT_S:
                raise RuntimeError(f"app.py did not serve within {SERVE_TIMEOUT_S} s")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.02)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def startup_case(options: BenchOptions) -> dict:
    if not APP.is_file():
        return {"kind": "startup", "skipped": f"no app.py at {APP}"}
    rounds = options.rounds if options.rounds is not None else (2 if options.quick else 5)
    out = []
    for r in range(rounds):
        order = ("bare", "app") if r % 2 == 0 else ("app", "bare")
        times = {k: (time_bare_import() if k == "bare" else time_app_start()) for k in order}
        out.append({"bare_import_s": round(times["bare"], 2), "app_s": round(times["app"], 2),
                    "ratio": round(times["app"] / times["bare"], 3)})
    return {"kind": "startup", "baseline": BARE_IMPORT,
            "bare_import_s": round(statistics.median(r["bare_import_s"] for r in out), 2),
            "app_s": round(statistics.median(r["app_s"] for r in out), 2),
            "ratio": round(statistics.median(r["ratio"] for r in out), 3),
            "rounds": out}


register_case("app start-up vs bare import", startup_case)
