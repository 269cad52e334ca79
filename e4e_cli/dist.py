"""torchrun's environment: the one place that reads RANK, WORLD_SIZE and LOCAL_RANK, and joins
the process group (gloo on the CPU, nccl on CUDA) when there are several processes."""
from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """The process that talks to the user (rank 0, or the only one)."""
    return rank() == 0


class Group:
    """This process's place in the run: rank, world size, local rank; with several processes the
    torch.distributed group is joined at construction (once per process)."""

    def __init__(self, *, backend: str = "gloo"):
        self.world, self.rank, self.local_rank = world_size(), rank(), local_rank()
        self.active = self.world > 1
        if self.active:
            import torch.distributed as td

            if not td.is_initialized():
                td.init_process_group(backend=backend)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            td.barrier()

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes (float64 all-reduce)."""
        if not self.active:
            return value
        import torch
        import torch.distributed as td

        t = torch.tensor([value], dtype=torch.float64)
        td.all_reduce(t)
        return float(t) / self.world

    def close(self) -> None:
        if self.active:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()
