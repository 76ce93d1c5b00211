"""Prefix tuning (Li & Liang 2021): learned keys and values that every token can attend to.

Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", ACL 2021
(arXiv:2101.00190). Instead of changing any weight, prefix tuning prepends P "virtual tokens"
to every layer's attention: P learned keys and values per layer and head, which the real tokens
attend to as if a prompt had been processed before them. Only the prefixes (and a new task
head) are trained.

    keys   = [prefix_keys   | x W_key  ]     (b, H, P + T, hd)
    values = [prefix_values | x W_value]     (b, H, P + T, hd)
    queries = x W_query                      (b, H, T, hd): only the real tokens ask

Two ways to hold the prefixes (`reparametrize`):

* direct: one parameter per layer, keys and values of shape (H, P, hd) each;
* through an MLP, as the paper recommends for stable training (section 4.3): P embeddings of
  width d pass through Linear(d, hidden) -> tanh -> Linear(hidden, n_layers * 2 * d), whose
  output is split into every layer's keys and values. Only the MLP's output is used at
  inference, so it could be computed once and stored (`prefix_tuning_kv`).

The cost: the prefix takes up context. The virtual tokens sit at positions
0 .. P-1 and the input starts at position P (as when a prompt of P tokens was processed first,
and as PEFT does through GPT-2's past_key_values), so an input may have at most
context_length - P tokens; a longer one is a ValueError. Every attention layer also reads
P more keys per query.

Injected from outside, like LoRA: each block's `att` is wrapped in `AttentionWithPrefix`, which
calls the attention's `forward(x, prefix_kv=...)` (gpt/attention.py), and `pos_emb` is wrapped in
`ShiftedPositionEmbedding`. The prefix parameters live once, in `model.prefix_encoder`.

Reference implementation: https://github.com/huggingface/peft (tuners/prefix_tuning/model.py,
`PrefixEncoder`); https://github.com/XiangLi1999/PrefixTuning.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_ATTENTION_NAME = "att"  # TransformerBlock's attention module (gpt/model.py)


class PrefixEncoder(nn.Module):
    """The trained prefixes of all layers. `layer_kv(i, b)` -> (keys, values), each (b, H, P, hd)."""

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, n_prefix: int,
                 reparametrize: bool = False, hidden: int = 512, init_std: float = 0.02):
        super().__init__()
        for name, value in dict(n_layers=n_layers, n_heads=n_heads, head_dim=head_dim, n_prefix=n_prefix,
                                hidden=hidden).items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"prefix tuning: {name} must be a positive integer, got {value!r}")
        self.n_layers, self.n_heads, self.head_dim, self.n_prefix = n_layers, n_heads, head_dim, n_prefix
        self.reparametrize = reparametrize
        d = n_heads * head_dim
        if reparametrize:
            self.embedding = nn.Parameter(torch.randn(n_prefix, d) * init_std)  # (P, d)
            self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, n_layers * 2 * d))
        else:
            # (n_layers, 2, H, P, hd): keys [:, 0] and values [:, 1] of every layer.
            self.prefix = nn.Parameter(torch.randn(n_layers, 2, n_heads, n_prefix, head_dim) * init_std)

    def all_kv(self) -> torch.Tensor:
        """Every layer's prefix keys and values, (n_layers, 2, H, P, hd)."""
        if not self.reparametrize:
            return self.prefix
        P, H, hd = self.n_prefix, self.n_heads, self.head_dim
        out = self.mlp(self.embedding)  # (P, d) -> (P, n_layers * 2 * d)
        return out.view(P, self.n_layers, 2, H, hd).permute(1, 2, 3, 0, 4)  # (n_layers, 2, H, P, hd)

    def layer_kv(self, layer: int, batch_size: int):
        """Layer `layer`'s (keys, values), each expanded to (b, H, P, hd) without copying."""
        if self.reparametrize:
            # Only this layer's slice of the output projection: the same numbers as all_kv()[layer].
            P, H, hd, d = self.n_prefix, self.n_heads, self.head_dim, self.n_heads * self.head_dim
            hidden = self.mlp[1](self.mlp[0](self.embedding))  # (P, hidden)
            out = self.mlp[2]
            rows = slice(layer * 2 * d, (layer + 1) * 2 * d)
            kv = nn.functional.linear(hidden, out.weight[rows], out.bias[rows])  # (P, 2 * d)
            kv = kv.view(P, 2, H, hd).permute(1, 2, 0, 3)  # (2, H, P, hd)
        else:
            kv = self.prefix[layer]  # (2, H, P, hd)
        shape = (batch_size, self.n_heads, self.n_prefix, self.head_dim)
        return kv[0].expand(shape), kv[1].expand(shape)

    def extra_repr(self) -> str:
        return (f"n_layers={self.n_layers}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"n_prefix={self.n_prefix}, reparametrize={self.reparametrize}")


class AttentionWithPrefix(nn.Module):
    """Calls the wrapped attention with this layer's prefix keys and values prepended."""

    def __init__(self, att: nn.Module, encoder: PrefixEncoder, layer: int):
        super().__init__()
        if isinstance(att, AttentionWithPrefix):
            raise ValueError("this attention module already has a prefix")
        self.att = att
        self.layer = layer
        self.enabled = True  # False: the plain attention (used to compute prefixes from real tokens)
        # A tuple, so that nn.Module does not register the shared encoder again under every layer
        # (it is registered once, as model.prefix_encoder, and saved once).
        self._encoder = (encoder,)

    def forward(self, x, prefix_kv=None):
        if prefix_kv is not None:
            raise ValueError("prefix tuning supplies prefix_kv itself; combining it with a KV cache is not supported")
        if not self.enabled:
            return self.att(x)
        return self.att(x, prefix_kv=self._encoder[0].layer_kv(self.layer, x.shape[0]))

    def extra_repr(self) -> str:
        return f"layer={self.layer}, n_prefix={self._encoder[0].n_prefix}"


class ShiftedPositionEmbedding(nn.Module):
    """Position embedding read at positions + P: the input starts after the P virtual tokens.
    Positions beyond the table (input longer than context_length - P) are a ValueError."""

    def __init__(self, embedding: nn.Embedding, offset: int):
        super().__init__()
        self.embedding = embedding
        self.offset = offset

    @property
    def weight(self):
        return self.embedding.weight

    def forward(self, positions):
        context_length = self.embedding.num_embeddings
        n_tokens = positions.shape[-1]  # GPTModel passes positions 0 .. T-1
        if n_tokens + self.offset > context_length:
            raise ValueError(
                f"input has {n_tokens} tokens, but prefix tuning with {self.offset} prefix tokens leaves only "
                f"{context_length - self.offset} of the context_length {context_length} for the input; "
                f"truncate the input to {context_length - self.offset} tokens or use fewer prefix tokens")
        return self.embedding(positions + self.offset)


def apply_prefix_tuning(model: nn.Module, n_prefix: int = 10, reparametrize: bool = False, hidden: int = 512,
                        attention_name: str = DEFAULT_ATTENTION_NAME, modules_to_save=("out_head",),
                        init_std: float = 0.02) -> nn.Module:
    """Add P = n_prefix learned prefix tokens to every attention layer of a GPTModel, in place.

    Freezes every parameter; trains `model.prefix_encoder` and `modules_to_save` (a new head).
    Returns the model. Parameters: n_layers * 2 * P * d directly, or
    P * d + (d * hidden + hidden) + (hidden * n_layers * 2 * d + n_layers * 2 * d) with the MLP.
    """
    if not isinstance(n_prefix, int) or isinstance(n_prefix, bool) or n_prefix <= 0:
        raise ValueError(f"n_prefix must be a positive integer, got {n_prefix!r}")
    if hasattr(model, "prefix_encoder"):
        raise ValueError("this model already has prefix tuning")
    blocks = getattr(model, "trf_blocks", None)
    pos_emb = getattr(model, "pos_emb", None)
    if blocks is None or not isinstance(pos_emb, nn.Embedding):
        raise TypeError(f"prefix tuning needs a GPTModel-like model (trf_blocks, pos_emb), got {type(model).__name__}")
    atts = [getattr(block, attention_name, None) for block in blocks]
    if any(a is None or not hasattr(a, "num_heads") for a in atts):
        raise TypeError(f"every block needs an attention module named {attention_name!r} (with num_heads)")
    context_length = pos_emb.num_embeddings
    if n_prefix >= context_length:
        raise ValueError(f"{n_prefix} prefix tokens leave no room for the input in a context of {context_length}")
    modules_to_save = (modules_to_save,) if isinstance(modules_to_save, str) else tuple(modules_to_save or ())
    for name in modules_to_save:
        if not hasattr(model, name):
            raise ValueError(f"modules_to_save: {type(model).__name__} has no module {name!r}")

    weight = pos_emb.weight
    encoder = PrefixEncoder(len(atts), atts[0].num_heads, atts[0].head_dim, n_prefix, reparametrize, hidden,
                            init_std).to(device=weight.device, dtype=weight.dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    model.prefix_encoder = encoder
    for i, (block, att) in enumerate(zip(blocks, atts)):
        setattr(block, attention_name, AttentionWithPrefix(att, encoder, i))
    model.pos_emb = ShiftedPositionEmbedding(pos_emb, n_prefix)
    for name in modules_to_save:
        getattr(model, name).requires_grad_(True)
    return model


def context_left(model: nn.Module) -> int:
    """Tokens an input may have: context_length minus the prefix (all of it without prefix tuning)."""
    pos_emb = model.pos_emb
    if isinstance(pos_emb, ShiftedPositionEmbedding):
        return pos_emb.embedding.num_embeddings - pos_emb.offset
    return pos_emb.num_embeddings


@torch.no_grad()
def init_prefix_from_tokens(model: nn.Module, token_ids) -> nn.Module:
    """Set a (direct) prefix to the keys and values the frozen model computes for P real tokens.

    Li & Liang (section 7.2) found that initialising the prefix with the activations of real
    words ("summarize", "table-to-text:") trains better than a random start, most of all with
    little data. After this call the model computes, for any input, exactly what the base model
    computes for that input placed after `token_ids`: a prefix is a learned prompt's KV cache.
    """
    encoder = getattr(model, "prefix_encoder", None)
    if encoder is None:
        raise ValueError("the model has no prefix tuning; call apply_prefix_tuning first")
    if encoder.reparametrize:
        raise ValueError("initialising from tokens sets the prefix directly; use reparametrize=False")
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=encoder.prefix.device).reshape(1, -1)
    if ids.shape[1] != encoder.n_prefix:
        raise ValueError(f"need exactly {encoder.n_prefix} token ids (the prefix length), got {ids.shape[1]}")
    wrappers = [m for m in model.modules() if isinstance(m, AttentionWithPrefix)]
    captured = {}

    def capture(layer):
        def hook(att, args):
            _, keys, values = att.project_qkv(args[0])  # each (1, H, P, hd)
            captured[layer] = torch.stack([keys[0], values[0]])  # (2, H, P, hd)
        return hook

    handles = [w.att.register_forward_pre_hook(capture(w.layer)) for w in wrappers]
    offset, model.pos_emb.offset = model.pos_emb.offset, 0  # the prompt itself sits at positions 0 .. P-1
    was_training = model.training
    try:
        for w in wrappers:
            w.enabled = False
        model.eval()(ids)
    finally:
        for h in handles:
            h.remove()
        for w in wrappers:
            w.enabled = True
        model.pos_emb.offset = offset
        model.train(was_training)
    encoder.prefix.copy_(torch.stack([captured[i] for i in range(encoder.n_layers)]))
    return model


@torch.no_grad()
def prefix_tuning_kv(model: nn.Module) -> torch.Tensor:
    """The prefixes the model uses, (n_layers, 2, H, P, hd): what to keep after training."""
    return model.prefix_encoder.all_kv().detach().clone()


def prefix_parameter_count(n_layers: int, emb_dim: int, n_prefix: int, reparametrize: bool = False,
                           hidden: int = 512) -> int:
    """Trainable numbers of prefix tuning (without the task head)."""
    if not reparametrize:
        return n_layers * 2 * n_prefix * emb_dim
    return n_prefix * emb_dim + emb_dim * hidden + hidden + hidden * n_layers * 2 * emb_dim + n_layers * 2 * emb_dim


__all__ = ["PrefixEncoder", "AttentionWithPrefix", "ShiftedPositionEmbedding", "apply_prefix_tuning",
           "init_prefix_from_tokens", "context_left", "prefix_tuning_kv", "prefix_parameter_count"]
