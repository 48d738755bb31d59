"""The app's logic without a browser: spec editing, limits, sessions, the training
generator, Stop, inspection views and exports, called as plain functions."""
from __future__ import annotations

import json
import sys
import threading
import time
import types
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import pytest

import app
from blocks import SpecError, edit, list_blocks, normalize_spec
from lab.serve import limits as lim
from lab.serve import session as sess
from lab.serve import zerogpu
from lab.serve.session import Session, SessionError
from presets import load_preset

TINY = {"name": "tiny", "input": [3, 32, 32], "classes": 10, "width": 1.0, "layers": [
    {"block": "conv", "params": {"out": 8, "stride": 2}},
    {"block": "ghost_module", "params": {"out": 8}},
    {"block": "se", "params": {"reduction": 2}},
    {"block": "cbam", "params": {"reduction": 2}},
    {"block": "global_avg_pool"},
    {"block": "linear"},
]}


def settings(**kw):
    from lab.train.trainer import TrainSettings
    base = dict(dataset="shapes", epochs=1, batch_size=64, lr=3e-3, device="cpu", seed=0)
    base.update(kw)
    return TrainSettings(**base)


def drain(updates):
    return list(updates)


@pytest.fixture(scope="module")
def trained(app_env):
    """A session holding one finished run of TINY (1 epoch, 512 shapes)."""
    s = Session(key="trained-fixture")
    updates = drain(s.start_training(TINY, settings(), train_size=512, test_size=128))
    assert updates[-1].done and updates[-1].run_id, updates[-1].message
    yield s, s.run(updates[-1].run_id)
    s.close()


# ============================================================================ edit

def preset():
    return load_preset("ResNet-18 + CBAM", (3, 32, 32), 10, 0.25)


def test_edits_return_new_specs_and_leave_the_original_alone():
    spec = preset()
    before = json.dumps(spec, sort_keys=True)
    added = edit.add_layer(spec, "dropout", 5)
    assert [l["block"] for l in added["layers"]][4:7] == ["basic_residual", "dropout", "global_avg_pool"]
    assert edit.remove_layer(added, 5)["layers"] == spec["layers"]
    dup = edit.duplicate_layer(spec, 0)
    assert dup["layers"][0] == dup["layers"][1] == spec["layers"][0] and len(dup["layers"]) == 8
    moved = edit.move_layer(spec, 0, +2)
    assert [l["block"] for l in moved["layers"][:3]] == ["basic_residual", "basic_residual", "conv"]
    assert edit.move_layer(spec, 0, -5)["layers"] == spec["layers"]  # clamped at the top
    assert json.dumps(spec, sort_keys=True) == before
    appended = edit.add_layer(spec, "relu")
    assert appended["layers"][-1] == {"block": "relu", "params": {}}


def test_set_layer_params_validates_and_keeps_the_spec_sparse():
    spec = preset()
    new = edit.set_layer_params(spec, 1, {"out": 32, "attention": "se"}, repeat=3)
    assert new["layers"][1] == {"block": "basic_residual", "params": {"out": 32, "attention": "se"},
                                "repeat": 3}
    back = edit.set_layer_params(new, 1, {"attention": "none"}, repeat=1)
    assert back["layers"][1] == {"block": "basic_residual", "params": {"out": 32}}
    with pytest.raises(SpecError, match=r"layer 1 \(basic_residual\): 'stride' must be at most 4"):
        edit.set_layer_params(spec, 1, {"stride": 9})
    with pytest.raises(SpecError, match=r"layer 0 \(conv\): unknown parameter 'size'"):
        edit.set_layer_params(spec, 0, {"size": 3})
    with pytest.raises(SpecError, match="no layer 12"):
        edit.remove_layer(spec, 12)


def test_shape_problems_show_at_the_offending_layer():
    spec = edit.add_layer(preset(), "conv")           # a conv after the linear head
    rows, status = edit.layer_table(spec)
    assert status.startswith("⚠ layer 7 (conv)")
    assert rows[7][-1] and not any(r[-1] for r in rows[:7])
    rows, status = edit.layer_table(preset())
    assert status.startswith("✓") and rows[-1][1] == "total" and rows[-1][3] == "708,208"


