"""The runtime half of an exported standalone network file (see lab/export/codegen.py).

Everything below the marker line is copied verbatim into each exported .py, after the
generated half, which imports argparse, math, os, sys, time, torch, torch.distributed as
dist, nn and F and defines build_model(), SPEC, INPUT_SHAPE, NUM_CLASSES, CLASSES, MEAN
and STD. ConvScope never imports this module for its own use; the stand-ins above the
marker only let linters and readers follow it. Torch alone here (plus safetensors for
weights and NumPy for .npz data, both imported where needed).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

SPEC: dict | None = None
INPUT_SHAPE: tuple[int, int, int] = (3, 32, 32)
NUM_CLASSES: int = 10
CLASSES: list[str] | None = None
MEAN: tuple[float, ...] | None = None
STD: tuple[float, ...] | None = None


def build_model() -> nn.Module:
    raise NotImplementedError("defined by the generated half of an exported file")


# ---8<--- copied into exported files from here
def _safetensors():
    """The safetensors.torch module, or an ImportError that says how to get it."""
    try:
        import safetensors.torch as st
    except ImportError:
        raise ImportError("reading or writing weights needs the safetensors package: "
                          "pip install safetensors") from None
    return st


def load(weights_path: str, device: str | torch.device = "cpu") -> nn.Module:
    """The network with trained weights from a .safetensors file, in eval mode."""
    model = build_model()
    state = _safetensors().load_file(str(weights_path), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights_path} does not fit this network: "
                         f"{' '.join(str(e).split())[:400]}") from None
    return model.to(device).eval()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Images -> the float input the network was trained on. uint8 images are scaled from
    0..255 to 0..1, float images are taken to be on 0..1 already; then MEAN/STD apply."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if MEAN is not None and STD is not None:
        mean = torch.tensor(MEAN, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(STD, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N, NUM_CLASSES) for images (N, C, H, W) or one image (C, H, W)."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        return model(normalize(images.to(device))).softmax(dim=1)
    finally:
        model.train(was_training)


def check(args: argparse.Namespace) -> int:
    """`check`: build (and load) the network, run a random batch, print what came out."""
    model = load(args.weights) if args.weights else build_model().eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, *INPUT_SHAPE), generator=gen, dtype=torch.uint8)
    probs = predict(model, images)
    n_params = sum(p.numel() for p in model.parameters())
    note = "" if args.weights else " (untrained: no --weights given)"
    print(f"input {tuple(images.shape)} -> output {tuple(probs.shape)}; "
          f"{n_params:,} parameters{note}")
    top = probs.argmax(dim=1).tolist()
    print("top classes of the random batch:",
          ", ".join(CLASSES[i] if CLASSES else str(i) for i in top))
    return 0


# -- data

def _images(x: torch.Tensor, what: str) -> torch.Tensor:
    c, h, w = INPUT_SHAPE
    if x.dim() == 4 and tuple(x.shape[1:]) == (h, w, c) and tuple(x.shape[1:]) != (c, h, w):
        x = x.permute(0, 3, 1, 2)             # (N, H, W, C), as most image arrays are stored
    if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
        raise ValueError(f"{what} has shape {tuple(x.shape)}; the network takes images of "
                         f"(N, {c}, {h}, {w}) or (N, {h}, {w}, {c})")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"{what} must hold uint8 (0..255) or float (0..1) images, not {x.dtype}")
    return x.contiguous()


def _labels(y: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if y.dim() != 1 or len(y) != n or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{what} must be {n} integer labels, got {tuple(y.shape)} {y.dtype}")
    y = y.long()
    if n and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
        raise ValueError(f"{what} holds labels outside 0..{NUM_CLASSES - 1}")
    return y


def read_data(path: str) -> dict[str, torch.Tensor]:
    """`x`, `y` (and `x_test`, `y_test` when present) from an .npz or .safetensors file."""
    if path.endswith(".safetensors"):
        arrays = _safetensors().load_file(path)
    elif path.endswith(".npz"):
        try:
            import numpy as np
        except ImportError:
            raise ImportError("reading .npz data needs NumPy: pip install numpy") from None
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: torch.from_numpy(f[k]) for k in f.files}
    else:
        raise ValueError(f"{path}: training data must be an .npz or .safetensors file")
    if "x" not in arrays or "y" not in arrays:
        raise ValueError(f"{path} must hold arrays 'x' (images) and 'y' (labels); "
                         f"it holds {', '.join(sorted(arrays)) or 'nothing'}")
    data = {}
    for split in ("", "_test"):
        if f"x{split}" in arrays:
            if f"y{split}" not in arrays:
                raise ValueError(f"{path} holds x{split} but no y{split}")
            x = _images(arrays[f"x{split}"], f"{path}: x{split}")
            data[f"x{split}"] = x
            data[f"y{split}"] = _labels(arrays[f"y{split}"], len(x), f"{path}: y{split}")
    return data


def synthetic_data(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n random but learnable images (each class is its own random template plus noise) and
    n // 4 test images: a smoke test for the training loop, not a benchmark."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(NUM_CLASSES, *INPUT_SHAPE, generator=gen)

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, NUM_CLASSES, (m,), generator=gen)
        noise = torch.rand(m, *INPUT_SHAPE, generator=gen)
        return (255 * (0.6 * templates[y] + 0.4 * noise)).to(torch.uint8), y

    x, y = draw(n)
    x_test, y_test = draw(max(1, n // 4))
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


# -- training

def lr_schedule(kind: str, lr: float, total_steps: int) -> list[float]:
    """Learning rate per step. onecycle (ConvScope's default): 25% linear warm-up from
    lr/25, then cosine to 0; cosine: from lr to 0; constant."""
    n = max(1, total_steps)
    if kind == "constant":
        return [lr] * n
    if kind == "cosine":
        return [lr * 0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)]
    warm = max(1, round(0.25 * n))
    return [lr * (1 / 25 + (1 - 1 / 25) * i / warm) if i < warm
            else lr * 0.5 * (1 + math.cos(math.pi * (i - warm + 1) / (n - warm + 1)))
            for i in range(n)]


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """As ConvScope's trainer: weight decay on weight matrices and kernels only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [g for g in ({"params": decay, "weight_decay": args.weight_decay},
                          {"params": other, "weight_decay": 0.0}) if g["params"]]
    if not groups:
        raise ValueError("the network has no trainable parameters")
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum,
                               nesterov=args.momentum > 0)
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=args.lr)


