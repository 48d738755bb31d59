"""One truth for a stopped run (issue 15, item 5): its final evaluation is an "eval" event
in metrics.jsonl, drawn in the curves, exported in the metrics CSV, and the status line and
the progress text tell its accuracy."""
from __future__ import annotations

import csv
import re
import time

import pytest

import visual
from lab.datasets import load_dataset
from lab.export.formats import export_metrics_csv
from lab.runs import load_run, save_run
from lab.serve.session import Session, final_test_acc, progress_text
from lab.train.trainer import Trainer, TrainSettings

TINY = {"name": "tiny", "layers": [
    {"block": "conv", "params": {"out": 8, "kernel": 3, "stride": 2}},
    {"block": "conv", "params": {"out": 16, "kernel": 3, "stride": 2}},
    {"block": "global_avg_pool"},
    {"block": "linear"}]}


def _stopped_in_second_epoch() -> Trainer:
    ds = load_dataset("digits", train_size=256, test_size=64)
    trainer = Trainer(TINY, TrainSettings(dataset="digits", epochs=3, batch_size=32, lr=5e-3,
                                          device="cpu", report_interval=0), ds)
    for event in trainer.run():
        if event["type"] == "step" and event["step"] == 11:     # 8 steps an epoch
            trainer.stop()
    return trainer


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    trainer = _stopped_in_second_epoch()
    return trainer, load_run(save_run(trainer, tmp_path_factory.mktemp("runs")))


def test_the_final_evaluation_is_an_event_on_disk(stopped):
    trainer, run = stopped
    kinds = [e["type"] for e in run.metrics]
    assert kinds[-3:] == ["step", "eval", "end"] and kinds.count("epoch") == 1
    epoch1, final, end = run.metrics[kinds.index("epoch")], run.metrics[-2], run.metrics[-1]
    assert final["step"] == 11 and final["epoch"] == pytest.approx(11 / 8, abs=1e-4)
    assert final["test_acc"] == end["test_acc"] != epoch1["test_acc"]
    assert end["best_test_acc"] == max(epoch1["test_acc"], final["test_acc"])
    assert final_test_acc(run.metrics) == end["test_acc"]


def test_the_curves_draw_it(stopped):
    _, run = stopped
    data = visual.curves_figure({"r": run.metrics}).data["runs"]["r"]
    assert data["epoch"] == [1, pytest.approx(11 / 8, abs=1e-4)]
    assert data["test_acc"][-1] == run.end["test_acc"]
    assert data["test_loss"][-1] == run.metrics[-2]["test_loss"]


def test_the_csv_exports_it(stopped, tmp_path):
    _, run = stopped
    rows = list(csv.DictReader(open(export_metrics_csv(run.metrics, tmp_path / "m.csv"))))
    assert [float(r["epoch"]) for r in rows] == [1.0, pytest.approx(11 / 8, abs=1e-4)]
    assert float(rows[-1]["test_acc"]) == run.end["test_acc"]
    assert rows[-1]["step"] == "11"


def test_the_progress_text_tells_the_final_accuracy(stopped):
    _, run = stopped
    frac, text = progress_text(run.metrics, 3)
    assert f"test acc {100 * run.end['test_acc']:.1f}%" in text
    assert "step 11/24" in text and frac == pytest.approx(11 / 24)


def test_status_line_and_progress_text_agree_after_a_stop(tmp_path, monkeypatch):
    """Through the session, as the app drives it: stopped after its first epoch, the last
    update's message and text give the same accuracy, the final evaluation's."""
    monkeypatch.setenv("CONVSCOPE_SESSION_ROOT", str(tmp_path))
    s = Session(key="stopped-run")
    try:
        settings = TrainSettings(dataset="digits", epochs=20, batch_size=32, lr=5e-3,
                                 device="cpu", report_interval=0)
        updates = []
        for u in s.start_training(TINY, settings, train_size=256, test_size=64, poll=0.05):
            updates.append(u)
            if any(e["type"] == "epoch" for e in u.events) and not s._training.stop_file.exists():
                s._training.request_stop()
        last = updates[-1]
        assert last.done and last.status == "stopped", last.message
        rec = s.run(last.run_id)
        acc = final_test_acc(rec.events)
        assert acc == rec.end["test_acc"] is not None
        shown = {m for text in (last.message, last.text)
                 for m in re.findall(r"test acc(?:uracy)? ([\d.]+)%", text)}
        assert shown == {f"{100 * acc:.1f}"}, (last.message, last.text)
    finally:
        s.close()