def test_palette_covers_the_registry_grouped_with_help_and_paper():
    groups = edit.palette()
    names = [e.name for _, entries in groups for e in entries]
    assert sorted(names) == sorted(b.name for b in list_blocks())
    assert [g for g, _ in groups][:2] == ["convolution", "attention"]
    cbam = next(e for _, es in groups for e in es if e.name == "cbam")
    assert cbam.group == "attention" and "Woo" in cbam.paper and cbam.help.startswith("CBAM")
    assert "Woo et al. 2018" in edit.palette_markdown()


def test_form_values_round_trip_through_widgets():
    info = {b.name: b for b in list_blocks()}
    conv = info["conv"]
    kinds = {p.name: edit.widget_kind(p) for p in conv.params}
    assert kinds == {"out": "number", "kernel": "number", "stride": "number", "padding": "text",
                     "dilation": "number", "groups": "number", "norm": "dropdown", "act": "dropdown",
                     "bias": "dropdown"}
    raw = {p.name: edit.form_value(p, v) for p, v in zip(conv.params, (32, 5, 1, None, 1, 1,
                                                                       "none", "swish", True))}
    params = edit.form_to_params("conv", raw, layer=0)
    assert params["padding"] is None and params["bias"] is True and params["kernel"] == 5
    inception = edit.form_to_params("inception", {"c2": "48, 64"})
    assert inception == {"c2": [48, 64]}
    with pytest.raises(SpecError, match=r"layer 2 \(conv\): 'padding' must be a number"):
        edit.form_to_params("conv", {"padding": "lots"}, layer=2)


def test_spec_json_round_trip_and_refusals():
    spec = preset()
    assert edit.spec_from_json(edit.spec_to_json(spec)) == spec
    with pytest.raises(SpecError, match="not valid JSON"):
        edit.spec_from_json('{"layers": [')
    with pytest.raises(SpecError):
        edit.spec_from_json(b"\xff\xfe not utf-8")
    with pytest.raises(SpecError, match="larger than|KiB"):
        edit.spec_from_json("x" * (edit.MAX_SPEC_BYTES + 1))


def test_empty_spec_is_editable():
    spec = edit.empty_spec((1, 28, 28), 10)
    rows, status = edit.layer_table(spec)
    assert rows == [] and "empty" in status
    spec = edit.add_layer(edit.add_layer(spec, "conv"), "linear")
    normalize_spec(spec)
    assert edit.layer_table(spec)[1].startswith("✓")


# ============================================================================ limits

def test_limits_from_env_with_safe_fallbacks():
    d = lim.Limits.from_env({}, gpu=False)
    assert (d.max_params, d.max_epochs, d.max_batch, d.max_upload_mb, d.max_concurrent_trainings) \
        == (5_000_000, 20, 512, 20, 2)
    e = lim.Limits.from_env({"CONVSCOPE_MAX_EPOCHS": "3", "CONVSCOPE_MAX_PARAMS": "-1",
                             "CONVSCOPE_MAX_BATCH": "lots", "CONVSCOPE_MAX_UPLOAD_MB": "1.5"}, gpu=False)
    assert e.max_epochs == 3 and e.max_params == 5_000_000 and e.max_batch == 512
    assert e.gradio_max_file_size() == "1.5mb" and e.max_upload_bytes == int(1.5 * 2**20)
    assert lim.Limits.from_env({}, gpu=True).max_params > d.max_params


