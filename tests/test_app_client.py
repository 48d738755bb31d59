"""The launched app through gradio_client, as a script or another program would use it:
load a preset, train one epoch on `shapes`, Grad-CAM, export the spec and the standalone
.py — and the .py, run in a fresh Python, reproduces the app model's outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from presets import load_preset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client
    return Client(app_server, verbose=False)


@pytest.fixture(scope="module")
def trained_run(client):
    """Load the preset and train it for one epoch on shapes (512 images); the run id."""
    out = client.predict("ResNet-18 + CBAM", 0.25, api_name="/load_preset")
    assert json.loads(out[0]) == load_preset("ResNet-18 + CBAM", (3, 32, 32), 10, 0.25)
    assert out[2].startswith("✓ ResNet-18 + CBAM")
    job = client.submit(dataset="shapes", upload=None, train_size=512, epochs=1, batch=128,
                        optimizer="adam", lr=2e-3, schedule="onecycle", seed=0, augment=False,
                        device="cpu", api_name="/train")
    updates = list(job)          # every yield of the generator, streamed
    final = job.result()
    assert len(updates) >= 2
    status = final[2]
    assert "completed" in status, status
    run_id = final[3]["value"]
    plot = json.loads(final[1]["plot"])
    assert any("loss" in t.get("name", "") for t in plot["data"])
    return run_id


def test_grad_cam_through_the_api(client, trained_run):
    fig, top5, note, preview = client.predict(trained_run, "gradcam", "", api_name="/inspect")
    plot = json.loads(fig["plot"])
    assert "Grad-CAM" in json.dumps(plot["layout"])
    confidences = top5["confidences"]
    assert len(confidences) == 5 and top5["label"] == confidences[0]["label"]
    assert "test image 0" in note and Path(preview).exists()


def test_exported_spec_and_standalone_py_reproduce_the_model(client, trained_run, tmp_path, app_env):
    spec_path, _ = client.predict(trained_run, api_name="/export_spec")
    spec = json.loads(Path(spec_path).read_text())
    assert spec["name"] == "ResNet-18 + CBAM" and spec["input"] == [3, 32, 32]
    py_path, _ = client.predict(trained_run, api_name="/export_py")
    weights_path, _ = client.predict(trained_run, api_name="/export_safetensors")
    csv_path, _ = client.predict(trained_run, api_name="/export_csv")
    assert Path(csv_path).read_text().startswith("epoch,")
    # The app's prediction for test image 0 of the run's data set ...
    _, top5, _, _ = client.predict(trained_run, "saliency", "", api_name="/inspect")
    expected = {c["label"]: c["confidence"] for c in top5["confidences"]}
    # ... and the same image through the exported file in a fresh interpreter.
    from lab.datasets import load_dataset
    ds = load_dataset("shapes", seed=0, train_size=int(app_env["CONVSCOPE_SHAPES_TRAIN_SIZE"]),
                      test_size=int(app_env["CONVSCOPE_SHAPES_TEST_SIZE"]), download=False)
    image = tmp_path / "image.npy"
    np.save(image, ds.test_x[0].numpy())
    script = textwrap.dedent(f"""
        import importlib.util, json, numpy as np, torch
        spec = importlib.util.spec_from_file_location("exported", {str(py_path)!r})
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        model = mod.load({str(weights_path)!r})
        probs = mod.predict(model, torch.from_numpy(np.load({str(image)!r})))[0]
        print(json.dumps({{mod.CLASSES[i]: float(p) for i, p in enumerate(probs)}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for label, p in expected.items():
        assert got[label] == pytest.approx(p, abs=1e-5)


def test_errors_come_back_as_messages_and_the_app_keeps_serving(client, trained_run):
    from gradio_client.exceptions import AppError
    # an expected error leaves every output as it was and says why in the status line
    out = client.predict('{"layers": [', 0, api_name="/apply_json")
    assert out[2].startswith("⚠") and "not valid JSON" in out[2]
    unchanged = {"__type__": "update"}
    assert out[0] == out[1] == out[3] == unchanged
    with pytest.raises(AppError, match="maximum value 20|limit of 20"):
        client.predict(dataset="shapes", upload=None, train_size=64, epochs=99, batch=32,
                       optimizer="adam", lr=1e-3, schedule="onecycle", seed=0, augment=False,
                       device="cpu", api_name="/train")
    out = client.predict("ResNet-18 + CBAM", 0.25, api_name="/load_preset")
    assert out[2].startswith("✓")


def test_two_clients_do_not_share_runs(app_server, trained_run):
    from gradio_client import Client
    other = Client(app_server, verbose=False)
    out = other.predict(None, api_name="/export_spec")
    assert out[0] == {"__type__": "update"} and "no finished run" in out[1]
