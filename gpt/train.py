"""Pre-training loop for a GPTModel: next-token cross-entropy, AdamW, warm-up + cosine learning
rate, periodic evaluation on held-out windows, resumable checkpoints.

Resuming is exact: the data order of epoch e is a permutation drawn from a generator seeded
with (seed, e), the learning rate is a pure function of the step, and the checkpoint holds the
model, the optimizer and torch's random state (dropout). On a CPU, a run stopped and resumed
gives the same numbers as one that never stopped (tests/test_train.py checks it with torch.equal).

The same loop runs unchanged under `torchrun --nproc_per_node=N` (gpt/distributed.py): the
model is wrapped in DistributedDataParallel, every rank takes an equal share of each global
micro-batch, losses are averaged over ranks, and only rank 0 prints and saves. N processes
with global batch B take the same steps as one process with batch B, up to floating-point
summation order (tests/test_distributed.py). With dropout on, each rank draws its own masks,
so that equality is statistical, not numerical.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from gpt.checkpoint import check_same_size, load_training_state, save_model, save_training_state
from gpt.device import autocast
from gpt.distributed import (all_gather_tensor, all_reduce_mean, all_reduce_sum, barrier, get_rank, get_world_size,
                             shard, sync_gradients, wrap_model)


def lm_loss(model, inputs, targets):
    """Mean next-token cross-entropy; inputs, targets: (b, T) -> scalar (nats per token)."""
    logits = model(inputs)  # (b, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def evaluate_lm(model, data: Dataset, batch_size: int, device, max_batches: int | None = None, bf16=None) -> float:
    """Mean loss over (up to max_batches) batches of `data` in order, with dropout off.

    Under torchrun the batches are dealt out to the ranks (batch j to rank j % N) and the sum
    and count are added up over ranks, so every rank returns the one-process number; call it
    on every rank, with the plain (not DDP-wrapped) model.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    n = len(data) if max_batches is None else min(len(data), max_batches * batch_size)
    for start in list(range(0, n, batch_size))[get_rank()::get_world_size()]:
        inputs, targets = _collate([data[i] for i in range(start, min(start + batch_size, n))], device)
        with autocast(device, bf16):
            total += lm_loss(model, inputs, targets).item()
        count += 1
    model.train(was_training)
    if get_world_size() > 1:
        total, count = all_reduce_sum([total, count])
    return total / max(count, 1)


def _collate(items, device):
    inputs = torch.stack([x for x, _ in items]).to(device)
    targets = torch.stack([y for _, y in items]).to(device)
    return inputs, targets