def test_check_spec_limits_names_the_limit_and_the_figure():
    small = lim.Limits.from_env({"CONVSCOPE_MAX_PARAMS": "100000"}, gpu=False)
    with pytest.raises(lim.LimitError, match=r"708\.21k parameters.*at most 100\.00k.*CONVSCOPE_MAX_PARAMS"):
        lim.check_spec_limits(preset(), 128, small)
    tight = lim.Limits.from_env({"CONVSCOPE_MAX_ACTIVATION_MB": "10"}, gpu=False)
    with pytest.raises(lim.LimitError, match=r"batch of 128 needs about \d+ MB.*allows 10 MB"):
        lim.check_spec_limits(preset(), 128, tight)
    assert lim.check_spec_limits(preset(), 128, lim.Limits.from_env({}, gpu=False)).params == 708_208
    with pytest.raises(lim.LimitError, match="above this server's limit of 512"):
        lim.check_batch(1024, small)
    with pytest.raises(lim.LimitError, match="limit of 20"):
        lim.check_epochs(21, small)


# ============================================================================ sessions

def test_sessions_are_isolated(trained, app_env):
    s1, rec = trained
    s2 = Session(key="other-visitor")
    assert s2.runs == {} and s2.run_choices() == []
    with pytest.raises(SessionError, match="no finished run"):
        s2.run(rec.id)
    s2.add_run(dict(spec=rec.spec, settings=rec.settings, events=rec.events, model=rec.model,
                    dataset_key=rec.dataset_key, dataset_info=rec.dataset_info, classes=rec.classes))
    assert list(s1.runs) == [rec.id] and len(s2.runs) == 1
    assert s1.dir != s2.dir and rec.path.parent.parent == s1.dir
    s2.close()
    assert not (s2.root / f"s-{s2.key}").exists() and s2.runs == {}
    assert s1.runs and rec.path.exists()


def test_app_handlers_keep_one_session_per_browser(app_env):
    a = app.get_session(None, types.SimpleNamespace(session_hash="aaa"))
    b = app.get_session(None, types.SimpleNamespace(session_hash="bbb"))
    assert a is not b and a.dir != b.dir
    assert app.get_session(a, None) is a
    app.close_session(a)
    assert a.closed and not (a.root / "s-aaa").exists()
    app.on_unload(types.SimpleNamespace(session_hash="bbb"))
    assert not (b.root / "s-bbb").exists()


def test_run_limit_drops_the_oldest(trained, app_env):
    _, rec = trained
    s = Session(key="limit", limits=lim.Limits.from_env({"CONVSCOPE_MAX_RUNS": "2"}, gpu=False))
    parts = dict(spec=rec.spec, settings=rec.settings, events=rec.events, model=rec.model,
                 dataset_key=rec.dataset_key, dataset_info=rec.dataset_info, classes=rec.classes)
    first = s.add_run(parts)
    s.add_run(parts)
    s.add_run(parts)
    assert list(s.runs) == ["run-2", "run-3"] and not first.path.exists()
    s.close()


# ============================================================================ training

def test_train_generator_streams_curves_and_records_the_run(app_env):
    spec = edit.set_input(TINY, (3, 32, 32), 10)
    outs = list(app.on_train(None, spec, "shapes", None, 512, 1, 64, "adam", 3e-3, "onecycle", 0,
                             False, "cpu"))
    s = outs[0][0]
    figures = [o[2] for o in outs if isinstance(o[2], go.Figure)]
    assert figures, "no curves were drawn"
    assert "completed" in outs[-1][3] and "run-1" in outs[-1][3]
    run_dd = outs[-1][4]
    assert run_dd["value"] == "run-1"
    rec = s.run("run-1")
    assert rec.status == "completed" and rec.start["train_size"] == 512
    traces = figures[-1].data
    assert any(t.xaxis == "x" and "loss" in t.hovertemplate for t in traces)      # loss panel
    assert any(t.xaxis == "x2" and "acc" in t.hovertemplate for t in traces)      # accuracy panel
    assert outs[-1][-2]["interactive"] is True and outs[-1][-1]["interactive"] is False
    s.close()


