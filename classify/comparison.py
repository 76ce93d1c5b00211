"""The fine-tuning comparison of chapter 7.4: its rows, the summary of a row's seeds, its table and the floor.

scripts/compare_finetuning.py runs the rows (each one a scripts/finetune_spam.py run per seed) and writes
results/spam_comparison.{json,md} and results/spam_floor.json with these functions; notebook 7 and the tests
read the same table and names from here:

    from classify.comparison import ROWS, PROBE, markdown_table, summarise
    rows = {name: summarise(runs) for name, runs in all_runs.items()}   # runs: finetune() results per seed
    print(markdown_table(rows, meta))                                   # meta: base, flags, seeds, device ...
"""

from __future__ import annotations

import dataclasses
import statistics

from classify.finetune import PROBES, config_from_args, parse_finetune_args

# The book's appendix E recipe: constant learning rate (our default decays it; see finetune_spam.py).
BOOK_RECIPE = ["--rank", "16", "--alpha", "16", "--lr", "8e-4", "--schedule", "constant", "--targets", "all-linear",
               "--prefix-weight", "0"]
# name -> (extra finetune_spam.py flags, what the row shows)
ROWS: dict[str, tuple[list[str], str]] = {
    "lora-separate": (["--method", "lora", "--attention", "separate"],
                      "LoRA on all linear layers, separate W_query/W_key/W_value"),
    "lora-fused": (["--method", "lora", "--attention", "fused"], "LoRA on all linear layers, fused qkv"),
    # lr 1e-4 for full fine-tuning: chosen on the validation set (seed 123: loss 0.086 vs 0.134 at 8e-4).
    "full": (["--method", "full", "--lr", "1e-4"], "full fine-tuning (lr 1e-4)"),
    "last-block": (["--method", "last-block"], "last block + final norm + head"),
    "head": (["--method", "head"], "head only"),
    "lora-random-base": (["--method", "lora", "--model", "RANDOM"], "lora-separate on a random base"),
    "scale-alpha/r": (["--method", "lora", *BOOK_RECIPE, "--scaling", "alpha/r"], "book recipe (constant lr), alpha/r: scale 1"),
    "scale-alpha": (["--method", "lora", *BOOK_RECIPE, "--scaling", "alpha"], "book recipe (constant lr), 1st printing alpha: scale 16"),
    "lora-whole": (["--method", "lora", "--prefix-weight", "0"], "lora-separate, loss on whole messages only (the book's)"),
}
PROBE = PROBES[0]  # "You won a free cruise, call now"
ACC_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy")


def random_twin(base: str) -> str:
    """'random:<preset>' with the base's shape: the preset whose architecture matches the base."""
    from gpt.checkpoint import read_checkpoint_config
    from gpt.config import PRESETS, GPTConfig
    from gpt.pretrained import describe_base

    info = describe_base(base)
    if info["kind"] == "random":
        return f"random:{info['preset']}"
    if info["kind"] == "checkpoint":
        cfg = read_checkpoint_config(info["path"])
    else:
        raise ValueError(f"no random twin for {base!r}: use a gpt.checkpoint base or random:<preset>")
    shape = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias", "tie_weights")
    for name in PRESETS:
        p = GPTConfig.from_preset(name)
        if all(getattr(p, f) == getattr(cfg, f) for f in shape):
            return f"random:{name}"
    raise ValueError(f"no preset has the shape of {base!r} ({cfg}); cannot build a random base of the same shape")


def run_settings(flags: list[str]) -> tuple:
    """Everything that determines a run's numbers (not where it writes), as finetune_spam.py parses `flags`;
    a bad setting is a ValueError here, before any run."""
    cfg = config_from_args(parse_finetune_args(flags))
    return tuple(sorted((k, str(v)) for k, v in dataclasses.asdict(cfg).items() if k not in ("progress", "seed")))


