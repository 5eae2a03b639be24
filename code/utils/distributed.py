"""Multi-process training with torchrun: ranks from the environment, DDP wrapping, agreement across ranks.

`torchrun --nproc_per_node N code/train_<method>_ACDC.py ...` sets RANK / WORLD_SIZE / LOCAL_RANK (never a
--local_rank flag); a plain `python ...` run has none of them and nothing here changes it.
Semantics: --batch_size and --labeled_bs are per process (global batch = N x batch_size, same labeled share on
every rank); the learning rate is not rescaled. Rank 0 alone logs, writes tensorboard, validates and saves.
"""
import functools
import inspect
import os

import torch
import torch.distributed as dist
import torch.nn as nn


def distributed_env():
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) for a plain run."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def local_world_size():
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE): they share its cores. 1 for a plain run."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def init_process_group(device):
    """NCCL on CUDA, gloo on CPU; a no-op when a group already exists (tests, notebooks)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


class _MethodForward(nn.Module):
    """Routes `forward(*args, _method=name)` to any method of the network, so DDP sees every entry point."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, *args, _method="forward", **kwargs):
        return getattr(self.net, _method)(*args, **kwargs)


class DistributedNet:
    """A network in DistributedDataParallel that is called like the network itself: `model(x)`,
    `model.all_logits(x)`, `rectifier.training_losses(...)` all pass through DDP's forward (gradient sync).
    Parameters, state dicts and evaluation use the network itself.

    Buffers are not broadcast: the scripts run several forwards before one backward (weak and strong views),
    and DDP's in-place copy of BatchNorm's running statistics into a network whose first forward saved them
    for backward fails it ("modified by an inplace operation", seen with torch 2.11 on CPU). On CUDA,
    SyncBatchNorm's global batch statistics keep the running statistics equal on every rank anyway; on CPU
    (gloo, plain BatchNorm) each rank keeps its own, and rank 0's are the ones validated and saved."""

    def __init__(self, net, device, find_unused=False):
        if device.type == "cuda":  # SyncBatchNorm is CUDA-only; it keeps the Parameter objects (optimizers stay valid)
            nn.SyncBatchNorm.convert_sync_batchnorm(net)
        self.net = net
        # torch >= 2.13 names the flag forward_sync_buffers (broadcast_buffers warns there); at init buffers are
        # synced either way, which is harmless: every rank builds the same network from the same seed
        ddp_cls = nn.parallel.DistributedDataParallel
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp_cls).parameters \
            else {"broadcast_buffers": False}
        self.ddp = ddp_cls(_MethodForward(net), find_unused_parameters=find_unused,
                           device_ids=[device.index] if device.type == "cuda" else None, **no_sync)

    def __call__(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)

    def __getattr__(self, name):
        if not callable(getattr(self.net, name, None)) or isinstance(getattr(self.net, name), nn.Module):
            raise AttributeError(f"{name!r}: only methods pass through DDP; use the network itself for attributes")
        return functools.partial(self.ddp, _method=name)


def all_ranks_true(flag, device):
    """True on every rank only when `flag` is true on every rank (so all ranks take the same branch)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


@torch.no_grad()
def replicas_differ(models, device):
    """Names of the models whose weights differ between ranks (a cheap checksum per model); [] when in sync."""
    differ = []
    for name, m in models.items():
        s = torch.stack([p.double().sum() for p in m.parameters()]).to(device)
        lo, hi = s.clone(), s.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            differ.append(name)
    return differ