def test_updates_come_at_least_every_poll_even_when_steps_are_slow(app_env, monkeypatch):
    def slow_events(spec, settings, stop_file, dataset=None, train_size=None, test_size=None, **more):
        yield {"type": "start", "device_name": "CPU", "total_steps": 2, "steps_per_epoch": 2}
        time.sleep(1.0)
        yield {"type": "step", "step": 1, "epoch": 0.5, "loss": 2.0, "images_per_sec": 10.0,
               "eta_s": 1.0, "progress": 0.5}
        yield {"type": "end", "status": "failed", "message": "stub"}
    monkeypatch.setattr(sess, "train_events", slow_events)
    s = Session(key="slow")
    t0 = time.monotonic()
    stamps = [time.monotonic() - t0 for _ in s.start_training(TINY, settings(), train_size=64,
                                                              poll=0.1)]
    gaps = np.diff([0.0] + stamps)
    assert len(stamps) >= 6 and gaps.max() < 0.6, gaps
    s.close()


def test_stop_keeps_the_model_trained_so_far(app_env):
    spec = edit.set_input(TINY, (3, 32, 32), 10)
    gen = app.on_train(None, spec, "shapes", None, 1024, 20, 32, "adam", 3e-3, "onecycle", 0,
                       False, "cpu")
    first = next(gen)
    s = first[0]
    for out in gen:
        if "step" in out[1] and "loss" in out[1]:
            break
    assert s.training
    result = app.on_stop(s)
    run_id = None
    deadline = time.monotonic() + 30
    while run_id is None and time.monotonic() < deadline:
        run_id = s.stop_training(wait=1.0)
    assert run_id is not None and not s.training
    rec = s.run(run_id)
    assert rec.status == "stopped" and rec.end["epochs"] < 20
    assert "stopped" in str(result[2]) or "stopping" in str(result[2])
    tail = list(gen)  # the UI generator ends by itself too (Gradio cancels it in the app)
    assert not tail or "stopped" in tail[-1][3]
    s.close()


def test_training_refusals_are_user_errors(app_env, monkeypatch):
    with pytest.raises(gr.Error, match="limit of 20"):
        list(app.on_train(None, TINY, "shapes", None, 64, 50, 32, "adam", 1e-3, "onecycle", 0,
                          False, "cpu"))
    with pytest.raises(gr.Error, match=r"layer 6 \(conv\)"):
        bad = edit.add_layer(TINY, "conv")
        list(app.on_train(None, bad, "shapes", None, 64, 1, 32, "adam", 1e-3, "onecycle", 0,
                          False, "cpu"))
    monkeypatch.setenv("CONVSCOPE_DATA_ROOT", str(app_env["CONVSCOPE_SESSION_ROOT"]) + "/no-data")
    with pytest.raises(gr.Error, match="mnist"):
        list(app.on_train(None, edit.set_input(TINY, (1, 28, 28), 10), "mnist", None, 0, 1, 32,
                          "adam", 1e-3, "onecycle", 0, False, "cpu"))


# ============================================================================ build handlers

def test_build_handlers_keep_json_and_state_in_step():
    out = app.on_load_preset("ResNet-18 + CBAM", 0.25, None)
    spec, text, rows, status, layer_dd = out[:5]
    assert json.loads(text) == spec and layer_dd["value"] == 0 and status.startswith("✓")
    out = app.on_add_layer(spec, "dropout", 5)
    assert out[0]["layers"][6]["block"] == "dropout" and out[4]["value"] == 6
    edited = json.loads(out[1])
    edited["layers"][0]["params"]["out"] = 32
    out2 = app.on_apply_json(json.dumps(edited), out[0], 0)
    assert out2[0]["layers"][0]["params"]["out"] == 32
    # the form: slot values in, spec out (conv has 9 params -> slots 0..8)
    form = app.form_updates(out2[0], 0)
    assert form[1]["value"] == 1
    slots = [None] * (4 * app.FORM_SLOTS)
    values = {"out": 16, "kernel": 5, "stride": 1, "padding": "", "dilation": 1, "groups": 1,
              "norm": "batch", "act": "swish", "bias": "auto"}
    kinds = ("number", "checkbox", "dropdown", "text")
    for i, p in enumerate(list_blocks_by_name()["conv"].params):
        slots[4 * i + kinds.index(edit.widget_kind(p))] = values[p.name]
    out3 = app.on_apply_params(out2[0], 0, 2, *slots)
    assert out3[0]["layers"][0] == {"block": "conv", "params": {"out": 16, "kernel": 5, "act": "swish"},
                                    "repeat": 2}
    with pytest.raises(gr.Error, match="not valid JSON"):
        app.on_apply_json("{", out3[0], 0)
    empty = app.on_load_preset(app.EMPTY, 1.0, out3[0])
    assert empty[0]["layers"] == [] and "empty" in empty[3]