def summarise(runs: list[dict]) -> dict:
    """Mean (and sample std when several seeds) of each accuracy, mean time, max memory."""
    out = {"seeds": [r["seed"] for r in runs], "trainable_params": runs[0]["trainable_params"]}
    for key in ACC_KEYS:
        values = [r[key] for r in runs]
        out[key] = statistics.mean(values)
        out[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out[key + "_all"] = values
    if all(PROBE in r.get("probes_p_spam", {}) for r in runs):
        out["probe_p_spam"] = statistics.mean(r["probes_p_spam"][PROBE] for r in runs)
    out["finetune_seconds"] = statistics.mean(r["finetune_seconds"] for r in runs)
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    if "cuda_max_allocated_mib" in runs[0]:
        out["cuda_max_allocated_mib"] = max(r["cuda_max_allocated_mib"] for r in runs)
    return out


def pct(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")


def markdown_table(rows: dict, meta: dict) -> str:
    same_as = meta.get("same_as", {})
    gpu = any("cuda_max_allocated_mib" in s for s in rows.values())
    probe = all("probe_p_spam" in s for s in rows.values())  # absent from results made before the probes existed
    head = ["row", "what", "trainable params", "train acc %", "val acc %", "test acc %"] \
        + ([f"p(spam) \"{PROBE}\""] if probe else []) + ["fine-tune time (s)", "peak RSS (MiB)"] \
        + (["peak CUDA (MiB)"] if gpu else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows.items():
        n = len(s["seeds"])
        what = ROWS[name][1] + (f" (= {same_as[name]}: same settings, same runs)" if name in same_as else "")
        cells = [name, what, f"{s['trainable_params']:,}", *(pct(s[k], s[k + '_std'], n) for k in ACC_KEYS),
                 *([f"{s['probe_p_spam']:.2f}"] if probe else []), f"{s['finetune_seconds']:.0f}", f"{s['peak_rss_mib']:.0f}"]
        if gpu:
            cells.append(f"{s.get('cuda_max_allocated_mib', float('nan')):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"Base: `{meta['base']}`; common flags: `{' '.join(meta['common_flags']) or '(defaults)'}`; "
        f"seeds {meta['seeds']} (mean ± sample std over seeds); device {meta['device']}, {meta['threads']} threads.",
        "Accuracies on the book's balanced split (train 1,045 / validation 149 / test 300 messages). "
        "The recipe (3 epochs, cosine decay, LoRA on all linear layers, lr 1e-4 for full fine-tuning) was chosen "
        "on the validation set only; its loss at every prefix of each message (not chosen on validation) is there "
        "against \"short means ham\" (lora-whole leaves it out); the scale-* rows keep the book's constant learning "
        "rate and loss.",
        "Time: training + final evaluation of the three splits, in seconds"
        + (" (runs in this one process; peak RSS grows from row to row)." if meta["in_process"]
           else "; peak RSS is each run's own process (model load included).")
        + (f" {meta['jobs']} runs at a time, so the times include their contention." if meta.get("jobs", 1) > 1 else "")
        + (f" The machine is shared: its 1-minute load average at the end of each run was {meta['load_average']} (2 cores)." if meta.get("load_average") else ""),
    ]
    if probe:
        notes.append(f"p(spam) is the mean over the seeds for one message: an anecdote, not a score (a model can "
                     f"call it spam and still be a poor classifier).")
    if "lora-separate" in rows and "full" in rows:
        gap = 100 * (rows["lora-separate"]["test_accuracy"] - rows["full"]["test_accuracy"])
        notes.append(f"LoRA (separate) test accuracy {100 * rows['lora-separate']['test_accuracy']:.2f} % vs full "
                     f"fine-tuning {100 * rows['full']['test_accuracy']:.2f} %: LoRA minus full = {gap:+.2f} points.")
    if "scale-alpha/r" in rows and "scale-alpha" in rows:
        notes.append(f"LoRA scale: alpha/r gives {100 * rows['scale-alpha/r']['test_accuracy']:.2f} % test accuracy, "
                     f"the first printing's alpha (16x larger update at the same lr) "
                     f"{100 * rows['scale-alpha']['test_accuracy']:.2f} %.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


FLOOR = 0.94  # the project's floor: LoRA on the shipped gpt-mini, mean test accuracy of three seeds


def floor_record(rows: dict, all_runs: dict, meta: dict) -> dict | None:
    """The floor, checked on this comparison: LoRA (separate) test accuracy, mean over seeds,
    >= 94 % and within one point of full fine-tuning. None when a row is missing or the base is not
    a checkpoint file (the record names the base by its sha256)."""
    from classify.data import sha256_of
    from gpt.pretrained import describe_base

    info = describe_base(meta["base"])
    if info["kind"] != "checkpoint" or "lora-separate" not in rows or "full" not in rows:
        return None
    lora, full = rows["lora-separate"], rows["full"]
    return {
        "claim": "LoRA on the shipped gpt-mini reaches >= 94 % test accuracy (mean of the seeds) and stays within "
                 "one point of full fine-tuning on the same base",
        "floor": FLOOR,
        "base": meta["base"], "base_sha256": sha256_of(info["path"]),
        "command_main_job": "python scripts/finetune_spam.py --seed SEED",
        "command": meta["command"],
        "seeds": lora["seeds"],
        "lora_test_accuracy": dict(zip(map(str, lora["seeds"]), lora["test_accuracy_all"])),
        "lora_test_accuracy_mean": lora["test_accuracy"],
        "lora_val_accuracy_mean": lora["val_accuracy"],
        "full_test_accuracy": dict(zip(map(str, full["seeds"]), full["test_accuracy_all"])),
        "full_test_accuracy_mean": full["test_accuracy"],
        "meets_floor": lora["test_accuracy"] >= FLOOR,
        "within_one_point_of_full": full["test_accuracy"] - lora["test_accuracy"] <= 0.01,
        "main_job_seconds": [r["total_seconds"] for r in all_runs["lora-separate"]],
        "device": meta["device"], "threads": meta["threads"], "torch": meta["torch"],
    }
