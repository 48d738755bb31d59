"""Untrusted uploads through the app: images, spec files and image-folder zips.

Every bad file is refused (or its bad parts skipped) with one line naming the problem, the
app keeps serving, and nothing is written outside the session's folder, which goes when
the session ends. Driven through the `on_*` handlers, and the image, spec and zip uploads
also through gradio_client against the launched app. The nasty specs are a handful of
the fuzzer's (tests/test_spec_fuzz.py) examples, fed to the JSON box, the spec upload and
`python -m lab summary --spec`.
"""
from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import sys
import time
import types
import zipfile
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import app
from ui.common import md_text
from lab.serve import session as sess
from lab.cli import main as lab_main
from lab.serve.session import Session

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]

TINY = {"name": "tiny", "input": [3, 32, 32], "classes": 2, "width": 1.0, "layers": [
    {"block": "conv", "params": {"out": 4, "stride": 2}},
    {"block": "global_avg_pool"},
    {"block": "linear"},
]}


def value(out):
    """A component's value in a gradio_client reply (updates come as dicts)."""
    return out.get("value") if isinstance(out, dict) else out


def one_line(msg: str) -> str:
    msg = str(msg)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ============================================================================ files

def png_bytes(w: int = 40, h: int = 30, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=90)
    return buf.getvalue()


def png_declaring(w: int, h: int) -> bytes:
    """A valid PNG header claiming w x h pixels over a few bytes of data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (3 * 64 + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BAD_IMAGES = {
    # name: (bytes, words the one-line message must hold)
    "notes.png": (b"these are my notes, not a picture\n" * 20, "not an image"),
    "page.jpg": (b"<!doctype html><html><body>404</body></html>", "not an image"),
    "empty.png": (b"", "empty (0 bytes)"),
    "half.png": (png_bytes(200, 200)[:20_000], "truncated or corrupt"),
    "half.jpg": (jpeg_bytes(400, 300)[:3000], "truncated or corrupt"),
    # 900 M pixels: Pillow's own guard refuses it when the header is read ...
    "bomb.png": (png_declaring(30000, 30000), "900,000,000 pixels"),
    # ... 64 M pixels is under Pillow's guard but over ours, refused before decoding
    "big.png": (png_declaring(8000, 8000), "8000×8000 = 64,000,000 pixels"),
}


@pytest.fixture
def bad_image_files(tmp_path):
    paths = {}
    for name, (data, _) in BAD_IMAGES.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


def build_zip(path: Path, files: dict[str, bytes], links: dict[str, str] = (),
              compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in files.items():
            z.writestr(name, data)
        for name, target in dict(links).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return path


def class_files(n: int = 4, classes=("cats", "dogs"), top: str = "pets/") -> dict[str, bytes]:
    return {f"{top}{c}/{i}.png": png_bytes(24, 20, seed=10 * k + i)
            for k, c in enumerate(classes) for i in range(n)}


def many_entries_zip(path: Path, n: int) -> Path:
    """A stored zip of n one-byte members, written directly (zipfile takes seconds for 100k)."""
    local, central, offset = [], [], 0
    crc = zlib.crc32(b"x")
    for i in range(n):
        name = f"c{i % 2}/{i}.png".encode()
        head = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, 1, 1, len(name), 0)
        local.append(head + name + b"x")
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc, 1, 1,
                                   len(name), 0, 0, 0, 0, 0, offset) + name)
        offset += len(head) + len(name) + 1
    cd = b"".join(central)
    # n > 65535 needs the zip64 end records
    zip64_end = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(cd), offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, offset + len(cd), 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(b"".join(local) + cd + zip64_end + locator + end)
    return path


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# ============================================================================ images

@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_are_refused_with_one_line(bad_image_files, name):
    words = BAD_IMAGES[name][1]
    path = bad_image_files[name]
    payload = {"path": str(path), "orig_name": name, "size": path.stat().st_size}
    with pytest.raises(gr.Error) as e:
        app.on_upload_image(payload)
    msg = one_line(e.value.message)
    assert msg.startswith(name) and words in msg, msg


def test_a_good_upload_is_decoded_small_and_composited(tmp_path):
    path = tmp_path / "photo.png"
    rgba = np.zeros((300, 600, 4), np.uint8)
    rgba[:, :300] = (255, 0, 0, 255)                 # left half opaque red, right transparent
    Image.fromarray(rgba, "RGBA").save(path)
    out = app.on_upload_image({"path": str(path), "orig_name": "photo.png"})
    a = out["array"]
    assert out["source"] == "upload" and a.dtype == np.uint8
    assert a.shape == (256, 512, 3)                  # kept at most 512 a side, aspect kept
    assert tuple(a[10, 10]) == (255, 0, 0) and tuple(a[10, 500]) == (255, 255, 255)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(np.full((2000, 1000), 77, np.uint8), "L").save(grey, quality=95)
    g = app.on_upload_image(str(grey))["array"]
    assert g.ndim == 2 and max(g.shape) <= 512 and abs(int(g.mean()) - 77) <= 2
    assert app.on_upload_image(None) is None


def test_image_uploads_through_the_client(app_server, bad_image_files, tmp_path):
    """The image upload end-to-end: bad files are refused, a good one is what Inspect shows."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    client = Client(app_server, verbose=False)
    try:
        refused = 0
        for name in ("notes.png", "half.png", "bomb.png", "big.png"):
            with pytest.raises(AppError) as e:
                client.predict(handle_file(str(bad_image_files[name])), api_name="/upload_image")
            assert BAD_IMAGES[name][1] in one_line(e.value), str(e.value)
            refused += 1
        assert refused == 4
        # a run to inspect, trained on a small uploaded image folder
        zpath = build_zip(tmp_path / "pets.zip", class_files(6))
        note = value(client.predict(app.UPLOAD, handle_file(str(zpath)), None,
                                    api_name="/set_dataset")[0])
        assert "Input 3×32×32, 2 classes" in note
        client.predict(edit_json(TINY), None, api_name="/apply_json")
        final = client.predict(app.UPLOAD, handle_file(str(zpath)), 0, 1, 4, "adam", 1e-3,
                               "constant", 0, False, "cpu", api_name="/train")
        assert "completed" in final[2], final[2]
        good = tmp_path / "mine.png"
        good.write_bytes(png_bytes(90, 60))
        client.predict(handle_file(str(good)), api_name="/upload_image")
        _, top5, note, preview = client.predict(final[3]["value"], "saliency", "",
                                                api_name="/inspect")
        assert "Prediction for uploaded image" in note
        assert {c["label"] for c in top5["confidences"]} == {"cats", "dogs"}
        assert np.asarray(Image.open(preview)).shape[:2] == (128, 128)
    finally:
        client.close()


