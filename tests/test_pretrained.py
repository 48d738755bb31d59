"""Pretrained weights onto presets by structure (blocks/pretrained.py, lab/pretrained.py), the
photo path and `lab predict` / `lab inspect --preset`: outputs equal torchvision's exactly."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image
from safetensors.torch import save_file

import blocks
import presets
from blocks.pretrained import WeightsMismatch, load_by_structure
from lab.cli import main
from lab.pretrained import (WeightsError, open_photo, photo_tensors, pretrained, read_weights_file,
                            top_k, weights_entry)

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "assets" / "photos"

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(factory, seed: int = 0) -> nn.Module:
    """A torchvision model with seeded random weights and BatchNorm statistics (so that a
    swapped mean/var or weight/bias would show)."""
    torch.manual_seed(seed)
    model = factory(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def save_both(model: nn.Module, folder: Path, stem: str) -> tuple[Path, Path]:
    state = model.state_dict()
    pth, st = folder / f"{stem}.pth", folder / f"{stem}.safetensors"
    torch.save(state, pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    return pth, st


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    return save_both(seeded(torchvision.models.resnet18), folder, "resnet18")[0]


# --- exactness against torchvision ---------------------------------------------------------------

EXACT = [("ResNet-18", torchvision.models.resnet18, 64), ("ResNet-50", torchvision.models.resnet50, 64),
         ("VGG-11", torchvision.models.vgg11, 224),          # flatten needs the 7×7 map of 224²
         ("DenseNet-121", torchvision.models.densenet121, 64),
         ("MobileNetV2", torchvision.models.mobilenet_v2, 64), ("AlexNet", torchvision.models.alexnet, 224)]


@pytest.mark.parametrize("name, factory, side", EXACT, ids=[e[0] for e in EXACT])
def test_pth_and_safetensors_give_torchvisions_outputs_exactly(tmp_path, name, factory, side):
    tv = seeded(factory)
    files = save_both(tv, tmp_path, "w")
    tv = tv.double()
    x = torch.randn(1 if side > 64 else 2, 3, side, side, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = tv(x)
    del tv
    for f in files:
        net = pretrained(name, f, input_shape=(3, side, side))
        assert net.report.new == [] and not net.report.head_replaced
        assert len(net.report.loaded) == sum(1 for k in net.model.state_dict()
                                             if not k.endswith("num_batches_tracked"))
        with torch.no_grad():
            got = net.model.double()(x)
        assert (got - expected).abs().max().item() == 0.0, f.name
        del net


def test_attention_variant_reports_loaded_and_new_tensors_exactly(r18_file):
    net = pretrained("ResNet-18 + CBAM", r18_file, input_shape=(3, 64, 64))
    state = net.model.state_dict()
    attn = [k for k in state if ".attn." in k]
    plain = [k for k in state if ".attn." not in k and not k.endswith("num_batches_tracked")]
    assert len(attn) == 8 * 6 and len(plain) == 62 + 40     # 62 parameters + 20 BN means and vars
    assert net.report.new == attn and net.report.loaded == plain
    assert net.report.summary().startswith(
        "loaded 102 tensors, 48 new: layers.2.0.attn.channel.mlp.1.weight, "
        "layers.2.0.attn.channel.mlp.1.bias, layers.2.0.attn.channel.mlp.3.weight,")
    se = pretrained("ResNet-18 + SE", r18_file, input_shape=(3, 64, 64)).report
    assert len(se.loaded) == 102 and len(se.new) == 8 * 4
    # every shared tensor is the file's
    source = read_weights_file(r18_file)
    plain_net = pretrained("ResNet-18", r18_file, input_shape=(3, 64, 64)).model.state_dict()
    for k in plain:
        assert torch.equal(state[k], plain_net[k])
    assert sorted(t.shape for t in source.values() if t.dim()) == \
        sorted(state[k].shape for k in plain if state[k].dim())


def test_coordconv_resnet18_computes_resnet18_until_it_learns_the_coordinates(r18_file):
    tv = seeded(torchvision.models.resnet18).double()
    net = pretrained("CoordConv ResNet-18", r18_file, input_shape=(3, 64, 64))
    assert net.report.widened == ["layers.0.conv.conv.weight"] and net.report.new == []
    w = net.model.state_dict()["layers.0.conv.conv.weight"]
    assert w.shape == (64, 5, 7, 7) and torch.count_nonzero(w[:, 3:]) == 0
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net.model.double()(x), tv(x), rtol=0, atol=1e-10)


def test_a_new_head_for_other_classes_keeps_every_other_tensor(r18_file):
    net = pretrained("ResNet-18", r18_file, input_shape=(3, 64, 64), classes=3)
    assert net.report.head_replaced and net.report.new == ["layers.7.weight", "layers.7.bias"]
    assert net.model.layers[7].weight.shape == (3, 512) and len(net.report.loaded) == 100
    assert net.classes == ["0", "1", "2"]


# --- what does not fit is one line and loads nothing ----------------------------------------------

def test_other_architecture_names_the_first_tensor_that_does_not_fit(r18_file):
    with pytest.raises(WeightsError) as e:
        pretrained("VGG-11", r18_file)
    assert str(e.value) == ("the weights do not fit VGG-11 at 3×224×224: 'layers.0.0.conv.weight' expects "
                            "(64, 3, 3, 3), the file's tensor 0 'conv1.weight' is (64, 3, 7, 7)")
    # ResNet-34 shares ResNet-18's first 25 tensors: a mismatch later still copies nothing
    model = blocks.build(presets.load_preset("ResNet-34", (3, 64, 64)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatch, match=r"'layers.2.2.conv1.conv.weight' expects \(64, 64, 3, 3\), "
                                              r"the file's tensor 25 'layer2.0.conv1.weight' is \(128, 64, 3, 3\)"):
        load_by_structure(model, read_weights_file(r18_file))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(WeightsError, match="preset 'GoogLeNet' has no pretrained weights"):
        pretrained("GoogLeNet", r18_file)
    with pytest.raises(WeightsError, match="an input of at least 64×64"):
        pretrained("ResNet-18", r18_file, input_shape=(3, 32, 32))


def test_extra_or_missing_tensors_are_named(r18_file):
    state = read_weights_file(r18_file)
    model = blocks.build(presets.load_preset("ResNet-18", (3, 64, 64)))
    with pytest.raises(WeightsMismatch, match=r"the file has 1 more tensors than it, from 'extra' \(3,\)"):
        load_by_structure(model, {**state, "extra": torch.zeros(3)})
    short = dict(list(state.items())[:-1])
    with pytest.raises(WeightsMismatch, match=r"the file ends after 101 tensors, and 'layers.7.bias' \(1000,\)"):
        load_by_structure(model, short)


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_truncated_files_and_pickles_carrying_code_are_refused_unrun(tmp_path, r18_file):
    data = r18_file.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"^'cut.pth' is not a readable .pth or .safetensors weights file"):
        read_weights_file(tmp_path / "cut.pth")
    st = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(1000)}, str(st))
    (tmp_path / "cut.safetensors").write_bytes(st.read_bytes()[:-100])
    with pytest.raises(WeightsError, match=r"^'cut.safetensors' is not a readable .safetensors file"):
        read_weights_file(tmp_path / "cut.safetensors")
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(str(marker))}, tmp_path / "evil.pth")
    (tmp_path / "old.pth").write_bytes(pickle.dumps({"w": Payload(str(marker))}))
    for name in ("evil.pth", "old.pth"):
        with pytest.raises(WeightsError) as e:
            pretrained("ResNet-18", tmp_path / name)
        assert "nothing in it was run" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    (tmp_path / "list.pth").write_bytes(b"")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="'list.pth' is not a state_dict"):
        read_weights_file(tmp_path / "list.pth")


# --- the imagenet source: torchvision's download and cache ------------------------------------------

def test_imagenet_reads_torchvisions_cache_and_offline_says_where_to_put_the_file(tmp_path, monkeypatch,
                                                                               r18_file):
    import urllib.error
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(WeightsError) as e:
        pretrained("ResNet-18", "imagenet")
    where = tmp_path / "hub" / "checkpoints"
    assert str(e.value) == ("cannot download ImageNet weights for ResNet-18 (<urlopen error no network>): "
                            f"put resnet18-f37072fd.pth from https://download.pytorch.org/models/"
                            f"resnet18-f37072fd.pth in {where}/ or pass a local file (--weights FILE)")
    where.mkdir(parents=True, exist_ok=True)
    (where / "resnet18-f37072fd.pth").write_bytes(r18_file.read_bytes())
    net = pretrained("ResNet-18 + SE", "imagenet", input_shape=(3, 64, 64))
    assert net.source == "imagenet" and len(net.report.loaded) == 102
    assert str(net.weights) == "ResNet18_Weights.IMAGENET1K_V1"


def test_labels_and_preprocessing_come_from_the_weights_metadata(tmp_path):
    w = weights_entry("ResNet-50 + CBAM")
    assert str(w) == "ResNet50_Weights.IMAGENET1K_V2"
    t = w.transforms()
    assert (t.resize_size, t.crop_size) == ([232], [224])
    assert len(w.meta["categories"]) == 1000 and w.meta["categories"][281] == "tabby"
    # a file named as torchvision's V1 download gets V1's preprocessing
    assert str(weights_entry("ResNet-50", tmp_path / "resnet50-0676ba61.pth")) == "ResNet50_Weights.IMAGENET1K_V1"


# --- photos and `lab predict` ----------------------------------------------------------------------

def test_shipped_photos_are_small_and_the_split_preprocessing_equals_torchvisions():
    files = sorted(PHOTOS.glob("*.jpg"))
    assert [f.name for f in files] == ["astronaut.jpg", "cat.jpg", "coffee.jpg"]
    assert all(f.stat().st_size <= 60_000 for f in files)
    w = weights_entry("ResNet-50")
    for f in files:
        photo = open_photo(f)
        u8, x = photo_tensors(photo, w)
        assert u8.dtype == torch.uint8 and u8.shape == (3, 224, 224) and x.shape == (1, 3, 224, 224)
        assert torch.equal(x[0], w.transforms()(photo))


def test_exif_orientation_is_honoured(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))               # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6                                     # "rotate 90° clockwise to view"
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    up = open_photo(tmp_path / "r.jpg")
    assert up.size == (20, 40)
    assert up.getpixel((10, 5))[2] > 200 and up.getpixel((10, 35))[0] > 200   # blue on top now
    with pytest.raises(ValueError, match="cannot be read as an image"):
        open_photo(b"not an image")


def test_predict_json_equals_torchvision_with_the_same_preprocessing(capsys, r18_file):
    photo = PHOTOS / "cat.jpg"
    assert main(["predict", "--preset", "ResNet-18", "--weights", str(r18_file), "--image", str(photo),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tv = seeded(torchvision.models.resnet18)
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    with torch.no_grad():
        probs = tv(w.transforms()(Image.open(photo).convert("RGB"))[None]).softmax(1)[0]
    p, i = probs.topk(5)
    assert [t["index"] for t in out["top5"]] == i.tolist()
    assert [t["label"] for t in out["top5"]] == [w.meta["categories"][k] for k in i.tolist()]
    assert max(abs(t["prob"] - q) for t, q in zip(out["top5"], p.tolist())) <= 1e-6
    assert set(out) == {"top5"} and all(set(t) == {"index", "label", "prob"} for t in out["top5"])


def test_predict_and_inspect_refuse_bad_input_with_one_line(capsys, tmp_path, r18_file):
    (tmp_path / "x.pth").write_bytes(b"PK\x03\x04 truncated")
    for args, message in [
        (["predict", "--preset", "ResNet-18", "--weights", str(tmp_path / "x.pth"), "--image",
          str(PHOTOS / "cat.jpg")], "error: 'x.pth' is not a readable .pth or .safetensors weights file"),
        (["predict", "--preset", "ResNet-18", "--weights", str(r18_file), "--image", str(r18_file)],
         "error: image 'resnet18.pth' cannot be read as an image"),
        (["inspect", "--preset", "ResNet-18", "--image", str(PHOTOS / "cat.jpg"), "--view", "gradcam",
          "--out", str(tmp_path / "g.json")], "error: --preset needs --weights FILE|imagenet"),
    ]:
        assert main(args) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(message) and err.count("\n") == 1


def test_inspect_a_photo_with_a_pretrained_preset(capsys, tmp_path, r18_file):
    out = tmp_path / "g.json"
    assert main(["inspect", "--preset", "ResNet-18", "--weights", str(r18_file), "--image",
                 str(PHOTOS / "cat.jpg"), "--view", "gradcam", "--target", "tabby", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["target"] == 281 and data["target_name"] == "tabby" and data["map_shape"] == [224, 224]
    net = pretrained("ResNet-18", r18_file)
    _, x = photo_tensors(open_photo(PHOTOS / "cat.jpg"), net.weights)
    assert data["top5"]["classes"] == [t["index"] for t in top_k(net.model, x, net.classes)]