def list_blocks_by_name():
    return {b.name: b for b in list_blocks()}


def test_dataset_choice_sets_input_and_classes(app_env):
    out = app.on_dataset_change("digits", None, app.default_spec(), 0, None)
    spec = out[3]
    assert spec["input"] == [1, 28, 28] and spec["classes"] == 10
    assert out[2]["visible"] is False
    out = app.on_dataset_change(app.UPLOAD, None, spec, 0, out[0])
    assert out[2]["visible"] is True
    out[0].close()


def test_uploaded_image_folder_zip_trains(tmp_path, app_env):
    import zipfile
    from PIL import Image
    zpath = tmp_path / "pets.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(zpath, "w") as z:
        for cls, colour in (("cats", 40), ("dogs", 220)):
            for i in range(6):
                img = np.clip(rng.normal(colour, 20, (20, 24, 3)), 0, 255).astype(np.uint8)
                path = tmp_path / f"{cls}{i}.png"
                Image.fromarray(img).save(path)
                z.write(path, f"pets/{cls}/{i}.png")
    out = app.on_dataset_change(app.UPLOAD, str(zpath), TINY, 0, None)
    s, spec = out[0], out[3]
    assert spec["input"] == [3, 32, 32] and spec["classes"] == 2
    outs = list(app.on_train(s, spec, app.UPLOAD, str(zpath), 0, 1, 4, "adam", 1e-3, "constant", 0,
                             False, "cpu"))
    assert "completed" in outs[-1][3]
    assert s.run(None).classes == ["cats", "dogs"]
    s.close()


def test_upload_and_save_spec(tmp_path, app_env):
    path = tmp_path / "net.json"
    path.write_text(edit.spec_to_json(TINY))
    out = app.on_upload_spec(str(path), None, None)
    s, spec = out[0], out[1]
    assert spec["layers"] == TINY["layers"]
    s2, saved = app.on_save_spec(spec, s)
    assert saved["visible"] and json.loads(open(saved["value"]).read()) == spec
    with pytest.raises(gr.Error, match="not a .json"):
        app.on_upload_spec(str(tmp_path / "x.txt"), None, s)
    s.close()


# ============================================================================ inspect, compare, export

@pytest.mark.parametrize("view", [v for _, v in app.VIEWS])
def test_every_view_draws_or_says_why_not(trained, view):
    s, rec = trained   # TINY has a Ghost module, SE and CBAM: every view applies
    out = app.on_inspect(s, rec.id, view, {"source": "test", "index": 3}, "")
    fig, top5 = out[1], out[2]
    assert isinstance(fig, go.Figure) and len(fig.data) > 0
    probs = list(top5.values())
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_inspect_with_uploaded_and_drawn_images(trained):
    s, rec = trained
    photo = (np.random.default_rng(0).random((50, 70, 4)) * 255).astype(np.uint8)
    out = app.on_inspect(s, rec.id, "saliency", app.on_upload_image(photo), "")
    assert isinstance(out[1], go.Figure) and out[4].shape[:2] == (128, 128)
    ink = np.zeros((280, 280, 4), np.uint8)
    ink[100:200, 130:150, 3] = 255
    digit = sess.prepare_sketch({"composite": ink}, (1, 28, 28))
    assert digit.shape == (1, 28, 28) and digit[0, 14, 14] > 200 and digit[0, 0, 0] == 0
    assert sess.prepare_sketch({"composite": np.zeros((10, 10, 4), np.uint8)}, (1, 28, 28)) is None
    with pytest.raises(gr.Error, match="sketchpad is empty"):
        app.on_inspect(s, rec.id, "gradcam", {"source": "sketch", "array": None}, "")