def edit_json(spec: dict) -> str:
    from blocks import edit
    return edit.spec_to_json(spec)


# ============================================================================ spec files

NASTY_SPECS = {
    # the fuzzer's explicit examples, and JSON's own traps
    "10k layers": (json.dumps({"input": [3, 32, 32], "layers": [{"block": "relu"}] * 10_000}),
                   "at most 1000 are allowed"),
    "401-digit out": (json.dumps({"layers": [{"block": "conv", "params": {"out": 10 ** 400}}]}),
                      "about 401 digits"),
    "3000 deep": ("[" * 3000 + "1" + "]" * 3000, "nested 3000 levels deep"),
    "5000-digit number": ('{"classes": ' + "9" * 5000 + ', "layers": []}', "more than 4,300 digits"),
    "NaN width": ('{"width": NaN, "layers": [{"block": "relu"}]}', "got nan"),
    "lone surrogate": ('{"name": "\\ud800x", "layers": [{"block": "conv", "params": {"out": 4}},'
                       ' {"block": "global_avg_pool"}, {"block": "linear"}]}', "lone surrogate"),
    "a list": ("[1, 2, 3]", "must be a JSON object"),
    "cut short": ('{"layers": [{"block": "conv", "par', "not valid JSON"),
}
# These parse but cannot be built: the app shows them with the problem at the layer, the
# CLI refuses them; neither crashes.
UNBUILDABLE = {
    "1x1 input, 3x3 pool": {"input": [3, 1, 1], "layers": [{"block": "maxpool", "params": {"kernel": 3}}]},
    "dense x100": {"layers": [{"block": "dense_block", "params": {"layers": 128}, "repeat": 100}]},
    "inception x1000": {"width": 4, "layers": [{"block": "inception", "repeat": 100}] * 10},
}