def learning_rate(step: int, max_steps: int, lr: float, warmup_steps: int, min_lr: float) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at `max_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class PretrainConfig:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # windows per optimizer step (split into grad_accum micro-batches)
    grad_accum: int = 1  # micro-batches per step: same result, less memory
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 20
    save_every: int = 100
    seed: int = 123
    bf16: bool | None = None  # None: on CUDA only

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PretrainConfig.{name} must be a positive integer, got {value!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"PretrainConfig.lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0):
            raise ValueError(f"PretrainConfig.min_lr must be a finite number >= 0, got {self.min_lr}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"PretrainConfig.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"PretrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"PretrainConfig.grad_clip must be > 0 or None (no clipping), got {self.grad_clip}")


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)


def batch_indices(step: int, micro: int, n_items: int, cfg: PretrainConfig) -> list[int]:
    """Window indices of micro-batch `micro` of optimizer step `step`: a pure function of the step,
    which is what makes resuming exact."""
    micro_size = cfg.batch_size // cfg.grad_accum
    per_epoch = n_items // cfg.batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
    start = position * cfg.batch_size + micro * micro_size
    return order[start : start + micro_size].tolist()


def pretrain(model, train_data: Dataset, val_data: Dataset, cfg: PretrainConfig, out_dir: str | Path,
             device=torch.device("cpu"), resume: bool = True, on_eval=None) -> History:
    """Train `model` in place; writes out_dir/train_state.pt (resumable) every `save_every` steps
    and out_dir/model.safetensors at the end. Returns the loss history.

    Under torchrun (gpt.distributed.init_distributed called first) every rank calls this with
    the same arguments; `cfg.batch_size` is the global batch. `on_eval(step, model)` runs on
    rank 0 only. A loss or gradient that is not finite raises FloatingPointError before the
    optimizer step, so the weights in memory and the last saved state are still the good ones.
    """
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by grad_accum={cfg.grad_accum}")
    if len(train_data) < cfg.batch_size:
        raise ValueError(f"{len(train_data)} training windows are fewer than one batch of {cfg.batch_size}")
    rank, world_size = get_rank(), get_world_size()
    main = rank == 0
    micro_size = cfg.batch_size // cfg.grad_accum
    if micro_size % world_size:
        raise ValueError(f"a micro-batch of {micro_size} windows (batch_size={cfg.batch_size} / grad_accum="
                         f"{cfg.grad_accum}) cannot be split evenly over {world_size} processes")
    out_dir = Path(out_dir)
    state_path = out_dir / "train_state.pt"
    # No weight decay on biases, norms and embeddings' ... only on matrices used in matmuls (nanoGPT).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    history, step = History(), 0
    if resume and state_path.exists():
        state = load_training_state(state_path)
        check_same_size(state["model"], model, state_path)  # another model size: one line, not a traceback
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _restore_rng(state, device, cfg.seed, step=int(state["step"]))
        history = History(**state["history"])
        step = int(state["step"])
        if main:
            print(f"resumed from {state_path} at step {step}")
            _warn_if_config_changed(state.get("config"), cfg)
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout masks: rank 0 draws what a single process would

    tokens_per_step = cfg.batch_size * train_data[0][0].numel()
    ddp_model = wrap_model(model, device)  # the model itself for one process
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pre-training", unit="step", dynamic_ncols=True,
               disable=not main)
    t0, last_loss = time.perf_counter(), float("nan")
    while step < cfg.max_steps:
        lr = learning_rate(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            # This rank's share of the global micro-batch (all of it for one process).
            indices = shard(batch_indices(step, micro, len(train_data), cfg), rank, world_size)
            inputs, targets = _collate([train_data[i] for i in indices], device)
            # DDP all-reduces gradients only in the last micro-batch's backward; before that
            # each rank just accumulates into .grad (the forward must be inside no_sync too).
            with sync_gradients(ddp_model, sync=micro == cfg.grad_accum - 1):
                with autocast(device, cfg.bf16):
                    loss = lm_loss(ddp_model, inputs, targets) / cfg.grad_accum
                loss.backward()
            step_loss += loss.item()
        step_loss = all_reduce_mean(step_loss)  # the global batch's loss, the same on every rank
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"training loss became {step_loss} at step {step}; lower the learning rate "
                                     f"(now {lr:.2e}) or check the data")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"gradient norm became {grad_norm.item()} at step {step} (loss {step_loss:.4f}); "
                                     f"lower the learning rate (now {lr:.2e}) or use bf16/fp32 instead of fp16")
        optimizer.step()
        step += 1
        last_loss = step_loss
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val = evaluate_lm(model, val_data, cfg.batch_size, device, cfg.eval_batches, cfg.bf16)  # on every rank
            history.steps.append(step)
            history.tokens.append(step * tokens_per_step)
            history.train_loss.append(last_loss)
            history.val_loss.append(val)
            history.lr.append(lr)
            if main:
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"loss {last_loss:.3f} | val {val:.3f} | lr {lr:.1e}")
                tqdm.write(f"step {step:>5} | tokens {step * tokens_per_step:>9,} | loss {last_loss:.3f} | "
                           f"val {val:.3f} | lr {lr:.2e} | {elapsed:.0f} s")
                if on_eval is not None:
                    on_eval(step, model)
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            rng = _rng_states(device, world_size)  # collective under torchrun: every rank takes part
            if main:
                save_training_state(state_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                    step=step, history=dataclasses.asdict(history), config=dataclasses.asdict(cfg),
                                    world_size=world_size, **rng)
    bar.close()
    if main:
        save_model(model, out_dir / "model.safetensors")
    barrier()  # the other ranks return once the files exist
    return history


def _rng_states(device, world_size: int) -> dict:
    """torch's random state(s) for the checkpoint: `torch_rng` (and `cuda_rng` on a GPU) of this
    process, plus every rank's under torchrun, so that each rank's dropout resumes exactly."""
    states = {"torch_rng": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    if world_size > 1:
        states.update({f"{name}_per_rank": all_gather_tensor(t) for name, t in list(states.items())})
    return states


def _restore_rng(state: dict, device, seed: int, step: int) -> None:
    rank, world_size = get_rank(), get_world_size()
    saved_world_size = int(state.get("world_size", 1))
    if saved_world_size != world_size:
        # Data order and weights still resume exactly; dropout masks cannot (other ranks).
        if rank == 0:
            print(f"note: the checkpoint was written by {saved_world_size} process(es), this run has {world_size}; "
                  f"dropout masks are re-seeded")
        torch.manual_seed(seed + 1_000_003 * step + rank)
        return
    suffix = "_per_rank" if world_size > 1 else ""
    pick = (lambda v: v[rank]) if world_size > 1 else (lambda v: v)
    torch.set_rng_state(pick(state["torch_rng" + suffix]))
    if torch.device(device).type == "cuda" and "cuda_rng" + suffix in state:
        torch.cuda.set_rng_state(pick(state["cuda_rng" + suffix]), device)


def _warn_if_config_changed(saved: dict | None, cfg: PretrainConfig) -> None:
    """Resuming with another batch size, seed or schedule is allowed (e.g. more steps), but the
    result is then not the uninterrupted run's: say so."""
    if not saved:
        return
    changed = {k: (saved[k], v) for k, v in dataclasses.asdict(cfg).items() if k in saved and saved[k] != v}
    if changed:
        listing = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        print(f"note: resuming with a changed training config ({listing}); the run will differ from an "
              f"uninterrupted one")
