"""lab.datasets: the procedural shapes, sklearn digits, torchvision sets from fake files, and image folders/zips.

Nothing here touches the network: torchvision's downloader is replaced by one that fails
the way an offline machine does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from lab import safezip
from lab.data.base import stratified_split, subsample
from lab.data.shapes import generate_shapes
from lab.datasets import DATASETS, Dataset, DatasetError, ZipLimits, clear_cache, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg, msg
    return msg


@pytest.fixture(scope="module")
def shapes() -> Dataset:
    return load_dataset("shapes")


# ============================================================================ shapes


def test_shapes_default_layout(shapes):
    ds = shapes
    assert ds.name == "shapes" and len(ds.classes) >= 8 and len(set(ds.classes)) == len(ds.classes)
    assert ds.input_shape == (3, 32, 32)
    assert ds.train_x.shape == (8000, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (2000, 3, 32, 32) and ds.test_x.dtype == torch.uint8
    assert ds.train_y.dtype == torch.int64 and ds.train_y.shape == (8000,)
    assert ds.test_masks.shape == (2000, 32, 32) and ds.test_masks.dtype == torch.bool
    assert ds.train_masks.shape == (8000, 32, 32)
    assert int(ds.train_y.min()) == 0 and int(ds.train_y.max()) == len(ds.classes) - 1
    # Pixels use the byte range rather than a sliver of it.
    assert int(ds.train_x.min()) < 20 and int(ds.train_x.max()) > 235


def test_shapes_classes_are_balanced(shapes):
    k = len(shapes.classes)
    for y, n in ((shapes.train_y, 8000), (shapes.test_y, 2000)):
        counts = torch.bincount(y, minlength=k)
        assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == n


def test_shapes_deterministic_by_seed():
    a = load_dataset("shapes", seed=3, train_size=300, test_size=100)
    b = load_dataset("shapes", seed=3, train_size=300, test_size=100)
    c = load_dataset("shapes", seed=4, train_size=300, test_size=100)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y) and torch.equal(a.test_masks, b.test_masks)
    assert not torch.equal(a.train_x, c.train_x)
    # Bypassing the cache gives the very same pixels, so determinism is the generator's, not the cache's.
    x, y, m = generate_shapes(300, 3, 0, 32)
    assert np.array_equal(x, a.train_x.numpy()) and np.array_equal(y, a.train_y.numpy())
    # Train and test are different draws, not a split of one draw.
    assert not torch.equal(a.train_x[:100], a.test_x)


def test_shapes_masks_cover_the_drawn_object(shapes):
    m, x = shapes.test_masks, shapes.test_x.float()
    area = m.flatten(1).sum(1)
    assert int(area.min()) >= 20  # every image has a visible object
    assert float(area.float().mean()) < 0.35 * 32 * 32  # ... that is not the whole frame
    border = m[:, 0, :].any(1) | m[:, -1, :].any(1) | m[:, :, 0].any(1) | m[:, :, -1].any(1)
    assert not bool(border.any())  # objects lie fully inside the image
    # The mask marks the object, which is drawn lighter than its surroundings: compare the
    # mean lightness inside the mask with a band 2 pixels outside it.
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    mf = m.float().unsqueeze(1)
    grown = torch.nn.functional.max_pool2d(mf, 5, stride=1, padding=2)
    band = (grown - torch.nn.functional.max_pool2d(mf, 3, stride=1, padding=1)).clamp(min=0)
    inside = (luma * mf).flatten(1).sum(1) / mf.flatten(1).sum(1)
    outside = (luma * band).flatten(1).sum(1) / band.flatten(1).sum(1).clamp(min=1)
    assert float(((inside - outside) > 40).float().mean()) > 0.95


def test_shapes_ring_masks_have_holes_and_discs_do_not(shapes):
    """Masks are the silhouettes of their class: a ring encloses background, a circle does not."""
    ring, circle = shapes.classes.index("ring"), shapes.classes.index("circle")
    m = shapes.test_masks

    def has_hole(mask: torch.Tensor) -> bool:
        # Flood the background from the border; any background pixel not reached is enclosed.
        reach = torch.zeros_like(mask)
        reach[0, :], reach[-1, :], reach[:, 0], reach[:, -1] = ~mask[0, :], ~mask[-1, :], ~mask[:, 0], ~mask[:, -1]
        for _ in range(64):
            grown = torch.nn.functional.max_pool2d(reach[None, None].float(), 3, 1, 1)[0, 0].bool() & ~mask
            if torch.equal(grown, reach):
                break
            reach = grown
        return bool((~mask & ~reach).any())

    rings = [has_hole(mk) for mk in m[shapes.test_y == ring][:40]]
    circles = [has_hole(mk) for mk in m[shapes.test_y == circle][:40]]
    assert sum(rings) >= 38 and sum(circles) == 0


def softmax_regression(xtr, ytr, xte, yte, steps=300, lr=0.01, weight_decay=1e-4) -> tuple[float, float]:
    """Multinomial logistic regression fitted full-batch (train and test accuracy); inputs are standardised."""
    mu, sd = xtr.mean(0), xtr.std(0).clamp(min=1e-6)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[1], int(ytr.max()) + 1)
    opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        return (lin(xtr).argmax(1) == ytr).float().mean().item(), (lin(xte).argmax(1) == yte).float().mean().item()


def _colour_features(x, m):
    x = x.float() / 255
    mf = m.float().unsqueeze(1)
    obj = (x * mf).sum((2, 3)) / mf.sum((2, 3))
    bg = (x * (1 - mf)).sum((2, 3)) / (1 - mf).sum((2, 3))
    return torch.cat([obj, bg, x.mean((2, 3))], 1)


def test_shapes_colour_carries_no_class_information(shapes):
    """Object colour, background colour and whole-image mean colour predict the class at chance level."""
    ds = shapes
    _, acc = softmax_regression(
        _colour_features(ds.train_x, ds.train_masks), ds.train_y, _colour_features(ds.test_x, ds.test_masks), ds.test_y
    )
    assert acc < 0.2, acc  # chance is 0.1
    # The probe itself works: a colour that marked the class is found at once.
    # Paint each class's objects one colour from a hue wheel (linearly separable colours).
    n = 2000
    angle = torch.arange(len(ds.classes)) * (2 * torch.pi / len(ds.classes))
    wheel = torch.stack([128 + 120 * angle.cos(), 128 + 120 * angle.sin()], 1).round().to(torch.uint8)
    x, m, y = ds.train_x[:n].clone(), ds.train_masks[:n], ds.train_y[:n]
    per_pixel = wheel[y].repeat_interleave(m.flatten(1).sum(1), dim=0)
    x[:, 0][m], x[:, 1][m] = per_pixel[:, 0], per_pixel[:, 1]
    f = _colour_features(x, m)
    _, leaky = softmax_regression(f[:1500], y[:1500], f[1500:], y[1500:], lr=0.05)
    assert leaky > 0.8, leaky


def test_shapes_defeat_a_linear_classifier(shapes):
    """Logistic regression on raw pixels stays far below what a small CNN reaches (>= 90%)."""
    ds = shapes
    xtr = ds.train_x[:3000].flatten(1).float()
    xte = ds.test_x[:1000].flatten(1).float()
    train_acc, acc = softmax_regression(xtr, ds.train_y[:3000], xte, ds.test_y[:1000], steps=100)
    assert acc < 0.6, acc
    assert train_acc > acc + 0.1  # it did fit the pixels it saw; it just cannot generalise from them


def test_shapes_image_size_override():
    ds = load_dataset("shapes", image_size=48, train_size=50, test_size=20)
    assert ds.input_shape == (3, 48, 48) and ds.train_x.shape == (50, 3, 48, 48) and ds.test_masks.shape == (20, 48, 48)
    assert int(ds.test_masks.flatten(1).sum(1).min()) > 40
    with pytest.raises(DatasetError) as e:
        load_dataset("shapes", image_size=8)
    assert "16" in one_line(e)


def test_normalize_and_stats(shapes):
    ds = shapes
    z = ds.normalize(ds.train_x)
    assert z.dtype == torch.float32 and z.shape == ds.train_x.shape
    # mean/std were computed on the train split: normalising it gives zero mean, unit std per channel.
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    # A single image normalises like its batch row.
    assert torch.equal(ds.normalize(ds.train_x[7]), z[7])
    with pytest.raises(TypeError):
        ds.normalize(ds.train_x.float())


def test_info_is_json_and_copies_are_independent():
    ds = load_dataset("shapes", train_size=100, test_size=30)
    info = json.loads(json.dumps(ds.info()))
    assert info["input_shape"] == [3, 32, 32] and info["train_size"] == 100 and info["test_size"] == 30
    assert info["classes"] == ds.classes and len(info["mean"]) == 3 and info["has_masks"] is True
    ds.train_x.zero_()
    ds.classes.append("oops")
    again = load_dataset("shapes", train_size=100, test_size=30)
    assert int(again.train_x.max()) > 0 and "oops" not in again.classes


# ============================================================================ digits


def test_digits():
    a = load_dataset("digits")
    assert len(a.train_y) + len(a.test_y) == 1797 and a.classes == [str(i) for i in range(10)]
    assert a.input_shape == (1, 28, 28) and a.train_x.dtype == torch.uint8
    assert abs(len(a.test_y) - 0.2 * 1797) <= 10
    assert torch.bincount(a.test_y, minlength=10).min() >= 30  # stratified: every digit in test
    assert int(a.train_x.max()) == 255 and int(a.train_x.min()) == 0
    b = load_dataset("digits")
    c = load_dataset("digits", seed=1)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.test_x, c.test_x)
    # The split is a partition of the 1,797 images.
    tr, te = stratified_split(np.repeat(np.arange(10), 20), 0.2, 5)
    assert len(set(tr) & set(te)) == 0 and sorted(np.concatenate([tr, te])) == list(range(200))
    small = load_dataset("digits", train_size=100, image_size=16)
    assert small.train_x.shape == (100, 1, 16, 16) and torch.bincount(small.train_y).tolist() == [10] * 10


def test_subsample_is_balanced_and_seeded():
    y = torch.arange(1000) % 4
    idx = subsample(1000, 40, y, seed=1, stream=0)
    assert torch.bincount(y[idx]).tolist() == [10] * 4 and len(set(idx.tolist())) == 40
    assert torch.equal(idx, subsample(1000, 40, y, seed=1, stream=0))
    assert not torch.equal(idx, subsample(1000, 40, y, seed=2, stream=0))


# ============================================================================ torchvision sets


def _idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _fake_mnist(root: Path, folder: str, n_train=30, n_test=12, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (raw / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return arrays


@pytest.fixture
def offline(monkeypatch):
    """torchvision's downloaders fail the way they do without a network, and record that they were asked."""
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.mnist as tv_mnist

    calls = []

    def fail(url, *a, **k):
        calls.append(url)
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", fail)
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fail)
    clear_cache()
    return calls


