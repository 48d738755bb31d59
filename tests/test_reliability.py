"""Reliability and security of the public app: resource limits before training, running
out of memory, Stop / cancel / a closed tab mid-run, a download cut half-way, a full disk
while saving a run, only JSON and safetensors read, and the HTTP surface (no files served
beyond the app's own, upload size enforced, Gradio new enough).

Handler-level tests call the `on_*` functions; the rest go through the app launched by
the `app_server` fixture (gradio_client and plain HTTP to 127.0.0.1).
"""
from __future__ import annotations

import errno
import gzip
import json
import pickle
import re
import threading
import time
import types
from pathlib import Path
from urllib.error import URLError

import gradio as gr
import httpx
import numpy as np
import pytest
from packaging.version import Version

import app
from blocks import edit
from blocks.builder import Network
from blocks.summary import human, summarize
from lab.serve import limits as lim
from lab import runs
from lab.serve import session as sess
from lab.datasets import DatasetError, clear_cache, load_dataset
from presets import load_preset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]

TINY = {"name": "tiny", "input": [3, 32, 32], "classes": 10, "width": 1.0, "layers": [
    {"block": "conv", "params": {"out": 8, "stride": 2}},
    {"block": "se", "params": {"reduction": 2}},
    {"block": "global_avg_pool"},
    {"block": "linear"},
]}
OOM = ("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
       "tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")


def train(spec=TINY, session=None, epochs=1, batch=64, size=256, dataset="shapes"):
    """Every output of the Train button's generator, as the app streams them."""
    return list(app.on_train(session, spec, dataset, None, size, epochs, batch, "adam", 3e-3,
                             "onecycle", 0, False, "cpu"))


def train_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("convscope-train")]


