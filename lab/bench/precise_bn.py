"""What PreciseBN costs (lab/train/precise_bn.py): its pass before each evaluation against
the epoch's training, for ResNet-18 + CBAM (width 0.25) on `shapes`.

Each round trains one epoch through `Trainer` with PreciseBN over all of that epoch's
images, so the pass and the training see the same images: the ratio is the pass's share
of an epoch of that many images (a forward without gradients against forward, backward and
step). With the default of 1,024 images, an epoch of N images pays about
ratio × 1,024 / N on top of its training.
"""
from __future__ import annotations

import statistics

from lab.bench import BenchOptions, register_case


def precise_bn_cost(options: BenchOptions) -> dict:
    from lab.datasets import load_dataset
    from lab.train.device import choose_device, device_name
    from lab.train.trainer import PRECISE_BN_IMAGES, Trainer, TrainSettings
    from presets import load_preset

    device = choose_device(options.device)
    images = 256 if options.quick else 512
    ds = load_dataset("shapes", options.data_root, seed=0, train_size=images, test_size=64)
    spec = load_preset("ResNet-18 + CBAM", input_shape=ds.input_shape, classes=len(ds.classes), width=0.25)
    settings = TrainSettings(epochs=1, device=str(device), precise_bn=images)
    rounds = []
    for _ in range(options.rounds if options.rounds is not None else (2 if options.quick else 3)):
        trainer = Trainer(spec, settings, ds)
        epoch = next(e for e in trainer.run() if e["type"] == "epoch")
        train_s = images / epoch["images_per_sec"]
        rounds.append({"train_s": round(train_s, 2), "precise_bn_s": round(trainer.precise_bn_s, 2),
                       "ratio": round(trainer.precise_bn_s / train_s, 3)})
    ratio = statistics.median(r["ratio"] for r in rounds)
    return {"kind": "precise_bn", "device": device_name(device), "model": spec["name"], "images": images,
            "ratio": ratio, "default_images": PRECISE_BN_IMAGES,
            "share_of_a_2000_image_epoch": round(ratio * PRECISE_BN_IMAGES / 2000, 3),
            "rounds": rounds}


register_case("PreciseBN pass vs an epoch (ResNet-18 + CBAM width 0.25)", precise_bn_cost)
