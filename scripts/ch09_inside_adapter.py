"""Chapter 9 script: the trained adapters that notebooks/09_inside_an_adapter.ipynb opens, and its measurements.

    python scripts/ch09_inside_adapter.py analyse               # the chapter's numbers from results/ch09 (seconds)
    python scripts/ch09_inside_adapter.py train --runs runs/ch09 # train every run below, one at a time, then
                                                                # collect (2 to 5 minutes a run on a 2-core CPU)
    python scripts/ch09_inside_adapter.py collect --runs runs/ch09   # only copy finished runs into results/ch09
    python scripts/ch09_inside_adapter.py plan                  # print the runs and their commands

Every run is the main job, `scripts/finetune_spam.py` (LoRA with alpha = r, so the scale alpha/r is 1 at every
rank and ranks differ only in how many directions they can use; AdamW lr 8e-4, 3 epochs, cosine schedule,
the loss at every prefix), with the targets, rank and seed of the LoRA paper's section 7 experiments
(Hu et al. 2021, arXiv:2106.09685):

  budget_*  Table 5: which weights, at the same 18,432 trainable LoRA parameters per block (gpt-mini: d = 256,
            4 attention projections 256 x 256 and a feed-forward 256 -> 1024 -> 256): query only r = 36, value
            only r = 36, query + value r = 18, the four attention projections r = 9, all linear r = 4;
            seeds 123, 124, 125 (results/ch09/runs.json says which were trained).
  sweep_*   Table 6: r = 1, 2, 4, 8, 16, 64 on query + value and on all linear layers (seed 123).
  qv_*      Figures 3 and 4: query + value at r = 8 and r = 64 (seed 123) and r = 8 (seed 124).
  full_s123 full fine-tuning (lr 1e-4, no weight decay: with decay AdamW would add a full-rank multiple of W to
            Delta W), whose Delta W is kept as its truncated SVD (top 64 directions per matrix).
  fail_*    two failures of chapter 9.8: a learning rate 10x too high (8e-3), and the new head left frozen
            (modules_to_save forgotten: finetune_spam.py --frozen-head).

The runs, the record and the analyses are classify/adapter_study.py; this script parses, calls and prints.
`collect` writes results/ch09 in this chapter's own format, independent of the run folders': runs.json
(each run's command, accuracies, losses, history, trainable parameters), adapters/<run>.safetensors
(the LoRA A and B matrices of every adapted layer, float16, read by lora.analysis.load_factors) for the runs
the analyses open, and full_ft_delta_svd_{attention,ff}.safetensors. Every file stays under 3 MiB.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from classify.adapter_study import (RESULTS, Run, amplification_table, base_weights, budget_table, collect,
                                    load_adapter, load_full_svd, load_runs, lora_vs_full, plan, shown_command,
                                    similarity_grids, sweep_table)
from common.cli import ArgumentParser, UserError, run_main
from gpt.device import add_device_argument, pick_device
from lora.analysis import total_update_norm, update_norms

ROOT = Path(__file__).resolve().parent.parent


def command(run: Run, runs_dir: Path, device: str = "auto") -> list[str]:
    """The run as its own process (its peak memory its own): scripts/finetune_spam.py with the run's flags."""
    return [sys.executable, str(ROOT / "scripts" / "finetune_spam.py"), *run.flags, "--out", str(runs_dir / run.name),
            "--result-json", str(runs_dir / f"{run.name}.json"), "--no-progress", "--threads", "1",
            "--device", device]


