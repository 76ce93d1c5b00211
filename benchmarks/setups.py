"""What the benchmarks train and run: model shapes, fine-tuning variants, one training step.

The task is the book's spam classifier (chapter 6, appendix E): a GPT whose output head is
replaced by `nn.Linear(emb_dim, 2)`, trained with cross-entropy on the last token's two logits
and AdamW (lr 5e-5, weight decay 0.1), batches of 8 messages x 120 tokens. Speed and memory do
not depend on the values of the weights or the tokens, so the benchmarks use randomly
initialised models and random token ids: no checkpoint or data set needed, any shape possible.

Variants (`Variant.parse`):

    full                   every parameter trained (the embeddings too), AdamW over all of them
    lora:16                LoRA r=16, alpha=16 on every linear layer except the head
                           (targets="all-linear"); the new head is trained in full (modules_to_save)
    lora:16:query,value    LoRA r=16 on W_query and W_value only (the LoRA paper's choice)
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import synchronize
from classify.model import add_classification_head, class_logits
from gpt.config import GPT2_CHECKPOINT_SETTINGS, GPTConfig
from gpt.model import GPTModel
from lora import LoraConfig, apply_lora

# Shapes by name. The GPT-2 ones carry the released checkpoints' settings (qkv bias, tied
# embedding, no dropout), as in the book's fine-tuning chapters.
SHAPES = {
    "gpt2-small": GPTConfig.from_preset("gpt2-small", **GPT2_CHECKPOINT_SETTINGS),  # 124M
    "gpt2-medium": GPTConfig.from_preset("gpt2-medium", **GPT2_CHECKPOINT_SETTINGS),  # 355M
    "gpt-mini": GPTConfig.from_preset("gpt-mini"),  # this project's offline model
    "gpt-tiny": GPTConfig.from_preset("gpt-tiny", drop_rate=0.0),  # --quick runs only
}
NUM_CLASSES = 2
LEARNING_RATE, WEIGHT_DECAY = 5e-5, 0.1  # the book's chapter 6 / appendix E settings


def shape_config(name: str, **overrides) -> GPTConfig:
    """The named shape's GPTConfig with some fields changed (overrides that are None are ignored)."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; choose one of {sorted(SHAPES)}")
    return SHAPES[name].replace(**{k: v for k, v in overrides.items() if v is not None})


def classifier(cfg: GPTConfig, seed: int = 123, device="cpu") -> GPTModel:
    """A randomly initialised GPT with a 2-class head, every parameter trainable."""
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    add_classification_head(model, NUM_CLASSES)
    return model.to(device).train()


def random_batch(cfg: GPTConfig, batch_size: int, n_tokens: int, seed: int = 123, device="cpu"):
    """(input_ids (b, T), labels (b,)): random token ids, random labels."""
    if n_tokens > cfg.context_length:
        raise ValueError(f"{n_tokens} tokens do not fit the context of {cfg.context_length}")
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, cfg.vocab_size, (batch_size, n_tokens), generator=g)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return input_ids.to(device), labels.to(device)


@dataclass(frozen=True)
class Variant:
    """How the model is fine-tuned: "full", or LoRA with a rank and targets."""
    kind: str  # "full" | "lora"
    rank: int | None = None
    targets: tuple[str, ...] = ("all-linear",)

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """'full', 'lora:16' (all-linear) or 'lora:16:query,value'."""
        parts = text.split(":")
        if parts == ["full"]:
            return cls("full")
        if parts[0] == "lora" and len(parts) in (2, 3):
            try:
                rank = int(parts[1])
            except ValueError:
                raise ValueError(f"variant {text!r}: the LoRA rank {parts[1]!r} is not an integer") from None
            targets = tuple(parts[2].split(",")) if len(parts) == 3 else ("all-linear",)
            return cls("lora", rank, targets)
        raise ValueError(f"unknown variant {text!r}; use 'full', 'lora:R' or 'lora:R:target,target'")

    @property
    def name(self) -> str:
        if self.kind == "full":
            return "full fine-tuning"
        where = "all linear" if self.targets == ("all-linear",) else "+".join(self.targets)
        return f"LoRA r={self.rank} ({where})"

    @property
    def spec(self) -> str:
        if self.kind == "full":
            return "full"
        return f"lora:{self.rank}" + ("" if self.targets == ("all-linear",) else ":" + ",".join(self.targets))


def sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that SHARES the parameter tensors with `model`.

    Several LoRA variants can then sit on one frozen base in one process (each wraps its own
    copy of the modules, none copies the 124M weights), which keeps side-by-side timing
    affordable in memory. Only for frozen bases: training one copy's base would change all.
    """
    memo = {id(p): p for p in model.parameters()}
    return copy.deepcopy(model, memo)


def make_variant(model: GPTModel, variant: Variant) -> nn.Module:
    """Prepare `model` IN PLACE for `variant`: unfreeze everything (full), or apply LoRA, which
    freezes the base and trains the branches and a copy of the head. Returns the model.
    Copy first to keep the original: `copy.deepcopy(base)`, or `sharing_copy(base)` for LoRA."""
    if variant.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    cfg = LoraConfig(rank=variant.rank, alpha=variant.rank, targets=variant.targets, modules_to_save=("out_head",))
    return apply_lora(model, cfg)


def variant_models(base: GPTModel, variants: list[Variant]) -> dict[str, nn.Module]:
    """One model per variant for side-by-side timing: full fine-tuning gets its own deep copy,
    the LoRA variants share `base`'s frozen weights (sharing_copy)."""
    return {v.name: make_variant(copy.deepcopy(base) if v.kind == "full" else sharing_copy(base), v)
            for v in variants}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class TrainStep:
    """One optimizer step of the spam classifier, callable; remembers how long its phases took.

    forward (with the loss), backward and the optimizer step are timed separately (`phases`,
    seconds, one dict per call) because they answer different questions: LoRA skips the weight
    gradients (backward) and almost all of AdamW's work (optimizer), not the forward pass.
    """

    def __init__(self, model: nn.Module, batch, device="cpu", fused_adamw: bool = False,
                 optimizer: torch.optim.Optimizer | None = None):
        self.model, self.batch, self.device = model, batch, torch.device(device)
        params = trainable_parameters(model)
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.phases: list[dict[str, float]] = []  # one entry per call
        self.last_loss: float | None = None
        if optimizer is not None:  # a method's own parameter groups (LoRA+)
            self.optimizer = optimizer
            return
        # Only the trainable parameters go to AdamW (frozen ones would have no gradient anyway).
        # torch's default AdamW loops over the tensors on a CPU (foreach on a GPU); fused=True runs
        # one kernel per step (CPU too, since torch 2.4), several times faster for many parameters.
        self.optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
                                           **({"fused": True} if fused_adamw else {}))

    def loss(self):
        input_ids, labels = self.batch
        return F.cross_entropy(class_logits(self.model, input_ids), labels)

    def median_phases(self, last: int) -> dict[str, float]:
        """Median seconds of each phase over the last `last` calls (the timed ones)."""
        recent = self.phases[-last:]
        return {k: statistics.median(p[k] for p in recent) for k in ("forward", "backward", "optimizer")}

    def __call__(self):
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss()
        synchronize(self.device)
        t1 = time.perf_counter()
        loss.backward()
        synchronize(self.device)
        t2 = time.perf_counter()
        self.optimizer.step()
        synchronize(self.device)
        t3 = time.perf_counter()
        self.phases.append({"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2})
        self.last_loss = loss.item()
