"""LoRA layers: a low-rank update added to a frozen linear layer.

    y = x W^T + b  +  scale * dropout(x) A B          A: (d_in, r), B: (r, d_out), r << min(d_in, d_out)

Instead of learning a full update Delta W (d_in * d_out numbers) we learn A and B
(r * (d_in + d_out) numbers). B starts at zero, so a fresh adapter leaves the model exactly
as it was, and only the product A B is ever added to the layer's output.

* `LoRALayer`: the branch itself, `scale * (dropout(x) @ A @ B)` (the book's `LoRALayer`).
* `LinearWithLoRA`: a frozen `nn.Linear` plus branches (the book's `LinearWithLoRA`).
* `QKVLoRALayer` / `FusedQKVWithLoRA`: LoRA on a fused `qkv` projection with a switch per
  projection (e.g. queries and values only, the LoRA paper's choice), like loralib's
  `MergedLinear` and litgpt's `LoRAQKVLinear`.
* `EmbeddingWithLoRA`: a frozen `nn.Embedding` plus branches (loralib's and PEFT's `Embedding`).
  An embedding is a linear layer applied to a one-hot token: one_hot(id) @ A = A[id], so the
  branch is a row lookup in A followed by @ B.

Each wrapper holds its branches in a ModuleDict keyed by adapter name ("default" unless you
add more; see lora/apply.py), can merge a branch into the frozen weight and unmerge it again.
Which branch runs is read from the registry the wrapper shares with its model (lora/registry.py).

Parameter names are PEFT's: `lora_A`, `lora_B`. Layout note: we store A as (d_in, r) and
B as (r, d_out), so the branch reads `x @ A @ B` like the book; PEFT stores them as the weights
of nn.Linear layers, `lora_A.weight` (r, d_in) = our A transposed and `lora_B.weight`
(d_out, r) = our B transposed (lora/peft_format.py converts).

References: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685; https://github.com/microsoft/LoRA (loralib/layers.py);
https://github.com/huggingface/peft (tuners/lora/layer.py);
https://github.com/Lightning-AI/litgpt (litgpt/lora.py).

Shape legend: ... = any leading dims (batch, tokens), d_in / d_out = widths, r = rank,
n = number of enabled projections in a fused qkv, d = width of one projection.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lora.config import check_lora_hyperparameters, scaling_factor, validate_rank
from lora.registry import LoraAdapters


def linear_dims(module: nn.Module) -> tuple[int, int, bool]:
    """(d_in, d_out, fan_in_fan_out) of a linear-like layer.

    nn.Linear stores its weight as (d_out, d_in). transformers' GPT-2 uses `Conv1D`, a linear
    layer whose weight is stored the other way round, (d_in, d_out): PEFT calls that
    fan_in_fan_out=True. Only merging cares; the LoRA branch is the same for both.
    """
    if isinstance(module, LoRAWrapper):
        raise ValueError(f"this layer already has LoRA ({type(module).__name__}); LoRA cannot be applied twice "
                         f"to one layer (add another adapter by name instead)")
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2:
        d_in, d_out = module.weight.shape
        return d_in, d_out, True
    raise TypeError(f"LoRA wraps nn.Linear (or transformers' Conv1D) layers, got {type(module).__name__}")


def _adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    # LoRA weights are kept in at least fp32 even on a bf16/fp16 base (as PEFT does by default):
    # the tiny updates they receive would round away in 8 bits of mantissa.
    return torch.promote_types(weight.dtype, torch.float32)


def _init_like_linear(A: torch.Tensor, fan_in: int) -> None:
    # nn.Linear's default init, kaiming_uniform_(weight, a=sqrt(5)), is uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
    # with fan_in = d_in. (The book calls kaiming_uniform_ on A of shape (d_in, r), where torch reads
    # fan_in as r, giving the wider bound 1/sqrt(r); PEFT and litgpt use 1/sqrt(d_in) as here.)
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        A.uniform_(-bound, bound)


class LoRALayer(nn.Module):
    """The low-rank branch: x (..., d_in) -> scale * dropout(x) @ A @ B, (..., d_out).

    `scale` depends on `scaling` (lora/config.py SCALINGS): alpha / r by default. The book's
    first printing used alpha without dividing by r; at r=16, alpha=16 that update is 16x larger.
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float, dropout: float = 0.0,
                 scaling: str = "alpha/r", device=None, dtype=None, check_rank: bool = True):
        super().__init__()
        check_lora_hyperparameters(rank, alpha, dropout, scaling)
        # fits=False only for the book's replace_linear_with_lora (see there) and reloading its adapters
        validate_rank(rank, in_dim, out_dim, f"a LoRALayer({in_dim} -> {out_dim})", fits=check_rank)
        self.rank, self.alpha, self.scaling = rank, float(alpha), scaling
        # Scaling convention: alpha / r (LoRA paper, PEFT). The book's first printing computed
        # alpha * (x @ A @ B) without dividing by r: at r=16, alpha=16 that update is 16x larger
        # (scaling="alpha" reproduces it). Dividing by r keeps the update's size when r changes.
        self.scale = scaling_factor(alpha, rank, scaling)
        self.lora_A = nn.Parameter(torch.empty(in_dim, rank, device=device, dtype=dtype))  # (d_in, r)
        self.lora_B = nn.Parameter(torch.zeros(rank, out_dim, device=device, dtype=dtype))  # (r, d_out)
        _init_like_linear(self.lora_A, in_dim)
        # B = 0: a fresh adapter adds exactly nothing, so training starts from the base model.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    # The book calls them A and B.
    @property
    def A(self) -> nn.Parameter:
        return self.lora_A

    @property
    def B(self) -> nn.Parameter:
        return self.lora_B

    def forward(self, x):
        x = self.dropout(x.to(self.lora_A.dtype))
        # Scale the narrow (..., r) intermediate rather than the (..., d_out) output: same result, less work.
        return (x @ self.lora_A * self.scale) @ self.lora_B  # (..., d_in) -> (..., r) -> (..., d_out)

    def delta_weight(self) -> torch.Tensor:
        """The update as a (d_in, d_out) matrix, scale * A @ B, so that x @ delta_weight() == forward(x)
        (without dropout). Only merging builds it; forward never does."""
        return self.scale * (self.lora_A @ self.lora_B)

    def extra_repr(self) -> str:
        d_in, r = self.lora_A.shape
        return f"d_in={d_in}, d_out={self.lora_B.shape[1]}, rank={r}, alpha={self.alpha:g}, scaling={self.scaling!r}"