def wait_for(predicate, seconds: float = 60.0, step: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


# ============================================================================ resources

def test_limits_cover_parameters_activations_and_flops_with_figure_and_limit():
    spec = load_preset("ResNet-18 + CBAM", (3, 32, 32), 10, 0.25)
    s = summarize(spec)
    assert (s.params, s.flops) == (708_208, 70_648_192)
    batch = 128
    act_mb = s.activation_bytes * batch / 2**20
    step = 3 * s.flops * batch
    assert lim.step_flops(s, batch) == step == 27_128_905_728

    def limits(**env):
        return lim.Limits.from_env({k: str(v) for k, v in env.items()}, gpu=False)

    # at each figure it passes; just under it, it is refused, naming the figure and the limit
    at = limits(CONVSCOPE_MAX_PARAMS=s.params, CONVSCOPE_MAX_ACTIVATION_MB=act_mb,
                CONVSCOPE_MAX_STEP_GFLOPS=step / 1e9)
    assert lim.check_spec_limits(spec, batch, at).params == s.params
    with pytest.raises(lim.LimitError) as e:
        lim.check_spec_limits(spec, batch, limits(CONVSCOPE_MAX_PARAMS=s.params - 1))
    assert str(e.value).startswith(f"the network has {human(s.params)} parameters; this server "
                                   f"trains at most {human(s.params - 1)} (CONVSCOPE_MAX_PARAMS)")
    with pytest.raises(lim.LimitError) as e:
        lim.check_spec_limits(spec, batch, limits(CONVSCOPE_MAX_ACTIVATION_MB=act_mb - 1))
    assert str(e.value).startswith(f"one batch of 128 needs about {act_mb:,.0f} MB of activations; "
                                   f"this server allows {act_mb - 1:,.0f} MB")
    with pytest.raises(lim.LimitError) as e:
        lim.check_spec_limits(spec, batch, limits(CONVSCOPE_MAX_STEP_GFLOPS=20))
    assert str(e.value).startswith("one training step (batch of 128) needs about 27.13GFLOPs; "
                                   "this server allows 20.00GFLOPs a step (CONVSCOPE_MAX_STEP_GFLOPS)")
    # the defaults: every preset at the app's width and batch trains on a CPU server
    cpu, gpu = lim.Limits.from_env({}, gpu=False), lim.Limits.from_env({}, gpu=True)
    assert (cpu.max_step_gflops, gpu.max_step_gflops) == (1000, 50000)
    assert limits(CONVSCOPE_MAX_STEP_GFLOPS="-3").max_step_gflops == 1000


@pytest.mark.parametrize("env, words", [
    ({"CONVSCOPE_MAX_PARAMS": "100"}, r"has \d+ parameters; this server trains at most 100 \("),
    ({"CONVSCOPE_MAX_ACTIVATION_MB": "1"}, r"batch of 64 needs about \d+ MB of activations; this server allows 1 MB"),
    ({"CONVSCOPE_MAX_STEP_GFLOPS": "0.001"}, r"needs about [\d.]+MFLOPs; this server allows 1\.00MFLOPs a step"),
])
def test_the_app_refuses_before_building_or_training(env, words, app_env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    built = []
    import lab.train.trainer
    real_init = lab.train.trainer.Trainer.__init__
    monkeypatch.setattr(lab.train.trainer.Trainer, "__init__",
                        lambda self, *a, **k: built.append(1) or real_init(self, *a, **k))
    before = len(train_threads())
    gen = app.on_train(None, TINY, "shapes", None, 256, 1, 64, "adam", 3e-3, "onecycle", 0,
                       False, "cpu")
    first = next(gen)
    s = first[0]
    with pytest.raises(gr.Error, match=words) as e:
        list(gen)
    assert "\n" not in e.value.message
    assert built == [] and not s.training and len(train_threads()) == before and not s.runs
    s.close()


def test_out_of_memory_ends_the_run_cleanly_and_the_app_keeps_serving(app_env, monkeypatch):
    calls = []
    real_forward = Network.forward

    def forward(self, x):
        calls.append(x.shape[0])
        if len(calls) >= 3:                      # two batches train, the third does not fit
            raise RuntimeError(OOM)
        return real_forward(self, x)

    monkeypatch.setattr(Network, "forward", forward)
    threads_before = threading.active_count()
    outs = train(epochs=2)
    s, status = outs[0][0], outs[-1][3]
    assert status.startswith("⚠ Training failed: ran out of memory at batch size 64"), status
    assert "try a smaller batch size or width" in status
    assert len(calls) == 3 and not s.runs and not s.training
    assert outs[-1][-2]["interactive"] is True          # Start is enabled again
    assert wait_for(lambda: not train_threads(), 10)
    assert threading.active_count() <= threads_before
    monkeypatch.setattr(Network, "forward", real_forward)
    outs = train(session=s)                              # the same session trains again
    assert "completed" in outs[-1][3] and list(s.runs) == ["run-1"]
    s.close()


# ============================================================================ faults

def test_disk_full_while_saving_a_run(app_env, monkeypatch):
    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)        # a half-written weights file ...
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(runs, "save_file", full_disk)
    warnings = []
    monkeypatch.setattr(gr, "Warning", lambda msg, *a, **k: warnings.append(msg))
    outs = train()
    s, status = outs[0][0], outs[-1][3]
    assert "run-1 completed" in status
    assert "run-1 could not be saved to disk (the server&#x27;s disk is full)" in status
    assert warnings == ["run-1 could not be saved to disk (the server's disk is full); it is kept "
                        "in memory for this session, so export what you need"]
    runs_dir = s.dir / "runs"
    assert list(runs_dir.iterdir()) == []               # ... and nothing of it is left
    rec = s.run("run-1")
    assert rec.path is None and rec.status == "completed"
    # the run is usable, and the app keeps serving
    out = app.on_inspect(s, "run-1", "gradcam", {"source": "test", "index": 0}, "")
    assert len(out[2]) == 5
    import lab.export.formats
    monkeypatch.setattr(lab.export.formats, "export_spec", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(gr.Error) as e:
        app.exporter("spec")(s, "run-1")
    assert e.value.message == "The server's disk is full, so nothing could be written; try again later."
    monkeypatch.undo()
    assert "completed" in train(session=s)[-1][3]
    assert [p.name.startswith(".tmp-") for p in runs_dir.iterdir()] == [False]
    s.close()


@pytest.fixture
def client_factory(app_server, monkeypatch):
    """gradio_client sessions whose closing the server notices within a second."""
    from gradio_client import Client
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")
    made = []

    def make():
        c = Client(app_server, verbose=False)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


def _session_of(client) -> sess.Session:
    found = [s for s in sess.open_sessions() if s.key == client.session_hash]
    assert len(found) == 1, found
    return found[0]


def _start_long_run(client):
    client.predict(edit.spec_to_json(TINY), None, api_name="/apply_json")
    job = client.submit("shapes", None, 512, 20, 16, "adam", 1e-3, "constant", 0, False, "cpu",
                        api_name="/train")
    assert wait_for(lambda: any("step" in str(o[0]) for o in job.outputs()), 120), job.outputs()
    return job


def test_a_cancelled_request_stops_the_run_and_keeps_it(client_factory):
    client = client_factory()
    job = _start_long_run(client)
    s = _session_of(client)
    worker = [t for t in train_threads() if t.name == f"convscope-train-{s.key[:8]}"]
    assert s.training and len(worker) == 1
    job.cancel()                                          # what Stop's `cancels=` does, too
    assert wait_for(lambda: not s.training, 30)
    worker[0].join(10)
    assert not worker[0].is_alive()
    rec = s.run(None)
    assert rec.status == "stopped" and 0 < rec.end["epochs"] < 20
    path, note = client.predict(None, api_name="/export_spec")   # the run is there to use
    assert json.loads(Path(path).read_text())["name"] == "tiny" and "Wrote spec" in note


def test_a_tab_closed_mid_run_stops_it_and_releases_the_session(client_factory, app_env):
    client = client_factory()
    _start_long_run(client)
    s = _session_of(client)
    folder = Path(app_env["CONVSCOPE_SESSION_ROOT"]) / f"s-{s.key}"
    worker = [t for t in train_threads() if t.name == f"convscope-train-{s.key[:8]}"]
    assert folder.is_dir() and len(worker) == 1
    client.close()                                        # the browser goes away
    assert wait_for(lambda: s not in sess.open_sessions(), 30)   # closed, folder removed
    worker[0].join(30)
    assert not worker[0].is_alive() and not s.training
    assert not s.runs and not folder.exists()
    assert not any(t.name == f"convscope-train-{s.key[:8]}" for t in train_threads())


def test_stop_button_through_the_client(client_factory):
    client = client_factory()
    job = _start_long_run(client)
    out = client.predict(api_name="/stop")
    assert wait_for(job.done, 30)
    s = _session_of(client)
    assert wait_for(lambda: not s.training, 30)
    assert s.run(None).status == "stopped"
    assert "stopped" in out[2] or "stopping" in out[2]


# ---------------------------------------------------------------- downloads cut short

def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) \
        + arr.astype(np.uint8).tobytes()


def _mnist_files(n_train=20, n_test=10) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {"train-images-idx3-ubyte": _idx(rng.integers(0, 256, (n_train, 28, 28))),
            "train-labels-idx1-ubyte": _idx(rng.integers(0, 10, n_train)),
            "t10k-images-idx3-ubyte": _idx(rng.integers(0, 256, (n_test, 28, 28))),
            "t10k-labels-idx1-ubyte": _idx(rng.integers(0, 10, n_test))}


@pytest.fixture
def mirror(monkeypatch):
    """torchvision's downloader, served from memory (`files`) or failing as offline."""
    import torchvision.datasets.mnist as tv_mnist
    state = {"files": None, "asked": []}

    def download(url, download_root, filename=None, md5=None, **kw):
        state["asked"].append(filename)
        if state["files"] is None:
            raise URLError("[Errno -3] Temporary failure in name resolution")
        data = state["files"][filename[:-3]]
        Path(download_root, filename).write_bytes(gzip.compress(data))
        Path(download_root, filename[:-3]).write_bytes(data)

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", download)
    clear_cache()
    yield state
    clear_cache()


def test_a_download_cut_half_way_is_reported_or_fetched_again(tmp_path, mirror):
    files = _mnist_files()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, data in files.items():
        (raw / (name + ".gz")).write_bytes(gzip.compress(data))
    cut = raw / "train-images-idx3-ubyte.gz"
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])   # the connection dropped
    # downloads off: reported, naming the file
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", tmp_path, download=False)
    msg = str(e.value)
    assert "\n" not in msg and str(cut) in msg and "truncated or corrupt" in msg
    assert mirror["asked"] == [] and not (raw / "train-images-idx3-ubyte").exists()
    # downloads on but offline: the partial file is deleted, the failed fetch is named
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", tmp_path, download=True)
    msg = str(e.value)
    assert msg.startswith(f"train-images-idx3-ubyte.gz in {raw}/ was truncated or corrupt "
                          f"(deleted) and could not be downloaded again (offline?"), msg
    assert mirror["asked"] and not cut.exists()
    # downloads on, and the mirror answers: fetched again, and the data are whole
    cut.write_bytes(gzip.compress(files["train-images-idx3-ubyte"])[:500])
    mirror["files"] = files
    ds = load_dataset("mnist", tmp_path, download=True)
    assert ds.train_x.shape == (20, 1, 28, 28)
    assert ds.train_x[:, 0].numpy().tobytes() == files["train-images-idx3-ubyte"][16:]
    # an uncompressed file cut short is fetched again as well
    clear_cache()
    part = raw / "t10k-images-idx3-ubyte"
    part.write_bytes(part.read_bytes()[:1000])
    assert load_dataset("mnist", tmp_path, download=True).test_x.shape == (10, 1, 28, 28)