def test_mnist_from_fake_raw_files(tmp_path, offline):
    arrays = _fake_mnist(tmp_path, "MNIST")
    ds = load_dataset("mnist", data_root=tmp_path, download=False)
    assert ds.classes == [str(i) for i in range(10)] and ds.input_shape == (1, 28, 28)
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.test_x.shape == (12, 1, 28, 28)
    assert np.array_equal(ds.train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.train_y.dtype == torch.int64 and ds.test_masks is None
    pix = arrays["train-images-idx3-ubyte"] / 255.0
    assert ds.mean[0] == pytest.approx(pix.mean(), abs=1e-6) and ds.std[0] == pytest.approx(pix.std(), abs=1e-6)
    assert offline == []
    sub = load_dataset("mnist", data_root=tmp_path, download=False, train_size=10, image_size=14)
    assert sub.train_x.shape == (10, 1, 14, 14)


def test_fashion_mnist_from_fake_gz_files(tmp_path, offline):
    arrays = _fake_mnist(tmp_path, "FashionMNIST", gz=True)
    ds = load_dataset("fashion-mnist", data_root=tmp_path, download=True)
    assert ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10
    assert np.array_equal(ds.test_x[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert offline == []  # the local .gz files were enough


def test_mnist_missing_files_name_the_files(tmp_path, offline):
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", data_root=tmp_path, download=False)
    msg = one_line(e)
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg and "MNIST/raw" in msg
    assert "downloads are off" in msg and offline == []
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", data_root=tmp_path, download=True)
    msg = one_line(e)
    assert "could not be downloaded" in msg and "offline" in msg and "train-images-idx3-ubyte" in msg
    assert offline  # a download was attempted


def test_mnist_truncated_and_garbage_files(tmp_path, offline):
    _fake_mnist(tmp_path, "MNIST")
    f = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:5000])  # a download cut short
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", data_root=tmp_path, download=False)
    msg = one_line(e)
    assert "train-images-idx3-ubyte" in msg and "truncated or corrupt" in msg

    f.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", data_root=tmp_path, download=False)
    assert "train-images-idx3-ubyte" in one_line(e)

    # Labels and images from different downloads.
    _fake_mnist(tmp_path / "other", "MNIST", n_train=31)
    f.write_bytes((tmp_path / "other" / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes())
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", data_root=tmp_path, download=False)
    assert "31 images but" in one_line(e)


def test_mnist_garbage_gz(tmp_path, offline):
    _fake_mnist(tmp_path, "MNIST", gz=True)
    g = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    g.write_bytes(g.read_bytes()[:20])
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", data_root=tmp_path, download=False)
    msg = one_line(e)
    assert "t10k-images-idx3-ubyte.gz" in msg and "truncated or corrupt" in msg
    assert not (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()  # no half-written file left


def _fake_cifar(root: Path, per_batch=4, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        entry = {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        batches[name] = entry
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return folder, batches


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def _trust_fake_cifar(monkeypatch, folder: Path, archive: Path | None = None):
    """torchvision pins CIFAR's md5s; point them at the fake files, as if these were the real ones."""
    import torchvision.datasets as tvd

    c = tvd.CIFAR10
    monkeypatch.setattr(c, "train_list", [[n, _md5(folder / n)] for n, _ in c.train_list])
    monkeypatch.setattr(c, "test_list", [[n, _md5(folder / n)] for n, _ in c.test_list])
    monkeypatch.setattr(c, "meta", {**c.meta, "md5": _md5(folder / "batches.meta")})
    if archive is not None:
        monkeypatch.setattr(c, "tgz_md5", _md5(archive))


def test_cifar10_from_fake_batches(tmp_path, offline, monkeypatch):
    folder, batches = _fake_cifar(tmp_path)
    _trust_fake_cifar(monkeypatch, folder)
    ds = load_dataset("cifar10", data_root=tmp_path, download=False)
    assert ds.input_shape == (3, 32, 32) and ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (6, 3, 32, 32)
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10
    # CIFAR rows are the R plane, then G, then B: the tensor must come out channel-first.
    row = batches["data_batch_2"]["data"][1]
    assert np.array_equal(ds.train_x[5].numpy(), row.reshape(3, 32, 32))
    assert ds.test_y.tolist() == batches["test_batch"]["labels"]


def test_cifar10_from_a_valid_archive(tmp_path, offline, monkeypatch):
    folder, batches = _fake_cifar(tmp_path / "build")
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    _trust_fake_cifar(monkeypatch, folder, archive)
    ds = load_dataset("cifar10", data_root=tmp_path / "data", download=False)
    assert len(ds.train_y) == 20 and offline == []
    assert np.array_equal(ds.test_x[0].numpy(), batches["test_batch"]["data"][0].reshape(3, 32, 32))


def test_cifar10_garbage_archive(tmp_path, offline):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + b"partial download" * 100)
    for download in (False, True):
        with pytest.raises(DatasetError) as e:
            load_dataset("cifar10", data_root=tmp_path, download=download)
        msg = one_line(e)
        assert "cifar-10-python.tar.gz" in msg and "corrupt" in msg and "delete it" in msg
    assert offline  # with download=True a fresh copy was tried


def test_cifar10_missing_and_corrupt_batches(tmp_path, offline):
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", data_root=tmp_path, download=True)
    msg = one_line(e)
    assert "could not be downloaded (offline?" in msg and "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py/" in msg
    # Batches present but not the real ones (torchvision's md5s do not match).
    _fake_cifar(tmp_path)
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", data_root=tmp_path, download=False)
    msg = one_line(e)
    assert "corrupt or partial" in msg and "data_batch_1" in msg


# ============================================================================ image folders and zips


def _png(colour, size=(20, 12), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "JPEG")
    return buf.getvalue()


def _folder_files(n=10, grey=False) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {}
    for c, cls in enumerate(["cat", "dog", "owl"]):
        for i in range(n):
            if grey:
                files[f"{cls}/{i}.png"] = _png(int(rng.integers(0, 256)), mode="L")
            elif i % 3 == 0:
                files[f"{cls}/{i}.jpg"] = _jpeg(tuple(int(v) for v in rng.integers(0, 256, 3)))
            else:
                files[f"{cls}/sub/{i}.png"] = _png(tuple(int(v) for v in rng.integers(0, 256, 3)))
    return files


def _write_dir(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def _write_zip(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(prefix + name, data)
    return path


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_image_folder_directory(tmp_path):
    files = _folder_files()
    files["cat/notes.txt"] = b"not an image"
    files["dog/broken.png"] = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10
    files[".DS_Store"] = b"junk"
    files["README.md"] = b"# my data set"
    root = _write_dir(tmp_path / "pets", files)
    ds = load_dataset(str(root), seed=1)
    assert ds.name == "pets" and ds.classes == ["cat", "dog", "owl"] and ds.input_shape == (3, 32, 32)
    assert len(ds.train_y) == 24 and len(ds.test_y) == 6  # 10 per class, 20% of each in test
    assert torch.bincount(ds.test_y).tolist() == [2, 2, 2]
    r = ds.report
    assert r["skipped_non_images"] == 1 and r["skipped_corrupt"] == 1 and r["skipped_outside_classes"] == 1
    assert r["per_class"] == {"cat": 10, "dog": 10, "owl": 10} and "dog/broken.png" in r["examples"]["corrupt"]
    json.dumps(ds.info())
    # Flat colour images stay flat colours after the resize.
    img = ds.train_x[0]
    assert int((img.flatten(1).max(1).values - img.flatten(1).min(1).values).max()) <= 2
    assert torch.equal(load_dataset(str(root), seed=1).test_x, ds.test_x)
    assert not torch.equal(load_dataset(str(root), seed=2).test_y, ds.test_y) or not torch.equal(
        load_dataset(str(root), seed=2).test_x, ds.test_x
    )


def test_image_folder_grey_and_size(tmp_path):
    root = _write_dir(tmp_path / "g", _folder_files(grey=True))
    ds = load_dataset(root, image_size=16)
    assert ds.input_shape == (1, 16, 16) and ds.train_x.shape[1:] == (1, 16, 16) and len(ds.mean) == 1


@pytest.mark.parametrize("prefix", ["", "my_pets/"])
def test_zip_matches_directory(tmp_path, prefix):
    files = _folder_files()
    root = _write_dir(tmp_path / "pets", files)
    z = _write_zip(tmp_path / "pets.zip", files, prefix)
    before = _tree(tmp_path)
    a, b = load_dataset(root), load_dataset(z)
    assert b.classes == a.classes and b.name == "pets" and b.report["format"] == "zip"
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert _tree(tmp_path) == before  # reading the zip wrote nothing


def test_zip_unsafe_members_are_skipped_and_nothing_is_written(tmp_path):
    files = _folder_files(n=5)
    z = tmp_path / "up" / "evil.zip"
    z.parent.mkdir()
    _write_zip(z, files)
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("../evil.png", _png((255, 0, 0)))
        zf.writestr("cat/../../evil2.png", _png((255, 0, 0)))
        zf.writestr("/tmp/convscope_abs_evil.png", _png((255, 0, 0)))
        zf.writestr("C:/evil3.png", _png((255, 0, 0)))
        link = zipfile.ZipInfo("dog/link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    before = _tree(tmp_path)
    ds = load_dataset(z)
    assert ds.report["skipped_unsafe"] == 5 and len(ds.train_y) + len(ds.test_y) == 15
    assert any("symbolic link" in s for s in ds.report["examples"]["unsafe"])
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "up" / "evil.png").exists()
    assert not Path("/tmp/convscope_abs_evil.png").exists()
    assert _tree(tmp_path) == before


def test_zip_bomb_is_refused(tmp_path):
    files = _folder_files(n=3)
    z = _write_zip(tmp_path / "bomb.zip", files)
    with zipfile.ZipFile(z, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/huge.bmp", b"\0" * (20 * 1024 * 1024))
    assert zipfile.ZipFile(z).getinfo("cat/huge.bmp").compress_size < 100_000
    with pytest.raises(DatasetError) as e:
        load_dataset(z)
    msg = one_line(e)
    assert "zip bomb" in msg and "huge.bmp" in msg


def test_zip_limits_on_count_and_total_size(tmp_path):
    z = _write_zip(tmp_path / "many.zip", _folder_files(n=10))
    with pytest.raises(DatasetError) as e:
        load_dataset(z, zip_limits=ZipLimits(max_files=20))
    assert "30 entries" in one_line(e) and "20" in str(e.value)
    with pytest.raises(DatasetError) as e:
        load_dataset(z, zip_limits=ZipLimits(max_total_bytes=2000))
    assert "limit" in one_line(e)
    assert len(load_dataset(z, zip_limits=ZipLimits(max_files=30)).train_y) == 24


def test_read_member_counts_actual_bytes():
    """A member that inflates past its declared size is refused, whatever the header says."""

    class LyingZip:
        def open(self, info):
            return io.BytesIO(b"x" * 5000)

    info = zipfile.ZipInfo("cat/a.png")
    info.file_size = 100
    with pytest.raises(safezip.UnsafeZipError, match="declared"):
        safezip.read_member(LyingZip(), info, safezip.ZipLimits(), safezip.ZipReport())
    info.file_size = 5000
    report = safezip.ZipReport(bytes_read=0)
    with pytest.raises(safezip.UnsafeZipError, match="limit"):
        safezip.read_member(LyingZip(), info, safezip.ZipLimits(max_total_bytes=4000), report)
    assert safezip.read_member(LyingZip(), info, safezip.ZipLimits(), safezip.ZipReport()) == b"x" * 5000


def test_zip_with_lying_sizes_loses_only_that_member(tmp_path):
    files = _folder_files(n=5)
    z = _write_zip(tmp_path / "lie.zip", files)
    with zipfile.ZipFile(z, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/liar.png", _png((1, 2, 3), size=(300, 300)) + b"\0" * 100_000)
    info = zipfile.ZipFile(z).getinfo("cat/liar.png")
    data = bytearray(z.read_bytes())
    # Shrink the declared size in the local header and the central directory.
    real = info.file_size.to_bytes(4, "little")
    n = data.count(real)
    assert n >= 2
    data = data.replace(real, (64).to_bytes(4, "little"))
    z.write_bytes(bytes(data))
    ds = load_dataset(z)
    assert ds.report["skipped_corrupt"] == 1 and len(ds.train_y) + len(ds.test_y) == 15


def test_decompression_bomb_image_is_skipped(tmp_path):
    files = _folder_files(n=5)
    png = bytearray(_png((0, 0, 0), size=(1, 1)))
    # Claim 60000 x 60000 pixels in the IHDR chunk and fix its CRC: a tiny file, a huge image.
    png[16:24] = (60000).to_bytes(4, "big") * 2
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    files["cat/bomb.png"] = bytes(png)
    ds = load_dataset(_write_dir(tmp_path / "d", files))
    assert ds.report["skipped_too_large"] == 1 and len(ds.train_y) + len(ds.test_y) == 15


def test_folder_errors(tmp_path):
    flat = _write_dir(tmp_path / "flat", {"a.png": _png((0, 0, 0)), "b.png": _png((9, 9, 9))})
    with pytest.raises(DatasetError) as e:
        load_dataset(flat)
    assert "no class folders" in one_line(e) and "cat/1.png" in str(e.value)

    one = _write_dir(tmp_path / "one", {"cat/a.png": _png((0, 0, 0)), "cat/b.png": _png((9, 9, 9))})
    with pytest.raises(DatasetError) as e:
        load_dataset(one)
    assert "only one class folder ('cat')" in one_line(e)

    files = _folder_files(n=3)
    files["fish/readme.txt"] = b"todo"
    with pytest.raises(DatasetError) as e:
        load_dataset(_write_dir(tmp_path / "nofish", files))
    assert "'fish'" in one_line(e) and "no images" in str(e.value) and "1 files there" in str(e.value)

    empty = _write_dir(tmp_path / "emptydir", _folder_files(n=3))
    (empty / "zebra").mkdir()
    with pytest.raises(DatasetError) as e:
        load_dataset(empty)
    assert "'zebra'" in one_line(e)

    zdir = _write_zip(tmp_path / "emptyclass.zip", _folder_files(n=3))
    with zipfile.ZipFile(zdir, "a") as zf:
        zf.writestr(zipfile.ZipInfo("zebra/"), b"")
    with pytest.raises(DatasetError) as e:
        load_dataset(zdir)
    assert "'zebra'" in one_line(e)

    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DatasetError) as e:
        load_dataset(bad)
    assert "not a readable zip" in one_line(e)

    txt = tmp_path / "labels.csv"
    txt.write_text("a,b")
    with pytest.raises(DatasetError) as e:
        load_dataset(txt)
    assert "not a .zip" in one_line(e)


def test_unknown_names_and_bad_arguments(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("imagenet")
    msg = one_line(e)
    assert "unknown dataset 'imagenet'" in msg and all(n in msg for n in DATASETS)
    with pytest.raises(DatasetError):
        load_dataset("shapes", train_size=0)
    with pytest.raises(DatasetError):
        load_dataset("shapes", image_size=10_000)
    assert issubclass(DatasetError, ValueError)
