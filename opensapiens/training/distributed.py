"""Process-group setup from the torchrun environment, model wrapping (DDP / FSDP2) and the few collectives we use.

    torchrun --nproc_per_node 8 -m opensapiens.cli.main train ...     # DDP (or --fsdp) on 8 GPUs
    opensapiens train ...                                             # one process, no process group

FSDP2 shards every transformer block, then the root (the patch embedding, position table, final norm and head stay
in the root group). With bf16 precision its ``MixedPrecisionPolicy`` runs blocks and head on bf16 parameters and
activations while the sharded fp32 master weights, gradients reductions and AdamW state stay fp32. One GPU may use
FSDP too: it is then simply the bf16-parameter path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .readback import Readback


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        if torch.cuda.is_available() and local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} has no GPU: this machine has {torch.cuda.device_count()}; start at "
                             "most that many processes per node, or pass --device cpu")
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local, dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under a DDP wrapper (FSDP2 shards in place and needs no unwrapping)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def shard_fsdp(model: nn.Module, blocks: nn.ModuleList, info: DistInfo, bf16: bool,
               reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2: ``fully_shard`` each block, then the root. Builds a 1-D mesh over all ranks (or just this device)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():  # one process: a single-rank group (in-process store) so FSDP has a mesh
        dist.init_process_group("nccl" if info.device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of an accumulated step."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
        yield
    elif isinstance(model, nn.parallel.DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


class StopVote:
    """Whether any rank was asked to stop (SIGTERM) or ran out of time, agreed by all ranks without the host waiting
    for the GPU.

    Each step's votes (one count per reason) are summed by an all-reduce queued behind the step and read at the next
    step, so every rank stops at the same step: the one after the first rank's request (one process: at once).
    """

    def __init__(self, info: DistInfo, device: torch.device) -> None:
        self.info, self.device = info, device
        self._last: Readback | None = None  # the previous step's summed votes

    def __call__(self, *requested: bool) -> tuple[bool, ...]:
        if not self.info.distributed:
            return requested
        agreed = (tuple(v > 0 for v in self._last.tolist()) if self._last is not None
                  else (False,) * len(requested))
        votes = torch.zeros(len(requested), device=self.device)  # filled on the device: no host-to-device copy
        for i in (i for i, r in enumerate(requested) if r):
            votes[i] = 1.0
        self._last = Readback(all_reduce_sum(votes))
        return agreed


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank (rank order); [obj] without a process group."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
