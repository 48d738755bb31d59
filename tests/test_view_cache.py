"""Slow Inspect views are computed once per run (issue 15, item 10): the confusion matrix,
attention quality and the other run-wide views are kept in the run's record (the visitor's
session, not a global), and a second look shows them from there — counted, not timed."""
from __future__ import annotations

import pytest

import visual
from lab.serve.session import Session
from lab.train.trainer import TrainSettings
from ui import inspect as ui_inspect

TINY = {"name": "tiny cbam", "input": [3, 32, 32], "classes": 10, "layers": [
    {"block": "conv", "params": {"out": 8, "stride": 2}},
    {"block": "cbam", "params": {"reduction": 2}},
    {"block": "global_avg_pool"},
    {"block": "linear"}]}


@pytest.fixture(scope="module")
def two_runs(app_env):
    s = Session(key="view-cache")
    settings = TrainSettings(dataset="shapes", epochs=1, batch_size=64, lr=3e-3, device="cpu")
    ids = []
    for _ in range(2):
        last = list(s.start_training(TINY, settings, train_size=128, test_size=64))[-1]
        assert last.run_id, last.message
        ids.append(last.run_id)
    yield s, ids
    s.close()


def _counting(monkeypatch, name: str) -> list:
    calls, real = [], getattr(visual, name)
    monkeypatch.setattr(visual, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("view,fn", [("confusion", "confusion_view"), ("quality", "attention_quality")])
def test_a_second_look_comes_from_the_run_cache(two_runs, monkeypatch, view, fn):
    s, (first, second) = two_runs
    calls = _counting(monkeypatch, fn)
    told = []
    out1 = ui_inspect.on_inspect(s, first, view, None, "", progress=lambda *a, **k: told.append(k))
    out2 = ui_inspect.on_inspect(s, first, view, {"source": "test", "index": 3}, "",
                                 progress=lambda *a, **k: told.append(k))
    assert len(calls) == 1                      # the second look (another image) is cached
    assert out2[1] is out1[1] and out1[3].split("Prediction")[0] == out2[3].split("Prediction")[0]
    assert len(told) == 1 and "once" in told[0]["desc"]      # progress shown the first time only
    ui_inspect.on_inspect(s, second, view, None, "")         # another run: its own computation
    assert len(calls) == 2
    assert ("view", view, None) in s.run(first).cache and ("view", view, None) in s.run(second).cache


def test_views_of_the_chosen_image_are_not_cached(two_runs, monkeypatch):
    s, (first, _) = two_runs
    calls = _counting(monkeypatch, "cbam_view")
    ui_inspect.on_inspect(s, first, "cbam", None, "")
    ui_inspect.on_inspect(s, first, "cbam", {"source": "test", "index": 5}, "")
    assert len(calls) == 2
    assert not any(k[1] == "cbam" for k in s.run(first).cache if isinstance(k, tuple))

