"""QLoRA: LoRA on top of a base frozen in 4 bits (NF4 with double quantization, lora/nf4.py).

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314.
The one idea: the frozen base is only ever read, so it can be stored in 4 bits and dequantized
to float on the fly in each forward pass; the gradient flows through the dequantized weight into
the LoRA factors, which stay in float32. Memory for the base drops about 8x against float32, in
training too only because the backward pass dequantizes each weight again (`_MatMulNF4`) rather
than keeping the forward pass's float copy.

    quantize_base(model)                       # every linear layer but the output head -> Linear4bit
    apply_lora(model, LoraConfig(rank=16, alpha=16, targets="all-linear"))   # wraps Linear4bit as usual

`Linear4bit` is an nn.Linear whose weight is not a parameter: it holds the packed NF4 codes and
the quantization constants as buffers, and `weight` dequantizes them (float32, (d_out, d_in)) when
read, so LinearWithLoRA's needs (in_features, out_features, weight's device and dtype, a forward)
are met unchanged. Merging a LoRA branch into a 4-bit base is refused (the sum would have to be
re-quantized): `dequantize_base` turns the layers back into float nn.Linear first.

Storage per layer: ceil(d_out * d_in / 2) bytes of codes, d_out * d_in / 64 bytes of 8-bit absmax
codes, 4 bytes per 256 * 64 weights and one offset (`Linear4bit.nbytes`); a float32 bias if any.
PEFT + bitsandbytes do the same with bnb.nn.Linear4bit (BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)).
"""

from __future__ import annotations

import torch
from torch import nn

from lora.config import LoraConfig
from lora.nf4 import NF4_BLOCKSIZE, NF4Tensor, dequantize_nf4, quantize_nf4
from lora.targets import resolve_targets, set_submodule


class _MatMulNF4(torch.autograd.Function):
    """x @ dequantize(codes)^T for a frozen Linear4bit, whose backward dequantizes the weight AGAIN instead
    of keeping the float copy that the forward pass made: between the two passes only the 4-bit codes stay
    in memory. (nn.functional.linear would save its float weight for the backward pass: every layer's
    dequantized float32 weight alive at once, the whole float base back in memory during training.)
    bitsandbytes' MatMul4Bit does the same. The weight is frozen: no gradient for it."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer, ctx.x_dtype = layer, x.dtype
        return nn.functional.linear(x, layer.weight.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = grad_out @ ctx.layer.weight.to(grad_out.dtype)  # (..., d_out) @ (d_out, d_in)
        return grad_x.to(ctx.x_dtype), None


class Linear4bit(nn.Linear):
    """A frozen linear layer stored in NF4: y = x @ dequantize(codes)^T + bias.

    Buffers: `codes` (ceil(d_out*d_in/2),) uint8, `absmax` (blocks,) uint8 (float32 without double
    quantization), `absmax2` and `offset` float32 (double quantization only); `bias` (d_out,) float32,
    frozen. `weight` (d_out, d_in) float32 is rebuilt from them on every read.
    """

    quantized = True  # LoRAWrapper.merge refuses to add into a weight that is rebuilt on every read

    def __init__(self, linear: nn.Linear, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True):
        nn.Module.__init__(self)  # not nn.Linear.__init__: there is no float weight parameter
        if not isinstance(linear, nn.Linear) or isinstance(linear, Linear4bit):
            raise TypeError(f"Linear4bit quantizes a float nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = linear.weight.dtype
        q = quantize_nf4(linear.weight.detach(), blocksize, double_quant)
        self.shape, self.blocksize = q.shape, q.blocksize
        self.register_buffer("codes", q.codes)
        self.register_buffer("absmax", q.absmax)
        self.register_buffer("absmax2", q.absmax2)
        self.register_buffer("offset", q.offset)
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def nf4(self) -> NF4Tensor:
        return NF4Tensor(self.codes, self.absmax, self.shape, self.absmax2, self.offset, self.blocksize)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight, (d_out, d_in), in the dtype the float layer had."""
        return dequantize_nf4(self.nf4(), self.compute_dtype)

    def forward(self, x):
        y = _MatMulNF4.apply(x, self)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def nbytes(self) -> int:
        """Bytes this layer stores: NF4 codes, quantization constants and the bias."""
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.nf4().nbytes() + bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nf4 blocksize={self.blocksize}, double_quant={self.absmax2 is not None}")


def quantize_base(model: nn.Module, targets=("all-linear",), blocksize: int = NF4_BLOCKSIZE,
                  double_quant: bool = True) -> nn.Module:
    """Replace the linear layers `targets` selects (LoRA's target rules; default every linear layer
    except the output head; a fused qkv projection is quantized whole) by Linear4bit, in place, before
    apply_lora. Everything else (embeddings,
    norms, the head) keeps its dtype. Returns the model."""
    plan, _ = resolve_targets(model, LoraConfig(targets=targets))
    for name, (kind, _) in plan.items():
        module = model.get_submodule(name)
        if kind not in ("linear", "fused") or not isinstance(module, nn.Linear) or isinstance(module, Linear4bit):
            raise ValueError(f"quantize_base: {name} is not a float nn.Linear (got {type(module).__name__}, "
                             f"{kind}); quantize the base before applying LoRA, and only once")
    for name in plan:
        set_submodule(model, name, Linear4bit(model.get_submodule(name), blocksize, double_quant))
    return model


@torch.no_grad()
def dequantize_base(model: nn.Module) -> nn.Module:
    """Replace every Linear4bit by the float nn.Linear its codes stand for (LoRA wrappers keep theirs)."""
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, Linear4bit)]:
        linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.codes.device,
                           dtype=m.compute_dtype)
        linear.weight.copy_(m.weight)
        if m.bias is not None:
            linear.bias.copy_(m.bias)
        linear.requires_grad_(False)
        set_submodule(model, name, linear)
    return model


def base_nbytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of the model's weights: a Linear4bit counts its 4-bit storage; every other parameter and
    buffer (once, even when tied) counts numel * the size of `dtype` (None: its own dtype); non-float
    buffers count as stored."""
    total, seen = 0, set()
    for m in model.modules():
        if isinstance(m, Linear4bit):
            total += m.nbytes()
            continue
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if id(t) in seen:  # a tied weight (output head = token embedding) is stored once
                continue
            seen.add(id(t))
            size = torch.empty((), dtype=dtype).element_size() if dtype and t.is_floating_point() else t.element_size()
            total += t.numel() * size
    return total


__all__ = ["Linear4bit", "quantize_base", "dequantize_base", "base_nbytes"]
