"""Issue 15's smaller findings, checked on the handlers (no browser): errors that keep the
outputs, data sets named by their own file name, views offered per model, the Build table at
a width, one-line logs for user errors, a quiet ONNX export, and the small texts."""
from __future__ import annotations

import logging
import types

import gradio as gr
import pytest
import torch

import app
import blocks
from blocks import edit
from lab.serve.session import RunRecord, Session, dataset_display_name
from presets import load_preset
from ui import common, export, inspect as ui_inspect, train as ui_train

TINY = {"name": "tiny", "input": [3, 32, 32], "classes": 10, "width": 1.0,
        "layers": [{"block": "conv", "params": {"out": 8}},
                   {"block": "cbam", "params": {"reduction": 2}},
                   {"block": "global_avg_pool"}, {"block": "linear"}]}
UPLOAD_PATH = "/tmp/gradio/" + "ab" * 32 + "/tiny.zip"


def _record(spec: dict = TINY, dataset: str = "shapes", run_id: str = "run-1") -> RunRecord:
    torch.manual_seed(0)
    return RunRecord(id=run_id, spec=spec, settings={"dataset": dataset}, model=blocks.build(spec).eval(),
                     events=[{"type": "start", "params": 1}, {"type": "end", "status": "completed",
                                                              "test_acc": 0.5}],
                     dataset_key=(dataset, 0, None, None, "data"), dataset_info={}, classes=[])


# ---------------------------------------------------------------- item 2: errors keep outputs

def test_an_expected_error_keeps_every_output_and_says_why_in_the_status():
    views = app.build.build_views(app.default_spec(), 0)
    kept = common.keeps_outputs(app.on_apply_json, len(views), 3)
    out = kept('{"layers": [', app.default_spec(), 0)
    assert len(out) == len(views)
    assert all(o == gr.skip() for i, o in enumerate(out) if i != 3)
    assert out[3].startswith("⚠") and "not valid JSON" in out[3]
    with pytest.raises(gr.Error, match="not valid JSON"):      # the handler itself still raises
        app.on_apply_json('{"layers": [', app.default_spec(), 0)


def test_a_bug_still_fails_the_event(monkeypatch):
    monkeypatch.setattr(edit, "spec_from_json", lambda text: 1 / 0)
    kept = common.keeps_outputs(app.on_apply_json, 5, 3)
    with pytest.raises(common.BugError, match="Something went wrong: division by zero"):
        kept("{}", app.default_spec(), 0)


# ---------------------------------------------------------------- item 11: logs and texts

def test_user_errors_log_one_line_and_bugs_a_traceback(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="convscope.app")
    with pytest.raises(gr.Error) as e:
        app.on_apply_json('{"layers": [', app.default_spec(), 0)
    assert e.value.print_exception is False          # Gradio prints no traceback for it
    records = [r for r in caplog.records if r.name == "convscope.app"]
    assert len(records) == 1 and records[0].exc_info is None
    assert records[0].getMessage() == "on_apply_json: spec is not valid JSON: line 1 column 13: " \
                                       "Expecting value"
    caplog.clear()
    monkeypatch.setattr(edit, "spec_from_json", lambda text: 1 / 0)
    with pytest.raises(common.BugError):
        app.on_apply_json("{}", app.default_spec(), 0)
    bug = [r for r in caplog.records if r.name == "convscope.app"]
    assert len(bug) == 1 and bug[0].exc_info is not None   # a real bug keeps its traceback


def test_onnx_export_logs_nothing_at_info(tmp_path, caplog):
    pytest.importorskip("onnxscript")
    from lab.export.formats import export_onnx
    caplog.set_level(logging.INFO)
    model = blocks.build(load_preset("LeNet-5", input_shape=(1, 28, 28), classes=10)).eval()
    export_onnx(model, tmp_path / "m.onnx")
    noisy = [r.name for r in caplog.records if r.name.startswith(("onnx", "torch"))]
    assert noisy == [] and (tmp_path / "m.onnx").stat().st_size > 1000
    assert logging.getLogger("onnxscript").level == logging.NOTSET   # restored afterwards


def test_skipped_note_counts_in_words():
    assert ui_train.skipped_note({"skipped_non_images": 1}) == \
        "Skipped 1 file that is not an image."
    assert ui_train.skipped_note({"skipped_corrupt": 2, "skipped_unsafe": 1}) == \
        "Skipped 1 unsafe entry (absolute paths, '..' or links); 2 corrupt images."