def _setup(device_arg: str) -> tuple[torch.device, int, int]:
    """(device, rank, world size); joins the process group when torchrun started us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_arg)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device, rank, world


def _sum(stats: torch.Tensor, world: int) -> list[float]:
    """Totals over all processes, read back once."""
    if world > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    return stats.tolist()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int,
             device: torch.device, rank: int, world: int) -> tuple[float, float, int]:
    """(mean loss, accuracy, images) on a test set; each process takes every world-th image."""
    was_training = model.training
    model.eval()
    stats = torch.zeros(3, dtype=torch.float64, device=device)
    index = torch.arange(rank, len(y), world)
    for i in range(0, len(index), batch):
        idx = index[i:i + batch]
        xb, yb = normalize(x[idx].to(device)), y[idx].to(device)
        out = model(xb)
        stats[0] += F.cross_entropy(out, yb, reduction="sum").double()
        stats[1] += (out.argmax(dim=1) == yb).sum()
        stats[2] += len(yb)
    model.train(was_training)
    loss, correct, seen = _sum(stats, world)
    return loss / max(seen, 1), correct / max(seen, 1), int(seen)


def save_weights(model: nn.Module, path: str) -> None:
    """The state_dict as .safetensors, written to a temporary name and renamed when complete."""
    st = _safetensors()
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp")
    st.save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)


def train(args: argparse.Namespace) -> int:
    """`train`: a plain classification loop; DistributedDataParallel under torchrun."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.lr > 0:
        raise ValueError("--lr must be a positive number")
    if args.synthetic is not None and args.synthetic < 1:
        raise ValueError("--synthetic needs a number of images of at least 1")
    _safetensors()                    # refuse before any work when the weights cannot be saved
    device, rank, world = _setup(args.device)
    try:
        return _train(args, device, rank, world)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _train(args: argparse.Namespace, device: torch.device, rank: int, world: int) -> int:
    say = print if rank == 0 else (lambda *a, **k: None)
    torch.manual_seed(args.seed)      # the same initialisation in every process
    data = synthetic_data(args.synthetic, args.seed) if args.synthetic else read_data(args.data)
    model = build_model()
    if args.weights:
        model.load_state_dict(load(args.weights).state_dict(), strict=True)
    model.to(device)
    if args.sync_bn and world > 1:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs GPUs: torch's SyncBatchNorm does not run on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, args)
    x, y = data["x"], data["y"]
    per_rank = len(y) // world
    if per_rank == 0:
        raise ValueError(f"{len(y)} training images cannot be shared by {world} processes")
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} is the global batch and cannot be split "
                         f"evenly over {world} processes; use a multiple of {world}")
    batch = min(args.batch_size // world, per_rank)
    steps = per_rank // batch         # every process takes the same number of steps
    lrs = lr_schedule(args.schedule, args.lr, steps * args.epochs)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    say(f"training on {len(y)} images with {world} process(es) on {device.type}: "
        f"{steps} steps of {batch} per process and epoch", flush=True)
    step = 0
    for epoch in range(1, args.epochs + 1):
        net.train()
        # One seeded permutation shared by all processes, dealt out like DistributedSampler.
        gen = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
        order = torch.randperm(len(y), generator=gen)[:per_rank * world][rank::world]
        stats = torch.zeros(3, dtype=torch.float64, device=device)   # loss sum, correct, images
        t0 = time.perf_counter()
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            xb, yb = normalize(x[idx].to(device)), y[idx].to(device)
            for group in optimizer.param_groups:
                group["lr"] = lrs[step]
            out = net(xb)
            loss = criterion(out, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stats[0] += loss.detach().double() * len(yb)
            stats[1] += (out.detach().argmax(dim=1) == yb).sum()
            stats[2] += len(yb)
            step += 1
        loss_sum, correct, seen = _sum(stats, world)
        seconds = time.perf_counter() - t0
        if not math.isfinite(loss_sum):
            raise ValueError(f"the loss became {loss_sum / seen} in epoch {epoch}; "
                             f"try a lower learning rate than {args.lr:g}")
        line = (f"epoch {epoch}/{args.epochs}  loss {loss_sum / seen:.4f}  acc {correct / seen:.4f}"
                f"  ({int(seen)} images, {seen / max(seconds, 1e-9):.0f} img/s)")
        if "x_test" in data:
            t_loss, t_acc, t_seen = evaluate(model, data["x_test"], data["y_test"], batch,
                                             device, rank, world)
            line += f"  test loss {t_loss:.4f}  acc {t_acc:.4f}  ({t_seen} images)"
        say(line, flush=True)
    if rank == 0:
        save_weights(model, args.out)  # SyncBatchNorm keeps BatchNorm's state_dict keys
        say(f"saved weights to {args.out}", flush=True)
    if world > 1:
        dist.barrier()                 # nobody leaves before rank 0 has saved
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="run a random batch through the network, print shapes")
    c.add_argument("--weights", metavar="FILE", help="trained weights (.safetensors)")
    t = sub.add_parser("train", help="train (under torchrun: on every process)")
    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="FILE", help=".npz or .safetensors with x, y "
                        "(and optionally x_test, y_test)")
    source.add_argument("--synthetic", type=int, nargs="?", const=512, metavar="N",
                        help="N random learnable images (default 512): a smoke test")
    t.add_argument("--epochs", type=int, default=5, metavar="N")
    t.add_argument("--batch-size", type=int, default=128, metavar="B", help="global: split evenly over torchrun's processes")
    t.add_argument("--lr", type=float, default=2e-3, metavar="X", help="peak learning rate")
    t.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (Nesterov)")
    t.add_argument("--weight-decay", type=float, default=5e-4, metavar="X")
    t.add_argument("--schedule", choices=("onecycle", "cosine", "constant"), default="onecycle")
    t.add_argument("--label-smoothing", type=float, default=0.0, metavar="X")
    t.add_argument("--weights", metavar="FILE", help="start from these weights (.safetensors)")
    t.add_argument("--out", default="trained.safetensors", metavar="FILE",
                   help="where rank 0 saves the trained weights (default trained.safetensors)")
    t.add_argument("--sync-bn", action="store_true",
                   help="synchronise BatchNorm statistics across GPUs (SyncBatchNorm)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    t.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        return check(args) if args.command == "check" else train(args)
    except (ValueError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