# ------------------------------------------------------------------------------------------- training
def train(runs_dir: Path, only: list[str] | None = None, results: Path = RESULTS, device: str = "auto") -> None:
    """Run the plan's missing runs one after the other (each one thread), then collect."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    for run in plan():
        if (only and run.name not in only) or (runs_dir / f"{run.name}.json").is_file():
            continue
        print(f"== {run.name}: {shown_command(run)}", flush=True)
        subprocess.run(command(run, runs_dir, device), check=True)
    collect(runs_dir, results)


def analyse() -> dict:
    """Print the chapter's measurements from results/ch09 (the notebook shows them with figures); returns them."""
    from lora.analysis import rank_for_energy

    runs = load_runs()["runs"]
    have = {p.stem for p in (RESULTS / "adapters").glob("*.safetensors")}
    out: dict = {}
    print("Table 5 (which weights, 18,432 LoRA parameters per block), test accuracy %, mean +- std over seeds:")
    for row in budget_table(runs):
        if row["seeds"]:
            print(f"  {row['targets']:26} r={row['r']:2}: {row['test_mean']:.2f} +- {row['test_std']:.2f} "
                  f"({row['seeds']} seeds; validation {row['val_mean']:.2f})")
    print("Table 6 (rank), test / validation accuracy %:")
    for row in sweep_table(runs):
        print(f"  {row['targets']:10} r={row['r']:2}: {row['test']:.2f} / {row['val']:.2f}  ({row['trainable_params']:,} trainable)")
    weights = base_weights()
    for first, second, what in (("qv_r8_s123", "qv_r64_s123", "r=8 vs r=64"), ("qv_r8_s123", "qv_r8_s124", "seed 123 vs 124")):
        if {first, second} <= have:
            grids = similarity_grids(first, second, ("att.W_query", "att.W_value"))
            top1 = torch.tensor([float(g[0, 0]) for g in grids.values()])
            out[f"phi11 {what}"] = top1.tolist()
            print(f"Figures 3/4, {what}: phi(1, 1) median {top1.median():.2f} over {len(top1)} modules "
                  f"(random: {1 / 256:.4f})")
    for name, r in (("sweep_qv_r4_s123", 4), ("qv_r64_s123", 64)):
        if name in have:
            f = torch.tensor([t["factor"] for t in amplification_table(load_adapter(name), weights).values()])
            out[f"amplification r={r}"] = f.tolist()
            print(f"Table 7, query + value at r = {r}: amplification factor median {f.median():.1f} "
                  f"({f.min():.1f} .. {f.max():.1f})")
    main = load_adapter("main_all-linear_r16_s123")
    if (RESULTS / "full_ft_delta_svd_attention.safetensors").is_file():
        full = load_full_svd()
        versus = lora_vs_full(main, full, r=16)
        cos2 = torch.tensor([v["mean_cos2_right"] for v in versus.values()])
        print(f"LoRA (r = 16) vs full fine-tuning, top-16 input subspaces: mean cos^2 {cos2.mean():.2f} "
              f"(random: {16 / 256:.3f} or {16 / 1024:.3f})")
        need = torch.tensor([rank_for_energy(full[n]["S"], 0.9) for n in full], dtype=torch.float64)
        print(f"rank holding 90 % of full fine-tuning's Delta W energy: median {need.median():.0f} over {len(need)} matrices")
    norms = update_norms(main)
    whole = total_update_norm(main)
    ff = sum(v * v for n, v in norms.items() if ".ff." in n) / whole ** 2
    print(f"main adapter: ||Delta W|| {whole:.3f}, feed-forward share of its square {100 * ff:.1f} %")
    return out


# ------------------------------------------------------------------------------------------- command line
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", nargs="?", default="analyse", choices=["analyse", "train", "collect", "plan"],
                   help="analyse: the chapter's numbers from results/ch09; plan: the runs; train: run them; "
                        "collect: copy what the chapter needs from finished runs into --results")
    p.add_argument("--runs", default=str(ROOT / "runs" / "ch09"), help="folder of the run folders (train, collect)")
    p.add_argument("--only", nargs="*", help="train only these runs (names from `plan`)")
    p.add_argument("--results", default=str(RESULTS), help="where collect writes (the chapter reads results/ch09)")
    add_device_argument(p, note="train passes it to every run")
    args = p.parse_args(argv)
    if args.action == "plan":
        for run in plan():
            print(f"{run.name:28} {shown_command(run)}")
    elif args.action == "train":
        pick_device(args.device)  # an unknown or missing device is refused before any run starts
        train(Path(args.runs), args.only, Path(args.results), args.device)
    elif args.action == "collect":
        if not Path(args.runs).is_dir():
            raise UserError(f"{args.runs} is not a folder of runs; train them first (`train --runs {args.runs}`)")
        collect(Path(args.runs), Path(args.results))
    else:
        analyse()


if __name__ == "__main__":
    run_main(main)