def test_export_notes_say_to_pass_the_downloaded_weights(app_env):
    s = Session(key="ux-export")
    s.runs["run-1"] = _record()
    try:
        _, path, note = export.exporter("py")(s, "run-1")
        assert "python tiny.py check --weights tiny.safetensors" in note
        assert "weights (.safetensors)" in note
        _, _, note = export.exporter("safetensors")(s, "run-1")
        assert "python tiny.py check --weights tiny.safetensors" in note
    finally:
        s.close()


def test_train_tab_names_the_network_it_will_train():
    spec = load_preset("ResNet-18 + CBAM", input_shape=(3, 32, 32), classes=10, width=0.25)
    note = ui_train.network_note(spec).replace("\\", "")   # Markdown escapes
    assert note.startswith("Start trains **ResNet-18 + CBAM** from the Build tab")
    assert "width ×0.25" in note and "3×32×32" in note and "10 classes" in note
    broken = dict(TINY, layers=[{"block": "conv", "params": {"out": 8, "kernel": 100}}])
    assert "does not build" in ui_train.network_note(broken)


# ---------------------------------------------------------------- item 4: data set names

def test_uploads_are_named_by_their_own_file_name(app_env):
    assert dataset_display_name(UPLOAD_PATH) == "tiny.zip"
    assert dataset_display_name("C:\\Users\\me\\pets.zip") == "pets.zip"
    assert dataset_display_name("shapes") == "shapes"
    rec = _record(dataset=UPLOAD_PATH)
    assert rec.label == "run-1 · tiny · tiny.zip · 50.0%" and rec.dataset_name == "tiny.zip"
    s = Session(key="ux-names")
    s.runs["run-1"] = rec
    try:
        assert s.run_choices() == [("run-1 · tiny · tiny.zip · 50.0%", "run-1")]
        assert "ab" * 32 not in str(common.run_updates(s))
    finally:
        s.close()


# ---------------------------------------------------------------- item 3: views per model

@pytest.mark.parametrize("preset, absent, present", [
    ("ResNet-18 + CBAM", {"se", "se_class", "ghost"}, {"cbam"}),
    ("ResNet-18 + SE", {"cbam", "ghost"}, {"se", "se_class"}),
    ("GhostNet", {"cbam"}, {"ghost", "se"}),
    ("LeNet-5", {"cbam", "se", "se_class", "ghost"}, {"gradcam", "features"}),
])
def test_only_the_views_a_model_has_are_offered(preset, absent, present):
    shape = (1, 28, 28) if preset == "LeNet-5" else (3, 32, 32)
    spec = load_preset(preset, input_shape=shape, classes=10, width=0.25)
    rec = _record(spec)
    views = {v for _, v in ui_inspect.view_choices(rec, types.SimpleNamespace(test_masks=None))}
    assert present <= views and not absent & views and "quality" not in views
    with_masks = ui_inspect.view_choices(rec, types.SimpleNamespace(test_masks=torch.ones(1)))
    assert "quality" in {v for _, v in with_masks}


def test_layers_follow_the_view():
    rec = _record(load_preset("ResNet-18 + CBAM", input_shape=(3, 32, 32), classes=10, width=0.25))
    cbam = ui_inspect.layer_options(rec, "cbam")
    assert cbam[0] == ui_inspect.DEFAULT_LAYER and len(cbam) == 9
    assert all("CBAM" in label and label.startswith("◆") for label, _ in cbam[1:])
    assert cbam[1] == ("◆ layer 1 · block 1 · CBAM · 16×32×32  (layers.1.0.attn)", "layers.1.0.attn")
    assert len(ui_inspect.layer_options(rec, "features")) > len(cbam)
    assert ui_inspect.layer_options(rec, "saliency") == [("(the view does not use a layer)", "")]


# ---------------------------------------------------------------- item 8: Build tab at a width

def test_build_table_shows_the_channels_a_layer_gets():
    spec = load_preset("ResNet-18 + CBAM", input_shape=(3, 32, 32), classes=10, width=0.25)
    rows, status = edit.layer_table(spec)
    assert rows[0][1].startswith("conv(out=16 ← 64") and rows[0][2].startswith("16×")
    assert "out=32 ← 128" in rows[2][1] and rows[2][2].startswith("32×")
    assert "width ×0.25" in status
    full, _ = edit.layer_table(load_preset("ResNet-18 + CBAM", input_shape=(3, 32, 32), classes=10))
    assert full[0][1].startswith("conv(out=64,")


def test_empty_network_takes_the_width_box():
    out = app.on_load_preset(app.EMPTY, 0.25, None)
    assert out[0]["width"] == 0.25 and '"width": 0.25' in out[1]
