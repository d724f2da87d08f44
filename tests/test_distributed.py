"""FusedBAM under DistributedDataParallel (two gloo processes on CPU) and SyncBatchNorm conversion.

The workers inherit TRITON_INTERPRET=1 from conftest through the environment and set it again
before anything imports triton, so the fused gate runs the kernels in them too.
"""

import os
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from bam_fused import BAM, FusedBAM
from bam_fused.models import resnet_bam
from exact import assert_as_exact_as

WORLD = 2
BATCH = 8  # split 4 + 4


def _net() -> nn.Module:
    """conv → BN → ReLU → FusedBAM → pool → fc: (N, 3, 8, 8) → (N, 5), same weights on every call."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        FusedBAM(32, reduction_ratio=8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 5),
    )
    with torch.no_grad():  # distinct running statistics, so eval-mode BN is not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 8, 8, generator=g), torch.randint(0, 5, (BATCH,), generator=g)


def _grads(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    net.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(net(x), y).backward()
    return {k.removeprefix("module."): p.grad.clone() for k, p in net.named_parameters()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y = _data()
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        for train in (False, True):
            ddp = nn.parallel.DistributedDataParallel(_net().train(train))
            torch.save(_grads(ddp, x[shard], y[shard]), os.path.join(out_dir, f"grads{rank}_{train}.pt"))
        # SyncBatchNorm in a process group: eval mode runs (train mode needs CUDA in PyTorch).
        sync = nn.SyncBatchNorm.convert_sync_batchnorm(_net()).eval()
        torch.save(sync(x).detach(), os.path.join(out_dir, f"sync_eval{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Run the two workers once (process start-up dominates); the folder holding their results."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    timeout = 240.0
    ctx = mp.start_processes(
        _worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"DDP workers did not finish within {timeout} s")
    return tmp_path


def _single_process_grads(net: nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool) -> dict:
    """What DDP's averaged gradient must be, computed in one process."""
    net.train(train)
    if train:
        # Train-mode BN normalises each process's shard by its own statistics: DDP's averaged
        # gradient is the mean of the per-shard gradients, not the whole-batch gradient.
        halves = [_grads(net, x[s], y[s]) for s in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH))]
        return {k: (halves[0][k] + halves[1][k]) / 2 for k in halves[0]}
    return _grads(net, x, y)  # eval-mode BN: the mean of the shards' mean losses is the batch's


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True], ids=["bn_eval", "bn_train"])
def test_ddp_gradients_match_single_process(ddp_run, train):
    """Each rank's gradients (float32, another process, shards reduced by gloo) as near the
    single-process float64 ones as the single-process float32 run."""
    x, y = _data()
    want = _single_process_grads(_net(), x, y, train)
    exact = _single_process_grads(_net().double(), x.double(), y, train)
    assert any(k.startswith("3.channel_att") for k in want) and any(k.startswith("3.spatial_att") for k in want)
    for rank in range(WORLD):
        got = torch.load(ddp_run / f"grads{rank}_{train}.pt")
        assert_as_exact_as(got, want, exact, name=f"rank {rank}")
    if not train:
        sync = nn.SyncBatchNorm.convert_sync_batchnorm(_net()).eval()
        ref, ref64 = sync(x).detach(), sync.double()(x.double()).detach()
        for rank in range(WORLD):
            got = torch.load(ddp_run / f"sync_eval{rank}.pt")
            assert_as_exact_as(got, ref, ref64, name=f"rank {rank}: SyncBatchNorm")


def _bn_count(model: nn.Module) -> tuple[int, int]:
    plain = sum(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())
    return plain, sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_convert_sync_batchnorm_fused_bam(variant):
    bam = FusedBAM(64, variant=variant, backend="reference")
    n_bn = 4 + (2 if variant == "paper" else 0)  # bn_1, reduce0, di_0, di_1 (+ two final BNs)
    assert _bn_count(bam) == (n_bn, 0)
    keys = bam.state_dict().keys()
    x = torch.randn(4, 64, 6, 6)
    bam.train()(x)  # move the running statistics away from their init
    bam.eval()
    before = bam(x)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(bam)
    assert isinstance(sync, FusedBAM) and sync.gate_backend == "reference"
    assert _bn_count(sync) == (0, n_bn)
    assert sync.state_dict().keys() == keys
    # The channel gate's BatchNorm1d sees (N, C): SyncBatchNorm accepts 2-D input (it checks dim >= 2).
    assert isinstance(sync.channel_att.gate_c.gate_c_bn_1, nn.SyncBatchNorm)
    torch.testing.assert_close(sync(x), before)
    sync.train()(x)  # outside a process group SyncBatchNorm falls back to batch_norm, 2-D input too


def test_convert_sync_batchnorm_resnet_bam():
    model = resnet_bam(50, "CIFAR100", 100, attention="fused")
    plain, _ = _bn_count(model)
    assert plain == 53 + 3 * 6  # ResNet-50's BNs plus six per paper-variant BAM
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert _bn_count(sync) == (0, plain)
    assert all(isinstance(getattr(sync, f"bam{i}"), FusedBAM) for i in (1, 2, 3))
    assert not any(type(m) is BAM for m in sync.modules())
