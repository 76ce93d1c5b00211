"""Chapter 9's study of trained adapters: its runs (`plan`), their record in results/ch09, and the analyses
notebooks/09_inside_an_adapter.ipynb shows.

    from classify import adapter_study
    runs = adapter_study.load_runs()["runs"]            # results/ch09/runs.json: accuracies, commands, histories
    adapter_study.budget_table(runs)                     # Table 5 of the LoRA paper, on the spam classifier
    adapter_study.similarity_grids("qv_r8_s123", "qv_r64_s123")   # Figure 3: phi(i, j) per module

Every run is the main job (scripts/finetune_spam.py) with the targets, rank and seed of the LoRA paper's
section 7 experiments (Hu et al. 2021, arXiv:2106.09685); scripts/ch09_inside_adapter.py trains them
(`train`), copies what the chapter needs into results/ch09 (`collect`, this module's `collect`) and prints
the chapter's numbers (`analyse`). The file formats are its docstring's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from common.cli import UserError
from common.files import atomic_write_text
from lora.analysis import (AdapterFactors, amplification, check_comparable, check_fits_base, load_factors,
                           principal_angles, save_factors, similarity_grid, top_directions, total_update_norm,
                           update_norms)

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "results" / "ch09"
BASE = ROOT / "data" / "gpt-mini"
FULL_SVD_TOP = 64  # directions kept per matrix of full fine-tuning's Delta W
MAX_FILE_BYTES = 3 * 2**20
KINDS = ("att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.layers.0", "ff.layers.2")
SHORT = {"att.W_query": "query", "att.W_key": "key", "att.W_value": "value", "att.out_proj": "out_proj",
         "ff.layers.0": "ff_in", "ff.layers.2": "ff_out"}
BUDGET_PER_BLOCK = 18_432
BUDGET = {"query": (["query"], 36), "value": (["value"], 36), "query+value": (["query", "value"], 18),
          "attention (q, k, v, out)": (["query", "key", "value", "out_proj"], 9), "all linear": (["all-linear"], 4)}
SEEDS = (123, 124, 125)
SWEEP_RANKS = (1, 2, 4, 8, 16, 64)


@dataclass
class Run:
    name: str
    flags: list[str]
    keep: str = "none"  # what collect keeps of the adapter: "all" (A, B and head), "qv" (query and value only), "none"

    @property
    def frozen_head(self) -> bool:
        """The run leaves the new head frozen (finetune_spam.py --frozen-head, chapter 9's mistake)."""
        return "--frozen-head" in self.flags


def lora_flags(targets: list[str], rank: int, seed: int, *extra: str) -> list[str]:
    return ["--targets", *targets, "--rank", str(rank), "--alpha", str(rank), "--seed", str(seed), *extra]


def plan() -> list[Run]:
    """Every run of the chapter, in the order they were trained (the most needed first)."""
    short = {"query": "q", "value": "v", "query+value": "qv", "attention (q, k, v, out)": "attn",
             "all linear": "all-linear"}

    def budget(seed: int) -> list[Run]:
        return [Run(f"budget_{short[k]}_r{r}_s{seed}", lora_flags(t, r, seed), "all" if seed == 123 else "none")
                for k, (t, r) in BUDGET.items()]

    def sweep(targets: str, r: int, keep: str = "all") -> Run:
        return Run(f"sweep_{targets}_r{r}_s123", lora_flags(["query", "value"] if targets == "qv" else ["all-linear"],
                                                               r, 123), keep)

    return [Run("main_all-linear_r16_s123", lora_flags(["all-linear"], 16, 123), "all"),
            Run("qv_r8_s123", lora_flags(["query", "value"], 8, 123), "all"),
            Run("qv_r64_s123", lora_flags(["query", "value"], 64, 123), "all"),
            Run("qv_r8_s124", lora_flags(["query", "value"], 8, 124), "all"),
            Run("full_s123", ["--method", "full", "--lr", "1e-4", "--weight-decay", "0", "--seed", "123"]),
            *budget(123),
            Run("fail_lr10x_s123", lora_flags(["all-linear"], 16, 123, "--lr", "8e-3")),
            Run("fail_frozen-head_s123", lora_flags(["all-linear"], 16, 123, "--frozen-head"), "all"),
            sweep("qv", 1), sweep("all-linear", 1), sweep("qv", 4),
            *budget(124),
            sweep("qv", 16), sweep("qv", 2), sweep("all-linear", 8), sweep("all-linear", 2),
            *budget(125),
            sweep("all-linear", 64, keep="qv")]  # 7 MB as float16: only its query and value matrices are kept


def sweep_run(targets: str, r: int) -> str:
    """The run name that holds (targets "qv" or "all-linear", rank r, seed 123)."""
    for name in (f"sweep_{targets}_r{r}_s123", f"qv_r{r}_s123", f"budget_{targets}_r{r}_s123", f"main_{targets}_r{r}_s123"):
        if name in {x.name for x in plan()}:
            return name
    raise KeyError(f"no run of {targets} at r = {r}")


def shown_command(run: Run) -> str:
    """The command as a reader types it (recorded in runs.json)."""
    return f"python scripts/finetune_spam.py {' '.join(run.flags)} --no-progress --threads 1"


# ------------------------------------------------------------------------------------------- base weights
def base_identity(base: Path = BASE) -> dict:
    """What identifies the base: its folder and the sha256 of its weights file."""
    digest = hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    return {"name": str(base.relative_to(ROOT)) if base.is_relative_to(ROOT) else str(base), "sha256": digest}


def base_weights(base: Path = BASE) -> dict[str, torch.Tensor]:
    """The block matrices of a gpt.checkpoint base (e.g. data/gpt-mini), name -> weight (d_out, d_in) float32,
    read with safetensors directly (shipped as float16, upcast as the model loader does)."""
    from safetensors import safe_open

    path = base / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the base model ships in data/gpt-mini (see data/README.md)")
    with safe_open(str(path), "pt") as f:
        return {k[: -len(".weight")]: f.get_tensor(k).float() for k in f.keys()
                if k.startswith("trf_blocks.") and k.endswith(".weight") and k.count(".") >= 4 and "norm" not in k}


# ------------------------------------------------------------------------------------------- collect
def _summary(result: dict, run: Run) -> dict:
    keys = ("method", "lora", "lr", "epochs", "seed", "steps", "trainable_params", "train_accuracy", "val_accuracy",
            "test_accuracy", "train_loss", "val_loss", "test_loss", "probes_p_spam", "train_seconds", "threads",
            "load_average_1min", "history")
    out = {k: result.get(k) for k in keys}
    out["command"] = shown_command(run)
    out["frozen_head"] = run.frozen_head
    return out


def factors_from_run(folder: Path, result: dict, base: dict, keep: str) -> AdapterFactors:
    """The LoRA matrices (and the head) of a finished run's adapter.safetensors."""
    from safetensors import safe_open

    with safe_open(str(folder / "adapter.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    lora_A = {k[: -len(".lora_A")]: v for k, v in tensors.items() if k.endswith(".lora_A")}
    lora_B = {k[: -len(".lora_B")]: v for k, v in tensors.items() if k.endswith(".lora_B")}
    if keep == "qv":
        lora_A = {k: v for k, v in lora_A.items() if k.endswith(("W_query", "W_value"))}
        lora_B = {k: v for k, v in lora_B.items() if k in lora_A}
    head = {k: v for k, v in tensors.items() if k.startswith("out_head.")} if keep == "all" else {}
    cfg = result["lora"]
    scale = cfg["alpha"] / cfg["rank"] if cfg["scaling"] == "alpha/r" else None
    if scale is None:
        raise UserError(f"{folder}: scaling {cfg['scaling']!r}; the chapter's runs all use alpha/r")
    meta = {"rank": cfg["rank"], "alpha": cfg["alpha"], "targets": cfg["targets"], "seed": result["seed"],
            "kept": keep, "test_accuracy": result["test_accuracy"], "val_accuracy": result["val_accuracy"]}
    return AdapterFactors(lora_A, lora_B, scale, base, meta, head)


def full_ft_svd(folder: Path, weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Delta W = W_fine-tuned - W_pre-trained of every block matrix of a full fine-tune, as its truncated SVD:
    {kind: {"<name>.U": (d_out, 64), "<name>.S": (all singular values), "<name>.Vh": (64, d_in)}}."""
    from safetensors import safe_open

    out: dict[str, dict[str, torch.Tensor]] = {"attention": {}, "ff": {}}
    with safe_open(str(folder / "classifier.safetensors"), "pt") as f:
        for name, W in weights.items():
            delta = f.get_tensor(f"{name}.weight").double() - W.double()
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            part = out["ff" if ".ff." in name else "attention"]
            part[f"{name}.U"] = U[:, :FULL_SVD_TOP].to(torch.float16).contiguous()
            part[f"{name}.S"] = S.float().contiguous()
            part[f"{name}.Vh"] = Vh[:FULL_SVD_TOP].to(torch.float16).contiguous()
    return out


def collect(runs_dir: Path, out: Path = RESULTS, log=print) -> None:
    """Copy what the chapter needs from finished runs in runs_dir into `out` (results/ch09: runs.json,
    adapters/<run>.safetensors, full_ft_delta_svd_{attention,ff}.safetensors; scripts/ch09_inside_adapter.py's
    docstring describes them); `log` gets one line per file written."""
    from safetensors.torch import save_file

    base = base_identity()
    weights = base_weights()
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    runs_file = out / "runs.json"
    runs = json.loads(runs_file.read_text())["runs"] if runs_file.is_file() else {}
    for run in plan():
        result_file = runs_dir / f"{run.name}.json"
        if not result_file.is_file():
            continue
        result = json.loads(result_file.read_text())
        runs[run.name] = _summary(result, run)
        if result["method"] == "lora":
            factors = factors_from_run(runs_dir / run.name, result, base, "all" if run.keep == "none" else run.keep)
            if run.frozen_head and result["trainable_params"] != factors.num_parameters():
                raise UserError(f"{run.name}: {result['trainable_params']:,} trainable parameters, but the LoRA "
                                f"matrices alone are {factors.num_parameters():,}: the head was trained after all")
            check_fits_base(factors, weights)
            norms = update_norms(factors)
            runs[run.name]["update_norm"] = total_update_norm(factors)
            runs[run.name]["update_norms"] = norms
            if run.keep != "none":
                path = out / "adapters" / f"{run.name}.safetensors"
                half = {n: factors.lora_A[n].half() for n in factors.modules}
                if not (path.is_file() and all(torch.equal(load_factors(path).lora_A[n].half(), half[n]) for n in half)):
                    save_factors(factors, path, dtype=torch.float16)  # only when new: the file's header order varies
                back = load_factors(path)  # float16 storage: check what the analyses will read
                err = max(float(torch.linalg.norm(back.delta_weight(n) - factors.delta_weight(n))
                                / torch.linalg.norm(factors.delta_weight(n))) for n in factors.modules)
                runs[run.name]["stored_relative_error"] = err
                log(f"{run.name}: {path.stat().st_size / 2**20:.2f} MiB, Delta W within {err:.1e} of float32")
        elif run.name == "full_s123" and not (out / "full_ft_delta_svd_ff.safetensors").is_file():
            for kind, tensors in full_ft_svd(runs_dir / run.name, weights).items():
                path = out / f"full_ft_delta_svd_{kind}.safetensors"
                save_file(tensors, str(path), metadata={"top": str(FULL_SVD_TOP), "base": json.dumps(base)})
                log(f"{path.name}: {path.stat().st_size / 2**20:.2f} MiB")
    doc = {"about": "Chapter 9's runs (scripts/ch09_inside_adapter.py): accuracies, commands, histories, and the "
                    "Frobenius norm of each adapter's update per module (scale * B A).",
           "base": base, "budget_per_block": BUDGET_PER_BLOCK, "runs": runs}
    atomic_write_text(runs_file, json.dumps(doc, indent=1) + "\n")
    too_big = [p for p in out.rglob("*") if p.is_file() and p.stat().st_size >= MAX_FILE_BYTES]
    if too_big:
        raise UserError(f"results files over 3 MiB: {too_big}")
    log(f"{len(runs)} runs in {runs_file}")


# ------------------------------------------------------------------------------------------- reading results
def load_runs(results: Path = RESULTS) -> dict:
    path = results / "runs.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: make it with `python scripts/ch09_inside_adapter.py train`")
    return json.loads(path.read_text())


def load_adapter(name: str, results: Path = RESULTS) -> AdapterFactors:
    return load_factors(results / "adapters" / f"{name}.safetensors")


def load_full_svd(results: Path = RESULTS) -> dict[str, dict[str, torch.Tensor]]:
    """name -> {"U": (d_out, 64), "S": all singular values, "Vh": (64, d_in)} of full fine-tuning's Delta W."""
    from safetensors.torch import load_file

    out: dict[str, dict[str, torch.Tensor]] = {}
    for kind in ("attention", "ff"):
        for key, t in load_file(str(results / f"full_ft_delta_svd_{kind}.safetensors")).items():
            name, part = key.rsplit(".", 1)
            out.setdefault(name, {})[part] = t.double()
    return out


def module(layer: int, kind: str) -> str:
    return f"trf_blocks.{layer}.{kind}"


# ------------------------------------------------------------------------------------------- analyses
def budget_table(runs: dict) -> list[dict]:
    """Table 5: test / validation accuracy of each target set at 18,432 LoRA parameters per block, per seed."""
    rows = []
    names = {"query": "q", "value": "v", "query+value": "qv", "attention (q, k, v, out)": "attn", "all linear": "all-linear"}
    for label, (targets, r) in BUDGET.items():
        found = [runs[f"budget_{names[label]}_r{r}_s{s}"] for s in SEEDS if f"budget_{names[label]}_r{r}_s{s}" in runs]
        test = torch.tensor([x["test_accuracy"] for x in found], dtype=torch.float64) * 100
        val = torch.tensor([x["val_accuracy"] for x in found], dtype=torch.float64) * 100
        rows.append({"targets": label, "r": r, "seeds": len(found),
                     "lora_params": found[0]["trainable_params"] - 514 if found else None,
                     "test": test.tolist(), "test_mean": float(test.mean()) if found else None,
                     "test_std": float(test.std()) if len(found) > 1 else 0.0,
                     "val_mean": float(val.mean()) if found else None})
    return rows


def sweep_table(runs: dict) -> list[dict]:
    """Table 6: accuracy against r on query + value and on all linear layers (seed 123)."""
    rows = []
    for targets in ("qv", "all-linear"):
        for r in SWEEP_RANKS:
            name = sweep_run(targets, r)
            if name in runs:
                x = runs[name]
                rows.append({"targets": targets, "r": r, "run": name, "trainable_params": x["trainable_params"],
                             "test": 100 * x["test_accuracy"], "val": 100 * x["val_accuracy"]})
    return rows


def similarity_grids(first: str, second: str, kinds=("att.W_query", "att.W_value"), n_layers: int = 6) -> dict:
    """phi(i, j) between the A matrices of two adapters, per (layer, kind) -> (r1, r2) tensor."""
    a, b = load_adapter(first), load_adapter(second)
    mods = [module(layer, k) for layer in range(n_layers) for k in kinds]
    check_comparable(a, b, mods)
    return {m: similarity_grid(a.lora_A[m], b.lora_A[m]) for m in mods}


def amplification_table(adapter: AdapterFactors, weights: dict[str, torch.Tensor], r: int | None = None) -> dict:
    """Table 7 per module of `adapter`, at its rank (or r)."""
    check_fits_base(adapter, weights)
    return {m: amplification(adapter.delta_weight(m), weights[m], r or adapter.rank) for m in adapter.modules}


def lora_vs_full(adapter: AdapterFactors, full: dict, r: int | None = None) -> dict:
    """Principal angles (degrees) between LoRA's Delta W and full fine-tuning's top-r subspaces, output side (left)
    and input side (right), per module; plus what two random r-dimensional subspaces would give (mean cos^2 = r/d)."""
    r = r or adapter.rank
    out = {}
    for m in adapter.modules:
        d = adapter.delta_weight(m).double()
        left = principal_angles(top_directions(d, r, "left"), full[m]["U"][:, :r])
        right = principal_angles(top_directions(d, r, "right"), full[m]["Vh"][:r].T)
        out[m] = {"left": left, "right": right,
                  "mean_cos2_left": float(torch.cos(torch.deg2rad(left)).square().mean()),
                  "mean_cos2_right": float(torch.cos(torch.deg2rad(right)).square().mean()),
                  "random_cos2_left": r / d.shape[0], "random_cos2_right": r / d.shape[1]}
    return out