@pytest.mark.parametrize("case", list(NASTY_SPECS))
def test_nasty_specs_in_the_json_box_and_the_upload_are_refused(case, tmp_path, app_env):
    text, words = NASTY_SPECS[case]
    with pytest.raises(gr.Error) as e:
        app.on_apply_json(text, None, 0)
    assert words in one_line(e.value.message)
    path = tmp_path / "spec.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(gr.Error) as e:
        app.on_upload_spec(str(path), None, None)
    assert words in one_line(e.value.message)


@pytest.mark.parametrize("case", list(UNBUILDABLE))
def test_unbuildable_specs_are_shown_with_the_problem(case, tmp_path, app_env):
    text = json.dumps(UNBUILDABLE[case])
    for out in (app.on_apply_json(text, None, 0),
                app.on_upload_spec(str(_write(tmp_path / "s.json", text)), None, None)[1:]):
        spec, _, _, status = out[:4]
        assert spec["layers"] == UNBUILDABLE[case]["layers"]
        assert "layer 0" in status and not status.startswith("✓"), status


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def test_bad_spec_files_are_refused(tmp_path, app_env, monkeypatch):
    cases = {
        "net.txt": (b'{"layers": []}', "is not a .json spec file"),
        "binary.json": (bytes(range(256)) * 4, "not UTF-8"),
        "big.json": (b'{"layers": [' + b'{"block": "relu"}, ' * 20_000 + b'{"block": "relu"}]}',
                     "big.json is larger than 256 KiB"),
    }
    for name, (data, words) in cases.items():
        with pytest.raises(gr.Error) as e:
            app.on_upload_spec(str(_write_bytes(tmp_path / name, data)), None, None)
        assert words in one_line(e.value.message), (name, e.value.message)
    # over the server's upload limit: refused before it is read
    monkeypatch.setenv("CONVSCOPE_MAX_UPLOAD_MB", "1")
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(3 * 2**20)
    with pytest.raises(gr.Error) as e:
        app.on_upload_spec(str(huge), None, None)
    assert "the file is 3.0 MB; uploads are limited to 1 MB" in one_line(e.value.message)


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_the_cli_summary_refuses_every_nasty_spec_in_one_line(tmp_path, capsys):
    texts = {k: t for k, (t, _) in NASTY_SPECS.items()}
    texts.update({k: json.dumps(s) for k, s in UNBUILDABLE.items()})
    texts["6 MB"] = '{"layers": [' + '{"block": "relu"}, ' * 330_000 + '{"block": "relu"}]}'
    for case, text in texts.items():
        path = _write(tmp_path / "spec.json", text)
        code = lab_main(["summary", "--spec", str(path)])
        _, err = capsys.readouterr()
        assert code == 2, case
        assert err.startswith("error: ") and err.count("\n") == 1, (case, err)
    # and as a user runs it, for the deepest and the largest
    for case in ("3000 deep", "10k layers"):
        path = _write(tmp_path / "spec.json", texts[case])
        r = subprocess.run([sys.executable, "-m", "lab", "summary", "--spec", str(path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr[-2000:]
        assert NASTY_SPECS[case][1] in r.stderr


def test_spec_uploads_through_the_client(app_server, tmp_path):
    from gradio_client import Client, handle_file
    client = Client(app_server, verbose=False)
    try:
        for case in ("3000 deep", "lone surrogate", "10k layers"):
            # an expected error leaves the outputs as they were and says why in the status
            out = client.predict(handle_file(str(_write(tmp_path / "s.json", NASTY_SPECS[case][0]))),
                                 api_name="/upload_spec")
            assert out[0] == out[1] == {"__type__": "update"}
            assert out[2].startswith("⚠") and NASTY_SPECS[case][1] in out[2].replace("\\", "")
        out = client.predict(handle_file(str(_write(tmp_path / "ok.json", edit_json(TINY)))),
                             api_name="/upload_spec")
        assert json.loads(out[0])["layers"] == TINY["layers"]
    finally:
        client.close()


# ============================================================================ zips

@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    d = tmp_path_factory.mktemp("zips")
    files = class_files(4)
    unsafe = {"../evil.png": png_bytes(), "pets/cats/../../../evil2.png": png_bytes(),
              "/tmp/convscope-abs-evil.png": png_bytes()}
    bomb = dict(files)
    bomb["pets/cats/huge.bmp"] = b"\0" * (30 * 2**20)
    return {
        "traversal": build_zip(d / "traversal.zip", {**files, **unsafe},
                               links={"pets/dogs/passwd.png": "/etc/passwd",
                                      "pets/cats/up.png": "../../../../../etc/shadow"}),
        "bomb": build_zip(d / "bomb.zip", bomb),
        "many": many_entries_zip(d / "many.zip", 100_000),
        "flat": build_zip(d / "flat.zip", {"a.png": png_bytes(), "b.png": png_bytes(seed=1)}),
        "one class": build_zip(d / "one.zip", class_files(3, classes=("cats",))),
        "not a zip": _write_bytes(d / "fake.zip", b"PK\x03\x04 but then nothing of a zip" * 10),
        "empty": _write_bytes(d / "empty.zip", b""),
        "only junk": build_zip(d / "junk.zip", {"pets/cats/a.txt": b"x", "pets/dogs/b.txt": b"y"}),
    }


ZIP_MESSAGES = {
    "bomb": "looks like a zip bomb",
    "many": "the zip holds 100,000 entries, more than the limit of 50,000",
    "flat": "no class folders in flat.zip",
    "one class": "only one class folder ('cats')",
    "not a zip": "not a readable zip file",
    "empty": "not a readable zip file",
    "only junk": "has no images (1 files there, none a readable image)",
}


@pytest.mark.parametrize("case", list(ZIP_MESSAGES))
def test_bad_zips_are_refused_with_one_line(zips, case, app_env):
    out = app.on_dataset_change(app.UPLOAD, str(zips[case]), TINY, 0, None)
    s, note = out[0], out[1]["value"]
    words = ZIP_MESSAGES[case]
    assert f"⚠ " in note and md_text(words) in note, note
    assert out[3] == TINY                      # the network is left as it was
    with pytest.raises(gr.Error) as e:         # and training on it is refused the same way
        list(app.on_train(s, TINY, app.UPLOAD, str(zips[case]), 0, 1, 4, "adam", 1e-3,
                          "constant", 0, False, "cpu"))
    assert words in one_line(e.value.message)
    assert not s.training
    s.close()


def test_not_a_zip_and_over_the_limit(tmp_path, app_env, monkeypatch):
    rar = _write_bytes(tmp_path / "pets.rar", b"Rar!\x1a\x07\x00")
    out = app.on_dataset_change(app.UPLOAD, str(rar), TINY, 0, None)
    assert "⚠ The upload must be a .zip of an image folder" in out[1]["value"]
    with pytest.raises(gr.Error, match=r"must be a \.zip"):
        list(app.on_train(out[0], TINY, app.UPLOAD, str(rar), 0, 1, 4, "adam", 1e-3, "constant",
                          0, False, "cpu"))
    out[0].close()
    monkeypatch.setenv("CONVSCOPE_MAX_UPLOAD_MB", "0.5")
    big = build_zip(tmp_path / "big.zip", {f"pets/{c}/{i}.png": png_bytes(200, 200, seed=i)
                                          for c in ("a", "b") for i in range(10)},
                    compression=zipfile.ZIP_STORED)
    assert big.stat().st_size > 2**19
    out = app.on_dataset_change(app.UPLOAD, str(big), TINY, 0, None)
    assert "uploads are limited to 0.5 MB" in out[1]["value"]
    out[0].close()


def test_unsafe_members_are_skipped_said_and_never_written(zips, tmp_path, app_env,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)                 # where "../evil.png" would land, relatively
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    root = Path(app_env["CONVSCOPE_SESSION_ROOT"])
    before_root, before_tmp = tree(root), tree(tmp_path)
    out = app.on_dataset_change(app.UPLOAD, str(zips["traversal"]), TINY, 0, None)
    s, note = out[0], out[1]["value"]
    assert "Input 3×32×32, 2 classes" in note
    assert md_text("Skipped 5 unsafe entries (absolute paths, '..' or links)") in note
    outs = list(app.on_train(s, out[3], app.UPLOAD, str(zips["traversal"]), 0, 1, 4, "adam",
                             1e-3, "constant", 0, False, "cpu"))
    assert "completed" in outs[-1][3]
    rec = s.run(None)
    assert rec.classes == ["cats", "dogs"] and rec.dataset_info["train_size"] + \
        rec.dataset_info["test_size"] == 8
    for p in (tmp_path / "evil.png", tmp_path / "evil2.png", tmp_path.parent / "evil.png",
              Path("/tmp/convscope-abs-evil.png"), root / "evil.png", root.parent / "evil.png"):
        assert not p.exists(), p
    assert tree(tmp_path) == before_tmp
    new = tree(root) - before_root               # everything the app wrote is in s.dir
    assert new and all(p.startswith(f"s-{s.key}") for p in new), new
    app.on_unload(types.SimpleNamespace(session_hash=s.key))    # the tab is closed
    assert s.closed and not s.runs
    assert not (root / f"s-{s.key}").exists()
    assert tree(root) == before_root


def test_zip_uploads_through_the_client(app_server, zips, app_env, monkeypatch):
    from gradio_client import Client, handle_file
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")   # a closed client is noticed soon
    client = Client(app_server, verbose=False)
    try:
        for case in ("bomb", "many", "flat"):
            note = value(client.predict(app.UPLOAD, handle_file(str(zips[case])), None,
                                        api_name="/set_dataset")[0])
            assert "⚠" in note and md_text(ZIP_MESSAGES[case]) in note, note
        note = value(client.predict(app.UPLOAD, handle_file(str(zips["traversal"])), None,
                                    api_name="/set_dataset")[0])
        assert "2 classes" in note and "Skipped 5 unsafe entries" in note.replace("\\", "")
        assert not Path("/tmp/convscope-abs-evil.png").exists()
        key = client.session_hash
        root = Path(app_env["CONVSCOPE_SESSION_ROOT"])
        assert [s.key for s in sess.open_sessions()].count(key) == 1
    finally:
        client.close()
    # the client went away: its session is closed and its folder removed
    deadline = time.monotonic() + 60
    while any(s.key == key for s in sess.open_sessions()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(s.key == key for s in sess.open_sessions())
    assert not (root / f"s-{key}").exists()


def test_the_image_handler_only_ever_sees_uploaded_files(app_server, monkeypatch):
    """The image upload skips Gradio's preprocessing (the handler decodes the file itself),
    so check that a payload naming a server file is still refused before the handler."""
    seen = []
    real = sess.read_image_file
    monkeypatch.setattr(sess, "read_image_file", lambda path, **kw: seen.append(str(path)) or
                        real(path, **kw))
    base = app_server.rstrip("/")
    import httpx
    with httpx.Client(timeout=60) as h:
        for target in ("/etc/passwd", str(ROOT / "assets" / "screenshot-build.png")):
            r = h.post(f"{base}/gradio_api/call/upload_image",
                       json={"data": [{"path": target, "meta": {"_type": "gradio.FileData"}}]})
            assert r.status_code == 200, r.text
            event = r.json()["event_id"]
            stream = h.get(f"{base}/gradio_api/call/upload_image/{event}").text
            assert "event: error" in stream and "root:x:0:0" not in stream, stream[:500]
        assert seen == []
        # the control: the same call with a file that was uploaded reaches the handler
        up = h.post(f"{base}/gradio_api/upload", files={"files": ("mine.png", png_bytes())})
        uploaded = up.json()[0]
        r = h.post(f"{base}/gradio_api/call/upload_image",
                   json={"data": [{"path": uploaded, "orig_name": "mine.png",
                                   "meta": {"_type": "gradio.FileData"}}]})
        stream = h.get(f"{base}/gradio_api/call/upload_image/{r.json()['event_id']}").text
        assert "event: complete" in stream, stream[:500]
    assert seen == [uploaded]
