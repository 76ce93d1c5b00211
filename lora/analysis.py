"""Looking inside trained LoRA adapters: the measurements of the LoRA paper's section 7 (Hu et al. 2021).

Everything here works on plain tensors, read from an adapter file or from a model, so it needs no model
and imports nothing of `gpt/`. Layouts are the project's (chapter 5.4):

    lora_A: (d_in, r)  = the paper's A^T          lora_B: (r, d_out) = the paper's B^T
    a weight W and an update Delta W: (d_out, d_in) = the paper's W in R^{d x k}
    Delta W = scale * (lora_A @ lora_B)^T = scale * B A,   scale = alpha / r (or what the config says)

The measurements, in the order of the paper's section 7:

* `similarity_grid` (Figures 3 and 4): how much of the input subspace one adapter's A reads is also read by
  another's: phi(i, j) = ||U_i^T V_j||_F^2 / min(i, j) for the top-i and top-j singular directions.
  1 when one subspace contains the other, 0 when they are orthogonal; two random subspaces of a
  k-dimensional space give max(i, j) / k on average.
* `amplification` (Table 7): how Delta W relates to W: ||U^T W V||_F for U, V the top-r singular directions
  of Delta W (of W itself, of a random matrix, for comparison), and ||Delta W||_F / ||U^T W V||_F.
* `principal_angles`: the angles between two subspaces (0 degrees: shared direction, 90: orthogonal).
* `update_norms` and `total_update_norm`: where an adapter changes the model, ||scale * B A||_F per module.
* `energy` and `rank_for_energy`: the share of sum(sigma^2) in the top m singular values (chapter 5.7).

`AdapterFactors` holds the A and B matrices of one adapter with what is needed to compare them honestly
(its scale, its rank, which base it was trained on); `save_factors` / `load_factors` keep it in one
safetensors file. Comparisons of adapters that do not fit each other (other modules, other shapes,
another base) and ranks larger than a layer stop with a ValueError that names the mismatch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMAT = "lora-from-scratch/lora-factors"
SAVED_PREFIX = "saved_modules."


# ---------------------------------------------------------------------------------------------- the adapter
@dataclass
class AdapterFactors:
    """The LoRA matrices of one trained adapter, by module name (e.g. "trf_blocks.0.att.W_query").

    lora_A[name]: (d_in, r); lora_B[name]: (r, d_out); the update of module `name` is
    scale * (lora_A[name] @ lora_B[name]).T, shape (d_out, d_in). `base` identifies the model the adapter was
    trained on (any JSON-able dict, e.g. {"name": "data/gpt-mini", "sha256": ...}); `meta` is free (accuracies,
    the command that trained it); `saved_modules` holds the tensors trained in full beside LoRA (PEFT's
    modules_to_save, e.g. {"out_head.weight": (2, 256)}), if kept.
    """

    lora_A: dict[str, torch.Tensor]
    lora_B: dict[str, torch.Tensor]
    scale: float
    base: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    saved_modules: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if set(self.lora_A) != set(self.lora_B):
            raise ValueError(f"lora_A and lora_B name different modules: only A: {sorted(set(self.lora_A) - set(self.lora_B))}, "
                             f"only B: {sorted(set(self.lora_B) - set(self.lora_A))}")
        for name in self.lora_A:
            a, b = self.lora_A[name], self.lora_B[name]
            if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
                raise ValueError(f"{name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not multiply; "
                                 f"expected lora_A (d_in, r) and lora_B (r, d_out)")

    @property
    def modules(self) -> list[str]:
        return sorted(self.lora_A)

    @property
    def rank(self) -> int:
        ranks = {a.shape[1] for a in self.lora_A.values()}
        return ranks.pop() if len(ranks) == 1 else max(ranks)

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Each module's weight shape (d_out, d_in)."""
        return {n: (self.lora_B[n].shape[1], self.lora_A[n].shape[0]) for n in self.modules}

    def delta_weight(self, name: str) -> torch.Tensor:
        """The update of module `name` in the weight's layout, (d_out, d_in), float32."""
        return delta_weight(self.lora_A[name], self.lora_B[name], self.scale)

    def num_parameters(self) -> int:
        return sum(self.lora_A[n].numel() + self.lora_B[n].numel() for n in self.modules)


