"""NF4: the 4-bit NormalFloat data type of QLoRA, with block-wise quantization and double quantization.

Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314, section 3.
The one idea: trained weights are roughly normal, so the 16 levels of a 4-bit type should be
quantiles of N(0, 1), not evenly spaced. Each level then receives about the same number of
weights, which is what makes a 4-bit code lose as little as it can.

The levels (`nf4_levels`), built as the paper builds them:
* 8 quantiles of N(0, 1) for the positive half and 7 for the negative half, taken at evenly
  spaced probabilities from 0.5 to 1 - delta, delta = (1/30 + 1/32) / 2 (so the outermost level
  is not infinite); the two halves share one exact zero, so 0.0 is represented exactly
  (padding, and weights that are zero, stay zero);
* all 16 divided by the largest, so they lie in [-1, 1] (-1 and 1 are both levels).

Block-wise absmax quantization (`quantize_nf4`): the flattened weight is cut into blocks of 64;
each block is divided by its largest |value| (its absmax, a float32 "quantization constant") and
each value becomes the index of its nearest level, a 4-bit code. Two codes share one uint8 (the
first in the high nibble, as bitsandbytes packs them).

Double quantization: 64 weights per float32 constant cost 32/64 = 0.5 bits per weight. The paper
quantizes the constants themselves: their mean is subtracted, then they are quantized in blocks of
256 to 8 bits with bitsandbytes' dynamic 8-bit float code (`dynamic_map`, Dettmers 2016,
arXiv:1511.04561), leaving one float32 constant per 256 * 64 weights:
8/64 + 32/(64 * 256) = 0.127 bits per weight instead of 0.5.

Shapes: weight (d_out, d_in), n = d_out * d_in; codes (ceil(n / 2),) uint8; absmax codes
(ceil(n / 64),) uint8; second-level absmax (ceil(n / 64 / 256),) float32; offset () float32.
Dequantization: weight = levels[code] * (dynamic_map[absmax code] * absmax2 + offset).

Reference: https://github.com/bitsandbytes-foundation/bitsandbytes (functional.py:
create_normal_map, create_dynamic_map, quantize_4bit); tests/test_qlora.py compares with it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

NF4_BLOCKSIZE = 64  # weights per absmax constant (the paper's and bitsandbytes' default)
ABSMAX_BLOCKSIZE = 256  # absmax constants per second-level constant in double quantization
NF4_DELTA = (1 / 30 + 1 / 32) / 2  # keeps the outermost quantile finite: 1 - delta = 0.9677083


def _normal_ppf(p: torch.Tensor) -> torch.Tensor:
    """Quantile function of N(0, 1): sqrt(2) * erfinv(2p - 1)."""
    return math.sqrt(2.0) * torch.special.erfinv(2 * p - 1)


@functools.lru_cache(maxsize=None)
def nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels, sorted, float32, in [-1, 1] with an exact 0 (index 7)."""
    offset = 1 - NF4_DELTA
    positive = _normal_ppf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 levels > 0
    negative = -_normal_ppf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 levels < 0
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    levels = levels.to(torch.float32)  # normalised in float32, as bitsandbytes builds its table
    return levels / levels.max()


@functools.lru_cache(maxsize=None)
def dynamic_map(max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' signed dynamic 8-bit float code: 256 sorted levels in [-1, 1].

    A sign bit, then a run of zeros that acts as a decimal exponent (10^-6 ... 10^0), an indicator
    bit, and the remaining bits as a linear fraction in [0.1, 1]: small numbers get precision,
    large ones range. Used here for the absmax constants of double quantization.
    """
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2 ** total_bits - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise absmax quantization of x (any shape) to the nearest level of `code` (sorted, in [-1, 1]).

    Returns (indices (n,) int64, absmax (ceil(n / blocksize),) float32); the last block may be short.
    """
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks = -(-n // blocksize)
    padded = torch.nn.functional.pad(flat, (0, blocks * blocksize - n)).view(blocks, blocksize)
    absmax = padded.abs().amax(dim=1)  # zero padding never raises a block's absmax
    scaled = (padded / absmax.clamp(min=1e-38).unsqueeze(1)).clamp(-1, 1).reshape(-1)[:n]
    midpoints = (code[:-1] + code[1:]) / 2  # nearest level = the interval between midpoints x falls in
    return torch.bucketize(scaled, midpoints), absmax


def dequantize_blockwise(indices: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                         blocksize: int) -> torch.Tensor:
    """code[indices] times each block's absmax: (n,) float32."""
    values = code[indices.long()]
    scale = absmax.repeat_interleave(blocksize)[: values.numel()]
    return values * scale


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """(n,) codes 0..15 -> (ceil(n / 2),) uint8, the first of each pair in the high nibble."""
    codes = codes.to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    return (codes[0::2] << 4) | codes[1::2]


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of pack_4bit: (n,) int64 codes."""
    out = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)
    return out[:n].long()


@dataclass
class NF4Tensor:
    """A weight quantized to NF4: everything needed to rebuild it, and nothing more.

    codes (ceil(n/2),) uint8: two 4-bit level indices per byte. With double quantization,
    absmax is (blocks,) uint8 (indices into dynamic_map) plus absmax2 (ceil(blocks/256),) float32
    and offset () float32; without it, absmax is (blocks,) float32 and absmax2/offset are None.
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: tuple[int, ...]
    absmax2: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    blocksize: int = NF4_BLOCKSIZE

    @property
    def double_quant(self) -> bool:
        return self.absmax2 is not None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.codes, self.absmax, self.absmax2, self.offset) if t is not None]

    def nbytes(self) -> int:
        """Bytes of storage: codes plus quantization constants."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


def quantize_nf4(weight: torch.Tensor, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True) -> NF4Tensor:
    """Quantize a weight to NF4 in blocks of `blocksize`, the absmax constants to 8 bits if double_quant."""
    if not weight.is_floating_point():
        raise TypeError(f"NF4 quantizes floating-point weights, got {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise ValueError("cannot quantize a weight with inf or nan entries to NF4")
    levels = nf4_levels().to(weight.device)
    indices, absmax = quantize_blockwise(weight, levels, blocksize)
    q = NF4Tensor(pack_4bit(indices), absmax, tuple(weight.shape), blocksize=blocksize)
    if double_quant:
        offset = absmax.mean()  # absmax values are all positive: centre them so the signed code is used fully
        a_idx, absmax2 = quantize_blockwise(absmax - offset, dynamic_map().to(weight.device), ABSMAX_BLOCKSIZE)
        q.absmax, q.absmax2, q.offset = a_idx.to(torch.uint8), absmax2, offset
    return q


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight q stands for, in `dtype`, shape q.shape."""
    absmax = q.absmax
    if q.double_quant:
        absmax = dequantize_blockwise(absmax, q.absmax2, dynamic_map().to(absmax.device), ABSMAX_BLOCKSIZE) + q.offset
    n = math.prod(q.shape)
    values = dequantize_blockwise(unpack_4bit(q.codes, n), absmax, nf4_levels().to(absmax.device), q.blocksize)
    return values.view(q.shape).to(dtype)


__all__ = ["NF4_BLOCKSIZE", "ABSMAX_BLOCKSIZE", "NF4Tensor", "nf4_levels", "dynamic_map", "quantize_nf4",
           "dequantize_nf4", "quantize_blockwise", "dequantize_blockwise", "pack_4bit", "unpack_4bit"]