class QKVLoRALayer(nn.Module):
    """LoRA branches for some of the q, k, v slices of one fused projection, computed together.

    enable: three booleans (query, key, value), e.g. (True, False, True). With n of them on,
    A is (d_in, n * r): one x @ A gives all n low-rank codes at once; B is (n, r, d), one
    (r, d) block per enabled projection. The parameters are exactly those of n separate
    LoRALayers, 2 * r * (d_in + d) for q and v, and compute the same thing.
    forward: (..., d_in) -> a tuple of n updates, each (..., d), for the enabled slices only.
    """

    def __init__(self, in_dim: int, out_slice: int, rank: int, alpha: float, enable=(True, False, True),
                 dropout: float = 0.0, scaling: str = "alpha/r", device=None, dtype=None):
        super().__init__()
        check_lora_hyperparameters(rank, alpha, dropout, scaling)
        enable = tuple(bool(e) for e in enable)
        if len(enable) != 3 or not any(enable):
            raise ValueError(f"enable must be three booleans (query, key, value) with at least one True, got {enable}")
        validate_rank(rank, in_dim, out_slice, f"a fused qkv projection ({in_dim} -> 3 x {out_slice})")
        self.rank, self.alpha, self.scaling, self.enable = rank, float(alpha), scaling, enable
        self.scale = scaling_factor(alpha, rank, scaling)
        n = sum(enable)
        self.lora_A = nn.Parameter(torch.empty(in_dim, n * rank, device=device, dtype=dtype))  # (d_in, n*r)
        self.lora_B = nn.Parameter(torch.zeros(n, rank, out_slice, device=device, dtype=dtype))  # (n, r, d)
        _init_like_linear(self.lora_A, in_dim)  # each (d_in, r) block like a Linear(d_in, r)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Which of the 3 output slices receive the n updates: 0 = query, 1 = key, 2 = value.
        self.enabled_slots = tuple(i for i, e in enumerate(enable) if e)

    def forward(self, x):
        x = self.dropout(x.to(self.lora_A.dtype))
        r = self.rank
        codes = x @ self.lora_A * self.scale  # (..., d_in) x (d_in, n*r) -> (..., n*r): one matmul for all
        # Then one (r, d) block per projection: (..., r) x (r, d) -> (..., d). A loop of n plain
        # matmuls; a broadcast batched matmul over (..., n) would be much slower in backward.
        return tuple(codes[..., j * r:(j + 1) * r] @ B_j for j, B_j in enumerate(self.lora_B))

    def delta_weight(self) -> torch.Tensor:
        """The n updates as (n, d_in, d) matrices, scale * A_j @ B_j. Only merging builds them."""
        n, r, _ = self.lora_B.shape
        A = self.lora_A.unflatten(1, (n, r)).transpose(0, 1)  # (n, d_in, r)
        return self.scale * (A @ self.lora_B)  # (n, d_in, r) x (n, r, d) -> (n, d_in, d)

    def extra_repr(self) -> str:
        names = [name for name, e in zip(("query", "key", "value"), self.enable) if e]
        return (f"d_in={self.lora_A.shape[0]}, d={self.lora_B.shape[2]}, enable={names}, rank={self.rank}, "
                f"alpha={self.alpha:g}, scaling={self.scaling!r}")


