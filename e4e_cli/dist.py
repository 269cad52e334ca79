"""torchrun's environment: the one place that reads RANK, WORLD_SIZE and LOCAL_RANK."""
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