def delta_weight(lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * (lora_A @ lora_B)^T: lora_A (d_in, r), lora_B (r, d_out) -> (d_out, d_in), the paper's (alpha/r) B A."""
    return scale * (lora_A.float() @ lora_B.float()).T


def save_factors(factors: AdapterFactors, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """One safetensors file: tensors "<module>.lora_A" / "<module>.lora_B" (in `dtype`; float16 halves the file and
    changes Delta W by about 1e-3 relative), the saved modules under "saved_modules.<name>" (float32), the rest
    as JSON in its metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    for n in factors.modules:
        tensors[f"{n}.lora_A"] = factors.lora_A[n].detach().to("cpu", dtype).contiguous()
        tensors[f"{n}.lora_B"] = factors.lora_B[n].detach().to("cpu", dtype).contiguous()
    for n, t in factors.saved_modules.items():
        tensors[f"{SAVED_PREFIX}{n}"] = t.detach().to("cpu", torch.float32).contiguous()
    meta = {"format": FORMAT, "scale": repr(float(factors.scale)), "base": json.dumps(factors.base),
            "meta": json.dumps(factors.meta)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates the file private; give it the usual permissions
    os.replace(tmp, path)  # complete or absent
    return path


def load_factors(path: str | os.PathLike) -> AdapterFactors:
    """Read a file written by `save_factors` (tensors as float32)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter factors at {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file (format field: {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    saved = {k[len(SAVED_PREFIX):]: v for k, v in tensors.items() if k.startswith(SAVED_PREFIX)}
    lora_A = {k[: -len(".lora_A")]: v for k, v in tensors.items() if k.endswith(".lora_A") and not k.startswith(SAVED_PREFIX)}
    lora_B = {k[: -len(".lora_B")]: v for k, v in tensors.items() if k.endswith(".lora_B") and not k.startswith(SAVED_PREFIX)}
    return AdapterFactors(lora_A, lora_B, float(meta["scale"]), json.loads(meta.get("base", "{}")),
                          json.loads(meta.get("meta", "{}")), saved)


# ------------------------------------------------------------------------------------------ input checks
def check_comparable(a: AdapterFactors, b: AdapterFactors, modules: list[str] | None = None) -> list[str]:
    """The modules both adapters adapt, with the same weight shapes and the same base; else a ValueError.

    `modules`: the ones to compare (default: all of `a`'s). Returns them in order.
    """
    modules = a.modules if modules is None else list(modules)
    missing = {"first": [m for m in modules if m not in a.lora_A], "second": [m for m in modules if m not in b.lora_A]}
    if missing["first"] or missing["second"]:
        raise ValueError(f"the adapters adapt different modules: not in the first adapter: {missing['first'][:4]}, "
                         f"not in the second: {missing['second'][:4]}; compare modules both adapt (targets differ)")
    shapes_a, shapes_b = a.shapes(), b.shapes()
    bad = [f"{m}: {shapes_a[m]} vs {shapes_b[m]}" for m in modules if shapes_a[m] != shapes_b[m]]
    if bad:
        raise ValueError(f"the adapters' weight shapes differ (d_out, d_in): {'; '.join(bad[:3])}: "
                         f"they were trained on different models")
    check_same_base(a.base, b.base)
    return modules


def check_same_base(base_a: dict, base_b: dict) -> None:
    """Two base descriptions must agree on every key both give (e.g. "sha256"); a ValueError names the first that differs."""
    for key in sorted(set(base_a) & set(base_b)):
        if base_a[key] != base_b[key]:
            raise ValueError(f"the adapters were trained on different base models: {key} {base_a[key]!r} vs {base_b[key]!r}")


def check_fits_base(factors: AdapterFactors, weights: dict[str, torch.Tensor], base: dict | None = None) -> None:
    """`weights` (module name -> weight (d_out, d_in)) must be the base the adapter was trained on: every adapted
    module present with its shape, and `base` (if given) agreeing with `factors.base`. Else a ValueError."""
    if base is not None:
        try:
            check_same_base(factors.base, base)
        except ValueError:
            diff = next(k for k in sorted(set(factors.base) & set(base)) if factors.base[k] != base[k])
            raise ValueError(f"this adapter was trained on another base model: its {diff} is {factors.base[diff]!r}, "
                             f"these weights' is {base[diff]!r}") from None
    missing = [m for m in factors.modules if m not in weights]
    if missing:
        raise ValueError(f"this adapter was trained on another base model: it adapts {missing[:3]}, which these "
                         f"weights do not have")
    bad = [f"{m}: adapter {factors.shapes()[m]}, weight {tuple(weights[m].shape)}" for m in factors.modules
           if tuple(weights[m].shape) != factors.shapes()[m]]
    if bad:
        raise ValueError(f"this adapter was trained on another base model (shapes differ, (d_out, d_in)): {'; '.join(bad[:3])}")


def _check_rank(r: int, shape, what: str = "the layer") -> None:
    if not 1 <= r <= min(shape):
        raise ValueError(f"rank {r} is not possible for {what} of shape {tuple(shape)}: it has at most "
                         f"{min(shape)} directions; choose 1 <= r <= {min(shape)}")


# ------------------------------------------------------------------------------------------ subspaces
def top_directions(M: torch.Tensor, n: int, side: str = "left") -> torch.Tensor:
    """Orthonormal columns spanning the top-n singular directions of M (d, k): side "left" -> (d, n) (the column
    space), "right" -> (k, n) (the row space). Computed in float64."""
    _check_rank(n, M.shape, "this matrix")
    U, _, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    if side == "left":
        return U[:, :n]
    if side == "right":
        return Vh[:n].T
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")


def subspace_similarity(U: torch.Tensor, V: torch.Tensor) -> float:
    """phi = ||U^T V||_F^2 / min(i, j) for orthonormal U (n, i) and V (n, j): 1 if one span contains the other,
    0 if they are orthogonal (the paper's normalised subspace similarity, section 7.2)."""
    if U.shape[0] != V.shape[0]:
        raise ValueError(f"the subspaces live in spaces of different dimension: {U.shape[0]} vs {V.shape[0]}")
    return float((U.double().T @ V.double()).square().sum() / min(U.shape[1], V.shape[1]))


def similarity_grid(lora_A_1: torch.Tensor, lora_A_2: torch.Tensor) -> torch.Tensor:
    """phi(i, j) for i = 1..r1, j = 1..r2 (the paper's Figures 3 and 4), as a (r1, r2) float64 tensor.

    lora_A_1 (d_in, r1), lora_A_2 (d_in, r2): the input directions each A reads are its left singular vectors
    in our layout (the paper's right-singular vectors of A in R^{r x k}), ordered by singular value. Entry
    [i-1, j-1] compares the top-i directions of the first with the top-j of the second.
    """
    if lora_A_1.dim() != 2 or lora_A_2.dim() != 2 or lora_A_1.shape[0] != lora_A_2.shape[0]:
        raise ValueError(f"compare A matrices of the same layer: lora_A shapes {tuple(lora_A_1.shape)} and "
                         f"{tuple(lora_A_2.shape)} must both be (d_in, r) with the same d_in")
    U1 = top_directions(lora_A_1, min(lora_A_1.shape))  # (d_in, r1)
    U2 = top_directions(lora_A_2, min(lora_A_2.shape))  # (d_in, r2)
    overlap = (U1.T @ U2).square().cumsum(0).cumsum(1)  # [i-1, j-1] = ||U1[:, :i]^T U2[:, :j]||_F^2
    i = torch.arange(1, U1.shape[1] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, U2.shape[1] + 1, dtype=torch.float64)[None, :]
    return overlap / torch.minimum(i, j)


def principal_angles(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """The principal angles (degrees, smallest first) between span(U) and span(V), orthonormal U (n, i), V (n, j):
    min(i, j) angles; 0 = a shared direction, 90 = orthogonal. cos(angle) are the singular values of U^T V."""
    if U.shape[0] != V.shape[0]:
        raise ValueError(f"the subspaces live in spaces of different dimension: {U.shape[0]} vs {V.shape[0]}")
    cos = torch.linalg.svdvals(U.double().T @ V.double()).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


# ------------------------------------------------------------------------------------------ Delta W vs W
def amplification(delta: torch.Tensor, W: torch.Tensor, r: int, seed: int = 0) -> dict:
    """The LoRA paper's Table 7 for one matrix: how much of W lies in the directions Delta W changes.

    delta, W: (d_out, d_in). For U (d_out, r), V (d_in, r) the top-r left/right singular vectors of Delta W, of W,
    and of a random Gaussian matrix (`seed`), returns ||U^T W V||_F for each ("delta_dirs", "W_dirs",
    "random_dirs"), ||Delta W||_F ("delta_norm"), ||W||_F ("W_norm") and the amplification factor
    ||Delta W||_F / ||U^T W V||_F for Delta W's own directions ("factor"; the paper: 6.91 / 0.32 = 21.5 at r = 4
    for GPT-3's W_q in layer 48). A large factor: Delta W amplifies directions that W barely uses.
    """
    if delta.shape != W.shape:
        raise ValueError(f"Delta W {tuple(delta.shape)} and W {tuple(W.shape)} differ in shape: the update was made "
                         f"for another layer or another base model")
    _check_rank(r, W.shape)
    delta, W = delta.double(), W.double()
    gen = torch.Generator().manual_seed(seed)

    def projected(M):
        return float(torch.linalg.norm(top_directions(M, r, "left").T @ W @ top_directions(M, r, "right")))

    out = {"r": r, "delta_dirs": projected(delta), "W_dirs": projected(W),
           "random_dirs": projected(torch.randn(W.shape, generator=gen, dtype=torch.float64)),
           "delta_norm": float(torch.linalg.norm(delta)), "W_norm": float(torch.linalg.norm(W))}
    out["factor"] = out["delta_norm"] / out["delta_dirs"] if out["delta_dirs"] > 0 else math.inf
    return out


# ------------------------------------------------------------------------------------------ where and how much
def update_norms(factors: AdapterFactors) -> dict[str, float]:
    """||scale * B A||_F of every adapted module (the update in the weight's units), by module name."""
    return {n: float(torch.linalg.norm(factors.delta_weight(n).double())) for n in factors.modules}


def total_update_norm(factors: AdapterFactors) -> float:
    """||Delta W||_F of the whole adapter, all modules together, without building any Delta W:
    ||s (lora_A lora_B)^T||_F^2 = s^2 trace((lora_A^T lora_A)(lora_B lora_B^T)), an r x r product per module."""
    total = 0.0
    for n in factors.modules:
        a, b = factors.lora_A[n].double(), factors.lora_B[n].double()
        total += float(torch.trace((a.T @ a) @ (b @ b.T)))
    return abs(factors.scale) * math.sqrt(max(total, 0.0))


def energy(S: torch.Tensor, m: int) -> float:
    """Share of sum(sigma_i^2) in the m largest singular values S (sorted, descending); 1 - energy is the squared
    relative error of the best rank-m approximation (Eckart-Young)."""
    S2 = S.double().square()
    return float(S2[:m].sum() / S2.sum())


def rank_for_energy(S: torch.Tensor, fraction: float) -> int:
    """The smallest m whose top-m singular values hold at least `fraction` (0 < fraction <= 1) of sum(sigma^2)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    S2 = S.double().square()
    cum = S2.cumsum(0) / S2.sum()
    return int(torch.searchsorted(cum, torch.tensor(fraction - 1e-12, dtype=torch.float64)).item()) + 1
