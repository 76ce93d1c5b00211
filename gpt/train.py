"""Pre-training loop for a GPTModel: next-token cross-entropy, AdamW, warm-up + cosine learning
rate, periodic evaluation on held-out windows, resumable checkpoints.

Resuming is exact: the data order of epoch e is a permutation drawn from a generator seeded
with (seed, e), the learning rate is a pure function of the step, and the checkpoint holds the
model, the optimizer and torch's random state (dropout). On a CPU, a run stopped and resumed
gives the same numbers as one that never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from gpt.checkpoint import load_training_state, save_model, save_training_state
from gpt.device import autocast


def lm_loss(model, inputs, targets):
    """Mean next-token cross-entropy; inputs, targets: (b, T) -> scalar (nats per token)."""
    logits = model(inputs)  # (b, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def evaluate_lm(model, data: Dataset, batch_size: int, device, max_batches: int | None = None, bf16=None) -> float:
    """Mean loss over (up to max_batches) batches of `data` in order, with dropout off."""
    was_training = model.training
    model.eval()
    losses = []
    n = len(data) if max_batches is None else min(len(data), max_batches * batch_size)
    for start in range(0, n, batch_size):
        inputs, targets = _collate([data[i] for i in range(start, min(start + batch_size, n))], device)
        with autocast(device, bf16):
            losses.append(lm_loss(model, inputs, targets).item())
    model.train(was_training)
    return sum(losses) / max(len(losses), 1)


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
    and out_dir/model.safetensors at the end. Returns the loss history."""
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by grad_accum={cfg.grad_accum}")
    if len(train_data) < cfg.batch_size:
        raise ValueError(f"{len(train_data)} training windows are fewer than one batch of {cfg.batch_size}")
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
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        history = History(**state["history"])
        step = int(state["step"])
        print(f"resumed from {state_path} at step {step}")
    else:
        torch.manual_seed(cfg.seed)

    tokens_per_step = cfg.batch_size * train_data[0][0].numel()
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pre-training", unit="step", dynamic_ncols=True)
    t0, last_loss = time.perf_counter(), float("nan")
    while step < cfg.max_steps:
        lr = learning_rate(step, cfg.max_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            inputs, targets = _collate([train_data[i] for i in batch_indices(step, micro, len(train_data), cfg)], device)
            with autocast(device, cfg.bf16):
                loss = lm_loss(model, inputs, targets) / cfg.grad_accum
            loss.backward()
            step_loss += loss.item()
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"training loss became {step_loss} at step {step}; lower the learning rate "
                                     f"(now {lr:.2e}) or check the data")
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        last_loss = step_loss
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val = evaluate_lm(model, val_data, cfg.batch_size, device, cfg.eval_batches, cfg.bf16)
            history.steps.append(step)
            history.tokens.append(step * tokens_per_step)
            history.train_loss.append(last_loss)
            history.val_loss.append(val)
            history.lr.append(lr)
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"loss {last_loss:.3f} | val {val:.3f} | lr {lr:.1e}")
            tqdm.write(f"step {step:>5} | tokens {step * tokens_per_step:>9,} | loss {last_loss:.3f} | val {val:.3f} | "
                       f"lr {lr:.2e} | {elapsed:.0f} s")
            if on_eval is not None:
                on_eval(step, model)
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save_training_state(state_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                torch_rng=torch.get_rng_state(), step=step, history=history.__dict__)
    bar.close()
    save_model(model, out_dir / "model.safetensors")
    return history


def plot_losses(history: History, path: str | Path, title: str = "pre-training") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(history.tokens, history.train_loss, label="train (last batch)")
    ax.plot(history.tokens, history.val_loss, label="validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
