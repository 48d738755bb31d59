"""Attention quality: energy-in-mask and the pointing game against their definitions, and
on a small CNN with a CBAM layer trained for three epochs on `shapes`, Grad-CAM must put
more of its mass on the object than a uniform map does."""
from __future__ import annotations

import pytest
import torch

from lab.datasets import load_dataset
from lab.train.trainer import Trainer, TrainSettings
from visual import area_share, attention_quality, energy_in_mask, pointing_game
from visual.quality import quality_maps

SPEC = {
    "name": "quality-cnn", "input": [3, 32, 32], "classes": 10,
    "layers": [
        {"block": "conv", "params": {"out": 16}},
        {"block": "conv", "params": {"out": 32, "stride": 2}},
        {"block": "cbam", "params": {"reduction": 4}},
        {"block": "conv", "params": {"out": 64, "stride": 2}},
        {"block": "conv", "params": {"out": 64}},
        {"block": "global_avg_pool"},
        {"block": "linear"},
    ],
}


@pytest.fixture(scope="module")
def trained(one_thread):
    ds = load_dataset("shapes", seed=0, train_size=4000, test_size=256)
    trainer = Trainer(SPEC, TrainSettings(epochs=3, batch_size=64, lr=3e-3, seed=0), ds)
    end = [e for e in trainer.run()][-1]
    assert end["type"] == "end" and end["status"] == "completed"
    assert end["test_acc"] > 0.5, end          # the attention below is of a model that learnt
    return trainer.model.eval(), ds


def _masks() -> torch.Tensor:
    m = torch.zeros(3, 8, 10, dtype=torch.bool)
    m[0, 2:5, 3:8] = True        # 15 of 80 pixels
    m[1, :, :5] = True           # 40 of 80
    m[2, 7, 9] = True            # 1 of 80
    return m


def test_uniform_map_scores_the_mask_area_share():
    masks = _masks()
    uniform = torch.full(masks.shape, 0.3)
    share = torch.tensor([15 / 80, 40 / 80, 1 / 80], dtype=torch.float64)
    assert torch.allclose(area_share(masks), share)
    assert torch.allclose(energy_in_mask(uniform, masks), share)
    assert torch.allclose(pointing_game(uniform, masks), share)      # expected hit of a random tie-break
    assert torch.allclose(energy_in_mask(torch.zeros(masks.shape), masks), share)   # no mass: no information


def test_energy_in_mask_is_the_share_of_nonnegative_mass():
    masks = _masks()
    maps = torch.zeros(masks.shape)
    maps[0, 3, 4] = 3.0          # inside
    maps[0, 0, 0] = 1.0          # outside
    maps[0, 6, 6] = -50.0        # negative: clamped to 0, not subtracted
    maps[1] = masks[1].float() * 2
    maps[2] = 1.0
    maps[2, 7, 9] = 21.0
    e = energy_in_mask(maps, masks)
    assert e.tolist() == pytest.approx([0.75, 1.0, 21 / (79 + 21)])


def test_pointing_game_hits_and_misses():
    masks = _masks()
    peaked_in = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    peaked_in[0, 3, 4] = peaked_in[1, 5, 1] = peaked_in[2, 7, 9] = 5.0
    assert pointing_game(peaked_in, masks).tolist() == [1.0, 1.0, 1.0]
    peaked_out = peaked_in.clone()
    peaked_out[0, 0, 0] = peaked_out[1, 0, 9] = peaked_out[2, 0, 0] = 9.0
    assert pointing_game(peaked_out, masks).tolist() == [0.0, 0.0, 0.0]
    tie = torch.zeros(1, 8, 10)
    tie[0, 3, 4] = tie[0, 0, 0] = 1.0                # one maximum in, one out
    assert pointing_game(tie, masks[:1]).tolist() == [0.5]


def test_shapes_do_not_match():
    with pytest.raises(ValueError, match="one shape"):
        energy_in_mask(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5, dtype=torch.bool))


def test_gradcam_puts_more_mass_on_the_object_than_a_uniform_map(trained):
    model, ds = trained
    x, masks = ds.normalize(ds.test_x), ds.test_masks
    view = attention_quality(model, x, masks, methods=("cbam", "gradcam", "saliency"))
    share = area_share(masks)
    data = view.data["methods"]
    assert view.data["images"] == 256 and view.data["skipped"] == {}
    assert data["uniform"]["energy_in_mask"] == pytest.approx(float(share.mean()), abs=1e-6)
    assert data["uniform"]["pointing"] == pytest.approx(float(share.mean()), abs=1e-6)
    gc = data["gradcam"]
    assert gc["beats_uniform_energy"] > 0.75                       # most test images
    assert gc["energy_in_mask"] > 1.3 * float(share.mean())
    assert gc["pointing"] > 2 * float(share.mean())
    # the per-image numbers are the definitions applied to the maps
    maps = quality_maps(model, x, "gradcam")
    assert gc["energy_per_image"] == pytest.approx(energy_in_mask(maps, masks).tolist(), abs=1e-5)
    assert gc["pointing_per_image"] == pytest.approx(pointing_game(maps, masks).tolist(), abs=1e-5)
    assert data["saliency"]["energy_in_mask"] > float(share.mean())
    assert 0 <= data["cbam"]["pointing"] <= 1 and len(data["cbam"]["energy_per_image"]) == 256
    assert len(view.figure.to_json()) < 2e6


def test_ig_subset_and_explicit_targets(trained):
    model, ds = trained
    x, masks, y = ds.normalize(ds.test_x[:32]), ds.test_masks[:32], ds.test_y[:32]
    view = attention_quality(model, x, masks, methods=("ig",), target=y, limit=16, n_steps=8)
    assert view.data["images"] == 16
    ig = view.data["methods"]["ig"]
    assert len(ig["energy_per_image"]) == 16
    assert ig["energy_in_mask"] > view.data["methods"]["uniform"]["energy_in_mask"]


def test_cbam_maps_are_the_modules_spatial_attention_upsampled(trained):
    model, ds = trained
    x = ds.normalize(ds.test_x[:4])
    maps = quality_maps(model, x, "cbam")
    cbam = model.layers[2]
    with torch.no_grad():
        f = model.layers[1](model.layers[0](x))
        mc = cbam.channel(f)
        ms = cbam.spatial(f * mc[:, :, None, None])
    up = torch.nn.functional.interpolate(ms, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert maps.shape == (4, 32, 32) and torch.allclose(maps, up, atol=1e-6)


def test_cbam_is_skipped_without_a_cbam_module(one_thread):
    import blocks
    torch.manual_seed(0)
    model = blocks.build({"input": [3, 16, 16], "classes": 3, "layers": [
        {"block": "conv", "params": {"out": 4}}, {"block": "global_avg_pool"}, {"block": "linear"}]})
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 4:8, 4:12] = True
    view = attention_quality(model, torch.randn(2, 3, 16, 16), masks, methods=("cbam", "saliency"))
    assert "cbam" in view.data["skipped"] and set(view.data["methods"]) == {"saliency", "uniform"}
    assert view.data["methods"]["uniform"]["energy_in_mask"] == pytest.approx(32 / 256)