def test_a_cut_download_in_the_app_is_one_line(tmp_path, app_env, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, data in _mnist_files().items():
        (raw / name).write_bytes(data[: len(data) // 2] if name.startswith("t10k-images") else data)
    monkeypatch.setenv("CONVSCOPE_DATA_ROOT", str(tmp_path))     # app_env: downloads off
    clear_cache()
    spec = edit.set_input(TINY, (1, 28, 28), 10)
    with pytest.raises(gr.Error) as e:
        list(app.on_train(None, spec, "mnist", None, 0, 1, 8, "adam", 1e-3, "constant", 0,
                          False, "cpu"))
    msg = e.value.message
    assert "\n" not in msg and "t10k-images-idx3-ubyte is truncated or corrupt" in msg
    assert app.on_load_preset("LeNet-5", 1.0, None)[3].startswith("✓")   # still serving


# ============================================================================ checkpoints

class _Exploit:
    """Unpickling this creates a file: proof that something executed pickle."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_the_app_accepts_no_pickle_uploads(monkeypatch):
    """Uploads are a spec (.json), an image folder or a run (.zip), pictures and, for the
    pretrained photo view, weights: on a public host only as .safetensors, so no pickle can
    reach the app from a visitor. The one torch.load in the code (a local .pth the user
    names) runs with weights_only=True."""
    from ui import photo
    monkeypatch.setenv("CONVSCOPE_PUBLIC", "1")
    demo = app.build_ui()
    kinds = set()
    for block in demo.blocks.values():
        if isinstance(block, (gr.File, gr.UploadButton)) and getattr(block, "interactive", True) \
                is not False:
            kinds.update(block.file_types or ["*"])
    assert kinds == {".json", ".zip", ".safetensors"}
    with pytest.raises(gr.Error, match="safetensors only"):
        photo.weights_source("upload", None, {"path": "/tmp/x/resnet18.pth"})
    monkeypatch.setenv("CONVSCOPE_PUBLIC", "0")
    assert photo.weights_source("upload", None, {"path": "/tmp/x/resnet18.pth"}) == "/tmp/x/resnet18.pth"
    sources = [p for p in [ROOT / "app.py", *ROOT.glob("ui/**/*.py"), *ROOT.glob("lab/**/*.py"),
                           *ROOT.glob("blocks/**/*.py"), *ROOT.glob("visual/**/*.py")]]
    code = "\n".join(p.read_text() for p in sources)
    assert re.findall(r"pickle\.loads?\(|allow_pickle=True", code) == []
    loads = re.findall(r"torch\.load\([^)]*\)", code)
    assert loads and all("weights_only=True" in call for call in loads), loads


def test_a_pickle_posing_as_cifar_is_never_unpickled(tmp_path):
    """torchvision's CIFAR-10 batches are pickles: the loader checks each file's MD5 first,
    so only the genuine files are ever unpickled."""
    marker = tmp_path / "executed"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    for name in names:
        (folder / name).write_bytes(pickle.dumps(_Exploit(marker)))
    clear_cache()
    for download in (False, True):
        with pytest.raises(DatasetError, match="corrupt or partial|could not be downloaded"):
            import torchvision.datasets.cifar as tv_cifar
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(tv_cifar, "download_and_extract_archive",
                           lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))
                load_dataset("cifar10", tmp_path, download=download)
    assert not marker.exists()


def test_a_pickle_posing_as_run_weights_is_refused_unexecuted(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    marker = tmp_path / "executed"
    for name, data in {"spec.json": TINY, "settings.json": {}, "dataset.json": {}}.items():
        (model_dir / name).write_text(json.dumps(data))
    (model_dir / "metrics.jsonl").write_text("")
    (model_dir / "weights.safetensors").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(runs.RunError, match="not a valid safetensors file"):
        runs.load_run(model_dir)
    assert not marker.exists()


# ============================================================================ the HTTP surface

def test_gradio_is_new_enough_and_pinned():
    assert Version(gr.__version__) >= Version("6.20")
    pins = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()
            if l.strip().startswith("gradio")]
    assert len(pins) == 1
    low = re.search(r">=\s*([\d.]+)", pins[0])
    assert low and Version(low.group(1)) >= Version("6.20"), pins


def test_only_the_apps_own_files_are_served(app_server, app_env, tmp_path):
    base = app_server.rstrip("/")
    secret = Path(app_env["CONVSCOPE_SESSION_ROOT"]) / "s-someone-else" / "runs" / "secret.json"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text('{"secret": "another visitor\'s run"}')
    here = tmp_path / "note.txt"
    here.write_text("a file beside the server")
    targets = ["/etc/passwd", "/proc/self/environ", str(ROOT / "app.py"), str(secret), str(here),
               str(ROOT / "requirements.txt")]
    paths = []
    for t in targets:
        paths += [f"/gradio_api/file={t}", f"/gradio_api/file/{t.lstrip('/')}",
                  f"/gradio_api/file={t.replace('/', '%2F')}"]
    paths += ["/gradio_api/file=../../../../../../etc/passwd",
              "/gradio_api/file=..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
              "/gradio_api/file=/etc/../etc/passwd",
              "/file=/etc/passwd", "/file/etc/passwd",
              "/static/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
              "/assets/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
              "/gradio_api/file=http://127.0.0.1:1/etc/passwd",
              f"/gradio_api/proxy={base}/gradio_api/file=/etc/passwd"]
    refused = 0
    with httpx.Client(timeout=30) as h:
        for p in paths:
            r = h.get(base + p)
            body = r.text
            assert "root:x:0:0" not in body and "another visitor" not in body, p
            assert "a file beside the server" not in body and "gradio>=" not in body, p
            assert "CONVSCOPE_SESSION_ROOT" not in body, p
            assert r.status_code in (400, 403, 404), (p, r.status_code)
            refused += 1
        # the control: the app's own assets are served
        shot = sorted((ROOT / "assets").glob("*.png"))[0]
        r = h.get(f"{base}/gradio_api/file={shot}")
        assert r.status_code == 200 and r.content == shot.read_bytes()
    assert refused == len(paths) >= 25


def test_uploads_over_the_limit_are_refused_on_every_route(app_server):
    base = app_server.rstrip("/")
    limit = lim.Limits.from_env().max_upload_bytes
    assert limit == 20 * 2**20
    big = b"\0" * (limit + 1024)
    with httpx.Client(timeout=120) as h:
        config = h.get(f"{base}/config").json()
        assert config["max_file_size"] == limit
        r = h.post(f"{base}/gradio_api/upload", files={"files": ("big.zip", big)})
        assert r.status_code == 413, (r.status_code, r.text[:200])
        r = h.post(f"{base}/gradio_api/component_server",
                   data={"component_id": "1", "session_hash": "x", "fn_name": "f", "data": "{}"},
                   files={"files": ("big.bin", big)})
        assert r.status_code == 413, (r.status_code, r.text[:200])
        ok = h.post(f"{base}/gradio_api/upload", files={"files": ("small.zip", b"PK" + b"\0" * 1000)})
        assert ok.status_code == 200 and len(ok.json()) == 1
