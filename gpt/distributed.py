"""Data-parallel training with `torchrun`: the few helpers a training loop needs, in one place.

    torchrun --nproc_per_node=2 scripts/pretrain.py --quick      # 2 processes (CPU: gloo, GPU: nccl)

`torchrun` starts N copies of a script and tells each who it is through environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Each copy holds the whole model; every
optimizer step, each process computes the gradient of its share of the global batch, and
DistributedDataParallel (DDP) averages the gradients across processes during backward, so all
copies take the same step (PyTorch's DDP tutorial: https://pytorch.org/tutorials/intermediate/ddp_tutorial.html).

The contract used by gpt/train.py (and meant for any other loop):
* the global batch is what one process would use; `shard()` gives each rank an equal, interleaved
  share of it (what torch's DistributedSampler does with one epoch's indices), so N processes
  with global batch B compute the same step as one process with batch B, up to the order of
  floating-point additions;
* metrics are averaged over ranks (`all_reduce_mean`) so every rank sees the global number and
  takes the same decisions (stop on NaN, evaluate, save);
* only rank 0 prints, shows a progress bar and writes files (`is_main_process()`);
* with gradient accumulation, only the last micro-batch of a step synchronises gradients
  (`sync_gradients(model, last)` wraps DDP's `no_sync()`), which is DDP's own advice;
* a loop that takes batches from a DataLoader (classify/train.py) gets the same contract from
  `shard_loader(loader)`: every rank builds the one-process loader with the same seed, so all
  ranks draw the same global batches in the same order as one process, and each keeps its
  share (DistributedSampler instead deals examples out before batching, so its batches are not
  the one-process batches and the result cannot be compared with a one-process run).

Without torchrun every helper is a no-op for a single process: rank 0 of a world of 1.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def launched_by_torchrun() -> bool:
    """True when RANK and WORLD_SIZE are set, as torchrun (or a test) does for every process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set; start the script with torchrun")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: torch.device, timeout_minutes: float = 30.0) -> torch.device:
    """Join the process group when launched by torchrun; return the device this process uses.

    gloo on CPU (works everywhere), nccl on CUDA (one GPU per process: cuda:LOCAL_RANK).
    Without torchrun, returns `device` unchanged and starts nothing.
    """
    if not launched_by_torchrun():
        return device
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", default=rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                             f"use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training supports CPU (gloo) and CUDA (nccl), not {device.type!r}")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the one process that prints, shows progress bars and writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait until every process gets here (no-op for one process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (call once at the end of a script).

    Every rank waits for the others first: a rank that tears down its gloo connections while
    rank 0 is still saving can abort the run at exit ("terminate called without an active
    exception", seen in tests/test_distributed.py)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def shard(indices: list[int], rank: int | None = None, world_size: int | None = None) -> list[int]:
    """This rank's share of one global (micro-)batch: indices[rank::world_size].

    Every rank must get equally many examples: DDP averages the ranks' gradients with equal
    weights, which equals the gradient of the mean over the global batch only if each rank's
    loss is a mean over the same number of examples.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if len(indices) % world_size:
        raise ValueError(f"a batch of {len(indices)} examples cannot be split evenly over {world_size} processes; "
                         f"make the (micro-)batch size a multiple of the number of processes")
    return list(indices[rank::world_size])


class ShardedBatchSampler(torch.utils.data.Sampler):
    """This rank's share of every batch that `batch_sampler` (the one-process batches) yields.

    even=True (training): every batch must split evenly over the ranks (see `shard`).
    even=False (evaluation, where only sums and counts are combined): the shares may differ by
    one example, and a rank whose share of a small last batch is empty skips that batch.
    """

    def __init__(self, batch_sampler, rank: int | None = None, world_size: int | None = None, even: bool = True):
        self.batch_sampler, self.even = batch_sampler, even
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def __iter__(self):
        for batch in self.batch_sampler:
            batch = list(batch)
            if self.even:
                yield shard(batch, self.rank, self.world_size)
            elif batch[self.rank :: self.world_size]:
                yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.batch_sampler)  # global batches (a rank may skip an empty last share)


def shard_loader(loader: torch.utils.data.DataLoader, even: bool = True) -> torch.utils.data.DataLoader:
    """The same DataLoader, yielding only this rank's share of each of its batches.

    The loader's own generator is reused, so with a seeded loader (classify.dataset.make_loader)
    every rank shuffles exactly as one process would. Without torchrun: the loader itself.
    """
    if get_world_size() == 1:
        return loader
    if loader.batch_sampler is None:
        raise ValueError("shard_loader needs a DataLoader with batch_size set (it shards whole batches)")
    return torch.utils.data.DataLoader(
        loader.dataset, batch_sampler=ShardedBatchSampler(loader.batch_sampler, even=even),
        collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn, generator=loader.generator,
    )


def _comm_device() -> torch.device:
    """Where collective tensors must live: CUDA for nccl, CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float], device: torch.device | str | None = None) -> list[float]:
    """Element-wise sum of a list of numbers over all ranks (float64; identity for one process).

    device: where the collective runs; None (the usual) picks the backend's own, CUDA for nccl and
    the CPU for gloo, so a loop does not need to know which backend it runs under."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device() if device is None else device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_mean(value: float) -> float:
    """The mean of one number over all ranks (the number itself for one process)."""
    if not is_distributed():
        return value
    return all_reduce_sum([value])[0] / get_world_size()


def all_gather_tensor(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor, in rank order, on the CPU (e.g. RNG states)."""
    if not is_distributed():
        return [t.cpu()]
    device = _comm_device()
    parts = [torch.empty_like(t, device=device) for _ in range(get_world_size())]
    dist.all_gather(parts, t.to(device))
    return [p.cpu() for p in parts]


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP-wrap `model` when running distributed; the model itself otherwise.

    DDP copies rank 0's parameters to every rank when it is built, so all copies start equal.
    Keep a reference to the unwrapped model for saving: its state_dict has no "module." prefix.
    broadcast_buffers=False: this project's buffers are constants (index tables), never updated
    in training like BatchNorm statistics, and not broadcasting them keeps a forward pass free
    of communication, so ranks may evaluate different numbers of batches.
    """
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.13 calls the switch forward_sync_buffers (broadcast_buffers is deprecated there).
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                      else {"broadcast_buffers": False})
    return DDP(model, device_ids=device_ids, **no_buffer_sync)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, DDP) else model


def sync_gradients(model: torch.nn.Module, sync: bool):
    """Context for one micro-batch's backward: with sync=False, DDP only accumulates locally
    (`no_sync()`); the backward of the last micro-batch (sync=True) all-reduces the sum."""
    if isinstance(model, DDP) and not sync:
        return model.no_sync()
    return contextlib.nullcontext()
