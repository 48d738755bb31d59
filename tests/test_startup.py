"""Start-up (issue 15, item 12): importing the app and building its page import nothing the
first page does not need — ONNX, Captum, scikit-learn, torchvision and torch's compiler stack
load on first use — so `python app.py` serves about as soon as torch and gradio are imported
(the bench case `app start-up vs bare import` times it)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lab import bench

ROOT = Path(__file__).resolve().parents[1]
DEFERRED = ("onnx", "onnxscript", "captum", "sklearn", "torchvision", "torch._dynamo", "matplotlib")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}; import json, sys; print(json.dumps([m for m in {DEFERRED!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={"GRADIO_ANALYTICS_ENABLED": "False", "PATH": "/usr/bin:/bin",
                                           "HOME": str(Path.home())})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_and_building_the_app_defers_heavy_libraries():
    assert _loaded_after("import app; app.make_demo()") == []


def test_visual_loads_a_view_module_on_first_use():
    # `import visual` is cheap; an attribution view brings Captum when it is asked for.
    assert _loaded_after("import visual; visual.curves_figure({})") == []
    assert "captum" in _loaded_after("import visual; visual.attribution_view")


def test_the_bench_has_the_start_up_case():
    assert "app start-up vs bare import" in bench.case_names()
    from lab.bench import startup
    assert startup.APP == ROOT / "app.py" and startup.BARE_IMPORT.startswith("import torch, gradio")