class LoRAWrapper(nn.Module):
    """What LinearWithLoRA and FusedQKVWithLoRA share: the frozen base layer `linear`, branches
    `lora[adapter_name]`, which branches are merged into the base weight, and the registry
    (lora/registry.py) that says which adapter is active: the model's, once apply_lora put the
    wrapper in, or one of its own for a wrapper made by hand.

    `layer_name` (the module's name in its model, set by apply_lora) only makes messages clearer.
    """

    def __init__(self, linear: nn.Module, freeze_base: bool = True, registry: LoraAdapters | None = None,
                 layer_name: str | None = None):
        super().__init__()
        self.d_in, self.d_out, self.fan_in_fan_out = self.layer_dims(linear)
        self.linear = linear
        self.lora = nn.ModuleDict()
        self.registry = LoraAdapters() if registry is None else registry
        self.layer_name = layer_name
        self.merged_adapters: list[str] = []  # branches already added into linear.weight
        self.train(linear.training)  # follow the wrapped layer's train/eval mode
        if freeze_base:
            for p in linear.parameters():
                p.requires_grad_(False)

    layer_dims = staticmethod(linear_dims)  # (d_in, d_out, fan_in_fan_out) of the layer this class wraps

    @property
    def active_adapter(self) -> str | None:
        """The branch forward adds (None: none); the registry's, shared with the model."""
        return self.registry.active

    @property
    def disabled(self) -> bool:
        """True: forward is the base layer only (disable_adapters)."""
        return self.registry.disabled

    def describe(self) -> str:
        """How messages name this layer: its module name, or its type and shape."""
        return self.layer_name or f"{type(self).__name__}({type(self.linear).__name__} {self.d_in} -> {self.d_out})"

    def _new_branch(self, name: str, branch: nn.Module) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"adapter name must be a non-empty string without dots, got {name!r}")
        if name in self.lora:
            raise ValueError(f"LoRA adapter {name!r} is already applied to this layer; LoRA cannot be applied "
                             f"twice to one layer (use another adapter name to add a second adapter)")
        branch.train(self.training)  # a branch added to a model in eval() mode must not run dropout
        self.lora[name] = branch
        if self.registry.active is None:
            self.registry.active = name

    def _branch_kwargs(self):
        return dict(device=self.linear.weight.device, dtype=_adapter_dtype(self.linear.weight))

    def _live_branch(self):
        """The branch forward must add, or None (disabled, no adapter here, or merged already)."""
        name = self.registry.active
        if self.registry.disabled or name is None or name in self.merged_adapters or name not in self.lora:
            return None
        return self.lora[name]

    def _weight_delta(self, name: str) -> torch.Tensor:
        """The branch's update in the base weight's own layout and dtype."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """Add branch `name` into the base weight; forward then skips it (no extra compute)."""
        if name not in self.lora:
            raise ValueError(f"no LoRA adapter {name!r} on this layer; adapters here: {list(self.lora)}")
        if name in self.merged_adapters:
            raise ValueError(f"LoRA adapter {name!r} is already merged into this layer's weight; merging it "
                             f"again would add the update twice (unmerge first)")
        if getattr(self.linear, "quantized", False):  # lora/qlora.py: its weight is rebuilt on every read
            raise ValueError(f"{self.describe()} is a 4-bit base; merging would have to re-quantize and lose "
                             f"the update's precision: dequantize_base(model) first, then merge")
        self.linear.weight.add_(self._weight_delta(name))
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        """Subtract branch `name` from the base weight again (exact up to float rounding)."""
        if name not in self.merged_adapters:
            raise ValueError(f"LoRA adapter {name!r} is not merged into this layer; merged: {self.merged_adapters}")
        self.linear.weight.sub_(self._weight_delta(name))
        self.merged_adapters.remove(name)

    def extra_repr(self) -> str:
        return f"active_adapter={self.active_adapter!r}, merged={self.merged_adapters}, disabled={self.disabled}"


class LinearWithLoRA(LoRAWrapper):
    """y = linear(x) + scale * dropout(x) @ A @ B, for a frozen linear layer.

    LinearWithLoRA(nn.Linear(768, 768), rank=16, alpha=16) adds 16 * (768 + 768) = 24,576
    trainable parameters next to the 590,592 frozen ones. `freeze_base=False` leaves the base
    layer's requires_grad alone (the book's `replace_linear_with_lora` freezes the model first).
    """

    def __init__(self, linear: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                 scaling: str = "alpha/r", adapter_name: str = "default", freeze_base: bool = True,
                 check_rank: bool = True, registry: LoraAdapters | None = None, layer_name: str | None = None):
        super().__init__(linear, freeze_base=freeze_base, registry=registry, layer_name=layer_name)
        self.add_adapter(adapter_name, rank, alpha, dropout, scaling, check_rank=check_rank)

    def add_adapter(self, name: str, rank: int, alpha: float, dropout: float = 0.0, scaling: str = "alpha/r",
                    check_rank: bool = True):
        validate_rank(rank, self.d_in, self.d_out, self.describe(), fits=check_rank)
        branch = LoRALayer(self.d_in, self.d_out, rank, alpha, dropout, scaling, **self._branch_kwargs(),
                           check_rank=False)  # checked just above, naming this layer
        self._new_branch(name, branch)
        return branch

    def _weight_delta(self, name):
        delta = self.lora[name].delta_weight()  # (d_in, d_out)
        if not self.fan_in_fan_out:  # nn.Linear stores (d_out, d_in)
            delta = delta.T
        return delta.to(self.linear.weight.dtype)

    def forward(self, x):
        y = self.linear(x)  # (..., d_out)
        branch = self._live_branch()
        if branch is None:
            return y
        return y + branch(x).to(y.dtype)  # back to the base's dtype (bf16 base, fp32 adapter)


class FusedQKVWithLoRA(LoRAWrapper):
    """A fused qkv projection (d_in -> 3 * d) with LoRA on some of its three slices.

    enable=(True, False, True) puts LoRA on queries and values only. forward computes
    x @ A once for all enabled slices, then the per-projection B blocks, and adds the results
    into the enabled output slices; the d_in x 3d update is never built (only `merge` does).
    Same function and same parameter count as LoRA on W_query and W_value of the separate layout.
    """

    def __init__(self, linear: nn.Module, rank: int, alpha: float, enable=(True, False, True),
                 dropout: float = 0.0, scaling: str = "alpha/r", adapter_name: str = "default",
                 freeze_base: bool = True, registry: LoraAdapters | None = None, layer_name: str | None = None):
        super().__init__(linear, freeze_base=freeze_base, registry=registry, layer_name=layer_name)
        if self.d_out % 3 != 0:
            raise ValueError(f"a fused qkv projection has an output width divisible by 3, got {self.d_out}")
        self.d = self.d_out // 3
        self.add_adapter(adapter_name, rank, alpha, enable, dropout, scaling)

    def add_adapter(self, name: str, rank: int, alpha: float, enable=(True, False, True), dropout: float = 0.0,
                    scaling: str = "alpha/r"):
        validate_rank(rank, self.d_in, self.d, self.describe())  # each slice is d_in -> d
        branch = QKVLoRALayer(self.d_in, self.d, rank, alpha, enable, dropout, scaling, **self._branch_kwargs())
        self._new_branch(name, branch)
        return branch

    def _weight_delta(self, name):
        branch = self.lora[name]
        delta = branch.delta_weight()  # (n, d_in, d)
        full = torch.zeros(3, self.d_in, self.d, dtype=delta.dtype, device=delta.device)
        full[list(branch.enabled_slots)] = delta  # zero for the disabled slices
        full = full.permute(1, 0, 2).reshape(self.d_in, 3 * self.d)  # (d_in, 3d): [q | k | v]
        if not self.fan_in_fan_out:
            full = full.T  # (3d, d_in), nn.Linear's layout
        return full.to(self.linear.weight.dtype)

    def forward(self, x):
        y = self.linear(x)  # (..., 3d): [q | k | v]
        branch = self._live_branch()
        if branch is None:
            return y
        d = self.d
        for slot, update in zip(branch.enabled_slots, branch(x)):  # each update (..., d)
            # In place, into this projection's slice of the output: no (..., 3d) copy. Safe for
            # autograd: a linear layer's backward needs its input and weight, not its output.
            y[..., slot * d:(slot + 1) * d] += update.to(y.dtype)
        return y


def embedding_dims(module: nn.Module) -> tuple[int, int, bool]:
    """(num_embeddings, embedding_dim, True) of an nn.Embedding: read as a linear layer on one-hot
    inputs, d_in = vocabulary size and d_out = width, and its weight is stored (d_in, d_out), the
    fan_in_fan_out layout (a merge adds A @ B to it without a transpose)."""
    if isinstance(module, LoRAWrapper):
        raise ValueError(f"this layer already has LoRA ({type(module).__name__}); LoRA cannot be applied twice "
                         f"to one layer (add another adapter by name instead)")
    if not isinstance(module, nn.Embedding):
        raise TypeError(f"EmbeddingWithLoRA wraps nn.Embedding layers, got {type(module).__name__}")
    if module.max_norm is not None:
        raise ValueError("LoRA on an nn.Embedding with max_norm is not supported: the lookup renormalises the "
                         "base rows in place, and the update would be added after it")
    return module.num_embeddings, module.embedding_dim, True


class EmbeddingWithLoRA(LinearWithLoRA):
    """y = embedding(ids) + scale * A[ids] @ B, for a frozen token embedding (vocabulary V, width d).

    The same update as LinearWithLoRA's, read on one-hot inputs: one_hot(ids) @ A @ B = A[ids] @ B
    with A (V, r) and B (r, d), so r * (V + d) parameters (404,104 for gpt-mini's 50,257 x 256 table
    at r = 8). Each token id owns one row of A: a token that never occurs in training keeps a zero row
    and its embedding is left exactly as the base has it.

    Initialisation is the other way round from LinearWithLoRA's, as in loralib and PEFT: A = 0
    (so the adapter starts as the identity and only rows of tokens that are seen ever move) and B
    drawn from N(0, 1) (so that the gradient reaches A's rows from the first step). Dropout does not
    apply: the input is a token id, not a vector (PEFT's Embedding does the same).
    Merging adds scale * A @ B (V, d) into the table; a table tied to an output head is refused by
    merge_lora (lora/merge.py), since the head would change too.
    """

    layer_dims = staticmethod(embedding_dims)

    def add_adapter(self, name: str, rank: int, alpha: float, dropout: float = 0.0, scaling: str = "alpha/r",
                    check_rank: bool = True):
        branch = super().add_adapter(name, rank, alpha, 0.0, scaling, check_rank)  # no dropout on a token id
        with torch.no_grad():
            branch.lora_A.zero_()  # (V, r)
            branch.lora_B.normal_()  # (r, d)
        return branch

    def forward(self, ids):
        y = self.linear(ids)  # (..., d)
        branch = self._live_branch()
        if branch is None:
            return y
        codes = nn.functional.embedding(ids, branch.lora_A) * branch.scale  # rows of A: (..., r) = one_hot(ids) @ A
        return y + (codes @ branch.lora_B).to(y.dtype)  # (..., r) x (r, d) -> (..., d)