def test_wrong_layer_for_a_view_falls_back_to_its_default(trained):
    s, rec = trained
    out = app.on_inspect(s, rec.id, "cbam", {"source": "test", "index": 0}, "layers.0")
    assert "not a cbam layer" in out[3]
    picked = app.on_pick_run(s, rec.id)
    labels = [label for label, _ in picked[2]["choices"]]
    assert any(l.startswith("◆") and "CBAM" in l for l in labels)
    assert any(l.startswith("◇") and "Ghost" in l for l in labels)
    assert len(picked[1]["value"]) == sess.GALLERY_SIZE


def test_tabs_refresh_their_run_pickers(trained):
    s, rec = trained
    assert app.on_refresh_runs(s, None)["value"] == rec.id
    assert app.on_refresh_runs(s, ["gone", rec.id])["value"] == [rec.id]
    assert app.on_refresh_runs(None, None) == gr.skip()


def test_compare_table(trained):
    s, rec = trained
    out = app.on_compare(s, [rec.id])
    fig, rows = out[1], out[2]
    assert isinstance(fig, go.Figure) and rows[0][0] == rec.id
    assert rows[0][4] == f"{rec.start['params']:,}"
    assert "(CBAM)" in rows[0][-1] and "(Grad-CAM)" in rows[0][-1] and "uniform" in rows[0][-1]


@pytest.mark.parametrize("fmt", ["spec", "csv", "safetensors", "py", "onnx"])
def test_exports(trained, fmt):
    s, rec = trained
    out = app.exporter(fmt)(s, rec.id)
    path = out[1]
    assert path.endswith({"spec": ".json", "csv": ".csv", "safetensors": ".safetensors",
                          "py": ".py", "onnx": ".onnx"}[fmt])
    assert str(s.dir) in path
    assert out[2].startswith(f"Wrote {app.FORMAT_LABELS[fmt]}")
    # The spec and the .py say how to take the network to torchrun.
    assert ("torchrun" in out[2]) == (fmt in ("spec", "py"))
    if fmt == "spec":
        assert json.loads(open(path).read()) == rec.spec
        assert f"-m lab train --spec {Path(path).name}" in out[2]


# ============================================================================ launch, ZeroGPU

def test_launch_options_follow_the_environment(tmp_path):
    local = app.launch_options(lim.Limits.from_env({}, gpu=False), env={})
    assert local["server_name"] == "127.0.0.1" and local["server_port"] == 7860
    assert local["max_file_size"] == "20mb"
    assert all(p.endswith("assets") for p in local["allowed_paths"])
    space = app.launch_options(env={"SPACE_ID": "me/convscope", "GRADIO_SERVER_PORT": "7000"})
    assert space["server_name"] == "0.0.0.0" and space["server_port"] == 7000
    named = app.launch_options(env={"GRADIO_SERVER_NAME": "10.0.0.2"})
    assert named["server_name"] == "10.0.0.2"


def test_zerogpu_decorator_is_a_no_op_without_spaces(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)   # import spaces -> ImportError
    f = lambda x: x  # noqa: E731
    assert zerogpu.gpu(60)(f) is f and not zerogpu.on_zerogpu()
    seen = {}

    def fake_gpu(duration):
        seen["duration"] = duration
        return lambda fn: ("wrapped", fn)
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=fake_gpu))
    assert zerogpu.gpu(10_000)(f) == ("wrapped", f) and seen["duration"] == zerogpu.MAX_DURATION_S
    zerogpu.gpu(lambda spec, settings: 42)(f)
    assert seen["duration"]({}, {}) == 42


def test_build_ui_exposes_the_api_without_training_anything():
    demo = app.build_ui()
    names = {fn.api_name for fn in demo.fns.values() if fn.api_name}
    assert {"load_preset", "train", "stop", "inspect", "export_spec", "export_py", "compare"} <= names
    assert threading.active_count() < 50
