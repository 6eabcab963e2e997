"""Multi-process data-parallel training (torch.distributed DDP) under torchrun.

    torchrun --nproc-per-node 2 -m qkov train --corpus repeated-random ...

Every process builds the same global batch from (seed, step) and trains on its own equal
share of the rows; DDP averages the gradients, so each step matches a single process
taking the whole global batch (up to float summation order). gloo on CPU, nccl on CUDA
(one GPU per process, cuda:LOCAL_RANK). Only rank 0 writes files; every rank resumes
from the same train_state.safetensors. Without torchrun (WORLD_SIZE unset or 1) every
function here is a no-op, and nothing imports torch.distributed.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qkov.errors import QkovError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank of world, and the device it trains on."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and progress."""
        return self.rank == 0


def launched_rank() -> int:
    """This process's rank as torchrun set it (RANK), before `setup` joins the group; 0
    without torchrun."""
    return int(os.environ.get("RANK", "0"))


def setup(device: str, batch_size: int) -> Dist:
    """Join the torchrun process group if WORLD_SIZE > 1; check the batch splits evenly."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    import torch.distributed as dist

    if batch_size % world:
        raise QkovError(
            f"--batch-size {batch_size} does not split over {world} processes: "
            f"use a multiple of {world} (it is the global batch)"
        )
    if torch.device(device).type == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        # Left open until exit: a second train() in this process (e.g. a resume) reuses it;
        # re-initialising after destroy_process_group hangs under torchrun's rendezvous.
        atexit.register(dist.destroy_process_group)
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def share(batch: Tensor, d: Dist) -> Tensor:
    """This rank's rows of the global batch [batch, ...] -> [batch / world, ...]."""
    if d.world == 1:
        return batch
    n = batch.shape[0] // d.world
    return batch[d.rank * n : (d.rank + 1) * n]


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """DDP around the model (gradients averaged over ranks in backward), or the model."""
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(d.device).index] if d.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids)


def mean_and_any(value: float, flag: bool, d: Dist) -> tuple[float, bool]:
    """Mean of `value` over ranks and whether any rank raised `flag` (one all-reduce).

    Every rank then sees the same loss (so a NaN stops all of them) and the same stop
    request (so a signal stops all of them at the same step)."""
    if d.world == 1:
        return value, flag
    import torch.distributed as dist

    t = torch.tensor([value, float(flag)], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t[0]) / d.world, bool(t[1] > 0)


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def main_first(d: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills the token cache), then the others."""
    if not d.main:
        barrier(d)
    yield
    if d.main:
        barrier(d)


def teardown(d: Dist) -> None:
    """Wait for every rank (rank 0 may still be writing its last checkpoint)."""
    barrier(d)
