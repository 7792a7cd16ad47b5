"""Processes started by ``torchrun``: which device each one uses and its rank in the process group.

Meta-training (data-parallel hypernetwork training) and the benchmark (edits sharded over the
processes) both start here, so a run under ``torchrun`` sets up its process group one way.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist


def best_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed_from_env(device: str | torch.device | None = None) -> torch.device:
    """The device this process should use; under ``torchrun`` also initialise ``torch.distributed``.

    ``device`` ``None`` means CUDA when available, else CPU. On CUDA each process takes the GPU
    of its ``LOCAL_RANK`` and the NCCL backend; on CPU the gloo backend. Asking for more
    processes per node than there are GPUs is a clear error, not a crash inside NCCL. A process
    group that is already initialised is kept.
    """
    wanted = torch.device(device) if device is not None else best_device()
    if not launched_by_torchrun():
        return wanted
    if wanted.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"process {local_rank} of this node has no GPU (only {torch.cuda.device_count()} visible); "
                               "start at most that many processes per node, or pass --device cpu")
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    return wanted


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def process_group_from_env(device: str | torch.device | None = None) -> Iterator[torch.device]:
    """:func:`init_distributed_from_env` for the duration of a ``with`` block.

    A process group the block started is destroyed when it ends (after every process got there,
    unless the block raised), so no process exits with live communication threads; a group that
    was already initialised is left as it is.
    """
    started = launched_by_torchrun() and not dist.is_initialized()
    wanted = init_distributed_from_env(device)
    try:
        yield wanted
        if started:
            dist.barrier()
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()
