"""``bam-train``: train ResNet+BAM on CIFAR-10/100, the bundled digits (or synthetic data), alone or under torchrun.

    bam-train --data ./cifar --dataset cifar100 --download --depth 50 --epochs 200 --out runs/r50
    bam-train --dataset digits --image-size 16 --epochs 10 --out runs/digits        # bundled, no download
    bam-train --synthetic --steps-per-epoch 2 --epochs 1 --out /tmp/smoke          # no data needed
    torchrun --nproc_per_node 2 -m bam_fused.train --synthetic --out /tmp/ddp       # DDP (gloo/nccl)
    bam-train --ablation --epochs 30 --data ./cifar --out runs/ablation              # paper Table 1

Writes to ``--out``: ``metrics.csv`` (one row per epoch), ``metrics.png``, and checkpoints in the
released script's format, ``checkpoint.pth.tar`` (latest) and ``model_best.pth.tar``:
``{'epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer'}`` plus ``scheduler``/``scaler``/``args``
for an exact ``--resume``. Under DDP the state_dict keys carry ``module.`` like the released
script's. With ``--ablation``: ``ablation.csv`` and ``ablation.md`` and one sub-folder per config.
Nothing is downloaded unless ``--download`` is given with ``--data``.
"""

import argparse
import csv
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from . import digits
from .common import BACKENDS, BRANCHES, COMBINES, DTYPES, VARIANTS
from .models import load_released_checkpoint, resnet_bam
from .models.resnet import ATTENTIONS, DEPTHS

CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": digits.NUM_CLASSES}
METRIC_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "images_per_s",
    "epoch_time_s",
)
ABLATION_FIELDS = (
    "name",
    "attention",
    "dilation",
    "reduction",
    "combine",
    "branches",
    "params",
    "best_val_acc",
    "final_val_acc",
    "final_val_loss",
    "train_time_s",
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``bam-train`` (see the module docstring for examples)."""
    p = argparse.ArgumentParser(prog="bam-train", description=__doc__.split("\n\n")[0])
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, help="torchvision CIFAR root (needs torchvision)")
    data.add_argument("--dataset", choices=sorted(NUM_CLASSES), default="cifar100")
    data.add_argument("--download", action="store_true", help="let torchvision download into --data")
    data.add_argument("--synthetic", action="store_true", help="random learnable data; no files, no network")
    data.add_argument("--synthetic-size", type=int, default=512, help="synthetic training images (val: 1/4)")
    data.add_argument("--image-size", type=int, default=32, help="synthetic/digits image side (CIFAR is 32)")
    data.add_argument("--workers", type=int, default=2, help="DataLoader workers (torchvision data only)")
    model = p.add_argument_group("model")
    model.add_argument("--depth", type=int, default=18, choices=tuple(DEPTHS))
    model.add_argument("--attention", choices=[a or "none" for a in ATTENTIONS], default="fused")
    model.add_argument("--variant", choices=VARIANTS, default=VARIANTS[0])
    model.add_argument("--combine", choices=COMBINES, help="default: the variant's")
    model.add_argument("--reduction", type=int, default=16, help="BAM reduction ratio r")
    model.add_argument("--dilation", type=int, default=4, help="BAM dilation d")
    model.add_argument("--branches", choices=BRANCHES, default=BRANCHES[0])
    model.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0], help="gate")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=200)
    opt.add_argument("--batch-size", type=int, default=128, help="per process")
    opt.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (cosine-annealed per step)")
    opt.add_argument("--momentum", type=float, default=0.9)
    opt.add_argument("--weight-decay", type=float, default=5e-4)
    opt.add_argument("--steps-per-epoch", type=int, default=None, help="cap on train/val steps per epoch")
    opt.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast dtype")
    opt.add_argument("--channels-last", action="store_true")
    opt.add_argument("--compile", action="store_true", help="torch.compile the model")
    opt.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP (CUDA only)")
    opt.add_argument("--seed", type=int, default=0)
    run = p.add_argument_group("run")
    run.add_argument("--out", type=Path, default=Path("runs/bam"), help="output folder")
    run.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="checkpoint written by this tool; training continues from its epoch and step on the cosine schedule "
        "of this run's --lr and --epochs (a larger --epochs extends the schedule from the steps already taken)",
    )
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    run.add_argument("--ablation", action="store_true", help="run the paper's Table 1 grid")
    run.add_argument("--ablation-subset", type=int, default=None, help="only the first N ablation configs")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject contradictory or out-of-range options with an argparse error naming them."""
    if args.dataset == "digits":
        if args.synthetic or args.data is not None:
            p.error("--dataset digits is bundled with the package: it takes neither --data nor --synthetic")
    elif args.synthetic == (args.data is not None):
        p.error("give exactly one of --data DIR or --synthetic (or --dataset digits)")
    if args.download and args.data is None:
        p.error("--download needs --data DIR")
    for name in ("epochs", "batch_size", "reduction", "dilation", "synthetic_size", "image_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        p.error(f"--steps-per-epoch must be >= 1, got {args.steps_per_epoch}")
    if args.ablation_subset is not None and not args.ablation:
        p.error("--ablation-subset needs --ablation")
    if args.ablation and args.resume is not None:
        p.error("--resume resumes one run; it does not combine with --ablation")


# --------------------------------------------------------------------------------------------- setup


class Dist:
    """This process's place under torchrun (RANK/WORLD_SIZE/LOCAL_RANK), or a single process."""

    def __init__(self, device_arg: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.enabled = self.world_size > 1
        self.owns_group = self.enabled and not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group("nccl" if use_cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (float64 on the wire)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def synthetic_data(n: int, size: int, classes: int, seed: int) -> TensorDataset:
    """``n`` images (n, 3, size, size) whose class shifts a fixed random template: learnable, offline."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 3, size, size, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, classes, (n,), generator=g)
    images = torch.randn(n, 3, size, size, generator=g) + templates[labels]
    return TensorDataset(images, labels)


def cifar_data(args) -> tuple[Dataset, Dataset]:
    """torchvision CIFAR train/test sets with the usual crop+flip augmentation."""
    try:
        import torchvision
        from torchvision import transforms as T
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise SystemExit(
            f"--data needs torchvision, which failed to import ({exc!r}); install the torchvision matching "
            f"torch {torch.__version__}, or use --synthetic"
        ) from exc
    norm = T.Normalize(CIFAR_MEAN[args.dataset], CIFAR_STD[args.dataset])
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.ToTensor(), norm])
    cls = torchvision.datasets.CIFAR10 if args.dataset == "cifar10" else torchvision.datasets.CIFAR100
    try:
        train = cls(str(args.data), train=True, download=args.download, transform=train_tf)
        test = cls(str(args.data), train=False, download=args.download, transform=test_tf)
    except RuntimeError as exc:
        raise SystemExit(f"{args.dataset} not in --data {args.data} ({exc}); add --download") from exc
    return train, test


def make_loaders(args, ddp: Dist) -> tuple[DataLoader, DataLoader, DistributedSampler | None]:
    """Train and validation loaders; each process sees its own shard under DDP."""
    classes = NUM_CLASSES[args.dataset]
    if args.synthetic:
        train = synthetic_data(args.synthetic_size, args.image_size, classes, seed=args.seed)
        val = synthetic_data(max(args.synthetic_size // 4, 1), args.image_size, classes, seed=args.seed + 1)
        workers = 0
    elif args.dataset == "digits":
        train, val = digits.digits_datasets(args.image_size)
        workers = 0
    else:
        train, val = cifar_data(args)
        workers = args.workers
    sampler = DistributedSampler(train, seed=args.seed) if ddp.enabled else None
    val_sampler = DistributedSampler(val, shuffle=False) if ddp.enabled else None
    pin = ddp.device.type == "cuda"
    common = dict(batch_size=args.batch_size, num_workers=workers, pin_memory=pin)
    train_loader = DataLoader(train, shuffle=sampler is None, sampler=sampler, drop_last=True, **common)
    val_loader = DataLoader(val, shuffle=False, sampler=val_sampler, **common)
    if len(train_loader) == 0:
        raise SystemExit(
            f"--batch-size {args.batch_size} is larger than the {len(train) // ddp.world_size} training "
            f"images per process"
        )
    return train_loader, val_loader, sampler


def arch_name(args) -> str:
    """Released-style arch string, e.g. ``resnet50_bam-fused`` (checked on --resume)."""
    return f"resnet{args.depth}_{'plain' if args.attention == 'none' else 'bam-' + args.attention}"


def build_model(args, ddp: Dist) -> tuple[nn.Module, nn.Module]:
    """(model as trained: maybe DDP/compiled, the bare resnet_bam)."""
    network_type = "CIFAR10" if args.dataset == "cifar10" else "CIFAR100"
    kwargs = {}
    if args.attention != "none":
        kwargs = dict(
            variant=args.variant,
            combine=args.combine,
            reduction_ratio=args.reduction,
            dilation_val=args.dilation,
            branches=args.branches,
        )
        if args.attention == "fused":
            kwargs["backend"] = args.backend
    attention = None if args.attention == "none" else args.attention
    bare = resnet_bam(args.depth, network_type, NUM_CLASSES[args.dataset], attention=attention, **kwargs)
    bare = bare.to(ddp.device)
    if args.channels_last:
        bare = bare.to(memory_format=torch.channels_last)
    if args.sync_bn:
        if not (ddp.enabled and ddp.device.type == "cuda"):
            raise SystemExit("--sync-bn needs DDP on CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        bare = nn.SyncBatchNorm.convert_sync_batchnorm(bare)
    model = bare
    if ddp.enabled:
        device_ids = [ddp.local_rank] if ddp.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if args.compile:
        model = torch.compile(model)
    return model, bare


# ------------------------------------------------------------------------------------------ training


def run_epoch(model, loader, ddp: Dist, args, optimizer=None, scheduler=None, scaler=None, desc=""):
    """One pass over ``loader`` (training when ``optimizer`` is given); returns (loss, acc %, images/s).

    Loss and accuracy are averaged over all processes' images.
    """
    training = optimizer is not None
    model.train(training)
    amp_dtype = DTYPES[args.amp] if args.amp else None
    autocast = torch.autocast(ddp.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    steps = len(loader) if args.steps_per_epoch is None else min(len(loader), args.steps_per_epoch)
    bar = None
    if ddp.main and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True)
    loss_sum = correct = seen = 0.0
    start = time.perf_counter()
    with torch.set_grad_enabled(training):
        for step, (images, labels) in enumerate(loader):
            if step >= steps:
                break
            images = images.to(ddp.device, non_blocking=True)
            labels = labels.to(ddp.device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = model(images)
                loss = F.cross_entropy(logits.float(), labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
            n = labels.numel()
            loss_sum += loss.item() * n
            correct += (logits.argmax(1) == labels).sum().item()
            seen += n
            if bar is not None:
                rate = seen * ddp.world_size / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}", img_s=int(rate))
                bar.update(1)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start
    loss_sum, correct, seen = ddp.sum([loss_sum, correct, seen])
    seen = max(seen, 1.0)
    return loss_sum / seen, 100.0 * correct / seen, seen / max(elapsed, 1e-9)


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics CSV written by this tool (empty when absent)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_metrics(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot_metrics(path: Path, rows: list[dict], title: str) -> None:
    """Loss and accuracy per epoch, train and validation, as a PNG (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split in ("train", "val"):
            ax.plot(epochs, [float(r[f"{split}_{key}"]) for r in rows], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)" if key == "acc" else "cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_one(args, ddp: Dist) -> dict:
    """Train one configuration into ``args.out``; returns its summary (best/final val acc, …)."""
    torch.manual_seed(args.seed)
    out: Path = args.out
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
    train_loader, val_loader, sampler = make_loaders(args, ddp)
    model, bare = build_model(args, ddp)
    decay, no_decay = [], []
    for p in bare.parameters():
        # BN/bias parameters are 1-D; weight decay on them only fights the normalisation.
        (no_decay if p.dim() <= 1 else decay).append(p)
    optimizer = torch.optim.SGD(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=True,
    )
    steps = min(len(train_loader), args.steps_per_epoch or len(train_loader))
    scaler = torch.amp.GradScaler(ddp.device.type, enabled=args.amp == "fp16")
    start_epoch, done_steps, best = 0, 0, 0.0
    rows = []
    if args.resume is not None:
        info = load_released_checkpoint(bare, args.resume, map_location=ddp.device)
        ckpt = info["checkpoint"]
        if ckpt.get("arch") != arch_name(args):
            raise SystemExit(f"--resume {args.resume}: arch {ckpt.get('arch')!r} != {arch_name(args)!r}")
        optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best = int(ckpt["epoch"]), float(ckpt["best_prec1"])
        # The optimizer steps taken so far: the scheduler counts them (a checkpoint without one: whole epochs).
        done_steps = ckpt["scheduler"]["last_epoch"] if "scheduler" in ckpt else start_epoch * steps
        rows = [r for r in read_metrics(out / "metrics.csv") if int(r["epoch"]) <= start_epoch]
    scheduler = cosine_schedule(optimizer, args.lr, steps * args.epochs, done_steps)
    summary = {"params": sum(p.numel() for p in bare.parameters())}
    t0 = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        e0 = time.perf_counter()
        tag = f"epoch {epoch + 1}/{args.epochs}"
        tr_loss, tr_acc, rate = run_epoch(model, train_loader, ddp, args, optimizer, scheduler, scaler, tag)
        va_loss, va_acc, _ = run_epoch(model, val_loader, ddp, args, desc=f"{tag} val")
        row = dict(
            epoch=epoch + 1,
            lr=f"{lr:.6g}",
            train_loss=f"{tr_loss:.6f}",
            train_acc=f"{tr_acc:.4f}",
            val_loss=f"{va_loss:.6f}",
            val_acc=f"{va_acc:.4f}",
            images_per_s=f"{rate:.2f}",
            epoch_time_s=f"{time.perf_counter() - e0:.3f}",
        )
        rows.append(row)
        is_best = va_acc > best or epoch == start_epoch == 0
        best = max(best, va_acc)
        if ddp.main:
            ckpt = {
                "epoch": epoch + 1,
                "arch": arch_name(args),
                "state_dict": model_state(model),
                "best_prec1": best,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "args": {k: str(v) for k, v in vars(args).items()},
            }
            torch.save(ckpt, out / "checkpoint.pth.tar")
            if is_best:
                shutil.copyfile(out / "checkpoint.pth.tar", out / "model_best.pth.tar")
            write_metrics(out / "metrics.csv", rows)
            plot_metrics(out / "metrics.png", rows, arch_name(args))
            print(
                f"{tag}: train loss {tr_loss:.4f} acc {tr_acc:.2f}% | "
                f"val loss {va_loss:.4f} acc {va_acc:.2f}% | {rate:.1f} img/s",
                flush=True,
            )
    final = rows[-1] if rows else {}
    summary.update(
        best_val_acc=best,
        final_val_acc=float(final.get("val_acc", "nan")),
        final_val_loss=float(final.get("val_loss", "nan")),
        train_time_s=time.perf_counter() - t0,
    )
    return summary


def cosine_schedule(optimizer, lr: float, total_steps: int, done_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate ``lr · ½(1 + cos(π · step / total_steps))`` per optimizer step, set for
    step ``done_steps``. Built from this run's --lr and --epochs, after --resume has restored the
    optimizer, so a resumed run follows the schedule of an uninterrupted run with these options:
    a larger --epochs continues the longer cosine from the steps already taken (the checkpoint's
    own schedule, which has reached 0 at its end, is not kept)."""
    for group in optimizer.param_groups:
        group["initial_lr"] = lr  # what the factor multiplies, whatever lr the checkpoint's groups ended at
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total_steps, 1.0))), last_epoch=done_steps - 1
    )


def model_state(model: nn.Module) -> dict:
    """The state dict to save: DDP keeps its ``module.`` prefix (as the released script's
    DataParallel did); torch.compile's ``_orig_mod.`` wrapper is looked through."""
    return getattr(model, "_orig_mod", model).state_dict()


# ------------------------------------------------------------------------------------------ ablation


def ablation_grid() -> list[dict]:
    """The paper's Table 1 configurations (CIFAR-100, ResNet50 there), deduplicated, baseline first.

    (a) dilation d ∈ {1, 2, 4, 8} at r = 16; (b) reduction r ∈ {4, 8, 16} at d = 4;
    (c) combine sum / product / max; (d) channel-only and spatial-only. Defaults: d = 4, r = 16, sum.
    """
    base = dict(attention="fused", dilation=4, reduction=16, combine="sum", branches="both")
    grid = [dict(base, name="baseline (no BAM)", attention="none")]
    grid += [dict(base, name=f"d={d}" + (" (r=16, sum)" if d == 4 else ""), dilation=d) for d in (1, 2, 4, 8)]
    grid += [dict(base, name=f"r={r}", reduction=r) for r in (4, 8)]  # r=16 is d=4 above
    grid += [dict(base, name=f"combine={c}", combine=c) for c in ("product", "max")]  # sum is d=4
    grid += [dict(base, name=f"{b}-only", branches=b) for b in ("channel", "spatial")]
    return grid


def run_ablation(args, ddp: Dist) -> list[dict]:
    """Train every Table 1 configuration for ``--epochs``; write ablation.csv and ablation.md."""
    grid = ablation_grid()[: args.ablation_subset]
    results = []
    for i, cfg in enumerate(grid):
        if ddp.main:
            print(f"[ablation {i + 1}/{len(grid)}] {cfg['name']}", flush=True)
        sub = argparse.Namespace(**vars(args))
        for key in ("attention", "dilation", "reduction", "combine", "branches"):
            setattr(sub, key, cfg[key])
        if cfg["attention"] != "none" and args.attention == "bam":
            sub.attention = "bam"  # the grid's modules, eagerly, when the user asked for eager BAM
        slug = cfg["name"].split(" ")[0].replace("=", "")
        sub.out = args.out / f"{i:02d}_{slug}"
        summary = train_one(sub, ddp)
        row = {k: cfg[k] for k in ABLATION_FIELDS if k in cfg}
        results.append({**row, **summary, "attention": sub.attention})
    if ddp.main:
        write_ablation(args.out, results, args)
    return results


def write_ablation(out: Path, results: list[dict], args) -> None:
    """``ablation.csv`` and ``ablation.md`` (a markdown table) with one row per configuration."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ABLATION_FIELDS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in ABLATION_FIELDS} for r in results)
    lines = [
        f"# BAM ablation (paper Table 1 grid): ResNet-{args.depth}, {args.dataset}"
        f"{' (synthetic)' if args.synthetic else ''}, {args.epochs} epochs",
        "",
        "| config | d | r | combine | branches | params (M) | best val acc (%) | final val acc (%) | final val loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        bam = r["attention"] != "none"
        lines.append(
            f"| {r['name']} | {r['dilation'] if bam else '–'} | {r['reduction'] if bam else '–'} | "
            f"{r['combine'] if bam else '–'} | {r['branches'] if bam else '–'} | {r['params'] / 1e6:.2f} | "
            f"{r['best_val_acc']:.2f} | {r['final_val_acc']:.2f} | {r['final_val_loss']:.4f} |"
        )
    (out / "ablation.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bam-train`` / ``examples/train_cifar.py``; returns the exit status (0)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    ddp = Dist(args.device)
    try:
        if args.ablation:
            run_ablation(args, ddp)
        else:
            train_one(args, ddp)
    finally:
        ddp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
