"""Data parallelism inside one expert, for experts that outgrow one GPU (torchrun / Flyte ``Elastic``).

The experts never talk to each other; this module only lets the processes of *one* expert split its batches.
The split is chosen so that the number of processes changes nothing but float rounding: every rank draws the
same global batch from the same generators (so batch order, timesteps, noise and caption dropout are those of a
one-process run), keeps its contiguous slice of it, and DDP averages the gradients. A checkpoint written by a
run on 8 GPUs therefore resumes on 1 GPU, and the fingerprint of a run does not include the world size.

The process group is created from the environment that ``torchrun`` and flytekitplugins-kfpytorch's ``Elastic``
set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Workers:
    """Where this process stands among the processes training one model."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, checkpoints and writes the model."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self) -> torch.device:
        """This rank's GPU (``cuda:LOCAL_RANK``), or the CPU where there is none."""
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(device)
        return device

    def shard(self, batch: int) -> slice:
        """Rows of a global batch of ``batch`` samples that this rank computes (contiguous, sizes differ by <= 1)."""
        if batch < self.world:
            raise ValueError(
                f"expert.batch_size={batch} is smaller than the {self.world} training processes: every process "
                "needs at least one sample per step; raise the batch or use fewer processes"
            )
        return slice(self.rank * batch // self.world, (self.rank + 1) * batch // self.world)

    def gather_rows(self, local: torch.Tensor, rows: slice, batch: int) -> torch.Tensor:
        """The per-sample values of the whole batch on every rank, from each rank's ``rows`` (float [batch])."""
        if not self.distributed:
            return local
        full = torch.zeros(batch, dtype=torch.float64, device=local.device)
        full[rows] = local.double()
        dist.all_reduce(full)  # each position is written by exactly one rank, so the sum is that rank's value
        return full.float()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def workers_from_env() -> Workers:
    """The process group this process belongs to, initialised on first use; a single process without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Workers()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Workers(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
