"""Data-parallel training with `torch.distributed`: the same command runs as one process or
under `torchrun` (gloo on CPU, NCCL on GPUs, one or many nodes).

Every process draws the same global batch order, subnets and augmentation (same seeds) and
takes its own contiguous part of each global batch. After all members of a step have run
their backward, the accumulated gradients are summed across processes in one flat all-reduce,
each weighted by its share of the global batch, so the step equals a single-process step on
the whole batch up to float summation order.

Why not `DistributedDataParallel`: a step runs several forwards of *different* subnets (each
uses a different slice of every weight) before one optimizer step. DDP's reducer expects one
forward per backward and the same set of used parameters, and would need ``no_sync`` plus
``find_unused_parameters`` per member; a single all-reduce of the accumulated gradient is the
same arithmetic with less machinery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank 0 of 1 without torchrun."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this call created the process group, so it also ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Join the process group `torchrun` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world == 1:
        return Dist(0, 1, device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device, owns)


def shard(batch: torch.Tensor, d: Dist) -> torch.Tensor:
    """This process's contiguous part of a global batch of indices."""
    return batch.tensor_split(d.world)[d.rank] if d.world > 1 else batch


def broadcast_parameters(model: torch.nn.Module, d: Dist) -> None:
    """Make every process start from rank 0's weights."""
    if d.world > 1:
        for t in model.state_dict().values():
            dist.broadcast(t, src=0)


def reduce_gradients(params: list[torch.nn.Parameter], share: float, stats: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum ``share * grad`` over processes into every ``.grad``; also sums ``stats`` (already
    weighted) and returns them. Parameters no member used count as zero gradients."""
    if d.world == 1:
        return stats
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [stats.to(grads[0].dtype).reshape(-1)])
    flat[:-stats.numel()] *= share
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
    return flat[offset:].to(stats.dtype)


def all_gather_strings(text: str, d: Dist) -> list[str]:
    if d.world == 1:
        return [text]
    out: list[str] = [""] * d.world
    dist.all_gather_object(out, text)
    return out


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()
