"""Many visitors at once: 8 gradio_client sessions, each in its own thread, build (a preset,
then a small spec of their own), train one epoch on a small `shapes` and inspect the run.

All succeed; none sees another's runs (every session's run is "run-1", so each checks that
its run-1 is its own network); training honours its concurrency limit of 2, so 6 of them
wait in Gradio's queue instead of failing; and once the visitors leave, their sessions are
closed, their models freed and the server's memory (RSS of this process, which serves the
app) is back within 300 MB of what it was after one warm-up visitor.
"""
from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from blocks import edit
from lab.serve import session as sess
from lab.serve.limits import Limits

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

VISITORS = 8
TRAIN_SIZE = 256
RSS_SLACK_MB = 300


def spec_for(i: int) -> dict:
    return {"name": f"visitor-{i}", "input": [3, 32, 32], "classes": 10, "width": 1.0, "layers": [
        {"block": "conv", "params": {"out": 8 + i, "stride": 2}},
        {"block": "cbam", "params": {"reduction": 2}},
        {"block": "global_avg_pool"},
        {"block": "linear"},
    ]}


def visit(url: str, i: int, models: list) -> dict:
    """One visitor's whole session; returns what it saw."""
    from gradio_client import Client
    client = Client(url, verbose=False)
    try:
        out = client.predict("ResNet-18 + CBAM", 0.25, api_name="/load_preset")
        assert out[2].startswith("✓ ResNet-18 + CBAM"), out[2]
        out = client.predict(edit.spec_to_json(spec_for(i)), 0, api_name="/apply_json")
        assert json.loads(out[0])["name"] == f"visitor-{i}"
        job = client.submit("shapes", None, TRAIN_SIZE, 1, 64, "adam", 3e-3, "onecycle", i, False,
                            "cpu", api_name="/train")
        final = job.result(timeout=600)
        run_id = final[3]["value"]
        fig, top5, note, _ = client.predict(run_id, "gradcam", "", api_name="/inspect")
        spec_path, _ = client.predict(run_id, api_name="/export_spec")
        mine = [s for s in sess.open_sessions() if s.key == client.session_hash]
        models.extend(weakref.ref(r.model) for s in mine for r in s.runs.values())
        return {"key": client.session_hash, "status": final[2], "run_id": run_id,
                "choices": final[3]["choices"], "top5": top5, "note": note,
                "exported": json.loads(Path(spec_path).read_text())["name"],
                "sessions": len(mine)}
    finally:
        client.close()


def closed(keys) -> bool:
    open_keys = {s.key for s in sess.open_sessions()}
    return not (set(keys) & open_keys)


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def test_eight_visitors_at_once(app_server, app_env, monkeypatch):
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")    # leaving is noticed within a second
    assert Limits.from_env().max_concurrent_trainings == 2
    lock = threading.Lock()
    running, peak, started = [0], [0], [0]
    real = sess.train_events

    def counted(*args, **kwargs):           # the trainings running at any moment, server-side
        with lock:
            running[0] += 1
            started[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            yield from real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(sess, "train_events", counted)

    warm_models: list = []
    warm = visit(app_server, 99, warm_models)               # one visitor first: the baseline
    assert "completed" in warm["status"]
    assert wait_for(lambda: closed([warm["key"]]), 60)
    baseline = rss_mb()

    models: list = []
    with ThreadPoolExecutor(VISITORS) as pool:
        seen = list(pool.map(lambda i: visit(app_server, i, models), range(VISITORS)))

    # all succeeded, each saw only its own run
    for i, v in enumerate(seen):
        assert "completed" in v["status"], v["status"]
        assert v["sessions"] == 1 and v["run_id"] == "run-1"
        assert len(v["choices"]) == 1 and f"visitor-{i}" in v["choices"][0][0], v["choices"]
        assert v["exported"] == f"visitor-{i}"
        assert len(v["top5"]["confidences"]) == 5 and "test image 0" in v["note"]
    assert len({v["key"] for v in seen}) == VISITORS
    # the queue: never more than 2 trainings at once, and it was full, so 6 waited
    assert started[0] == VISITORS + 1 and peak[0] == 2 and running[0] == 0

    # the visitors left: sessions closed, models released, memory back near the baseline
    keys = [v["key"] for v in seen]
    assert wait_for(lambda: closed(keys), 60)
    assert len(models) == VISITORS and len(warm_models) == 1
    gc.collect()
    assert [m for m in models + warm_models if m() is not None] == []
    root = Path(app_env["CONVSCOPE_SESSION_ROOT"])
    assert not any((root / f"s-{k}").exists() for k in keys + [warm["key"]])
    assert not [t for t in threading.enumerate() if t.name.startswith("convscope-train")]
    after = rss_mb()
    assert after <= baseline + RSS_SLACK_MB, (baseline, after)
    print(f"\nload: {VISITORS} concurrent visitors, peak trainings {peak[0]}, "
          f"RSS {baseline:.0f} MB after one visitor -> {after:.0f} MB after {VISITORS}")
