"""The main job: fine-tune a GPT spam classifier with LoRA (the book's chapter 6 + appendix E).

    python scripts/finetune_spam.py                        # LoRA on the shipped gpt-mini (CPU, < 5 minutes)
    python scripts/finetune_spam.py --method full          # or last-block, head: the chapter 6 baselines
    python scripts/finetune_spam.py --model gpt2-small     # OpenAI's GPT-2 from the cache (gpt/download.py)
    python scripts/finetune_spam.py --model random         # the same LoRA on an untrained base
    python scripts/finetune_spam.py --quick                # a tiny random model, a few steps: runs/quick/ (tests, CI)
    python scripts/predict.py --adapter runs/spam-lora "You won a free cruise, call now"
    torchrun --nproc_per_node=2 scripts/finetune_spam.py   # data-parallel, same global --batch-size

The job itself is classify/finetune.py (`finetune(FinetuneConfig(...), out=...)`, its docstring says what
happens in order); this script parses the flags (one per FinetuneConfig field), calls it and prints. The run
folder (adapter or weights, classifier.json, history.json, curves.png) is written whole or not at all, and
replaces --out only when complete; --out must be new, empty or an earlier run's folder, and a --quick run
(saved under runs/quick/) never replaces a real run. Bad settings and files are refused in one line
before any training (common.cli.run_main; --debug shows the traceback).

The recipe is the book's appendix E (r=16, alpha=16, AdamW lr 8e-4, weight decay 0.1, batch 8,
LoRA on every linear layer) with two changes chosen on the VALIDATION set only (never the test set):
3 epochs instead of 5 (to stay within minutes on a 2-core CPU) and a cosine learning-rate decay after
20 warm-up steps instead of a constant rate (`--schedule constant` gives the book's behaviour).

And one change to the loss, NOT chosen on the validation set: besides the cross-entropy at each
message's last token (the book's), the same loss at every token (--prefix-weight 1), i.e. on every
beginning of every training message, because few training spam messages are short and a classifier
trained on whole messages learns "short means ham" (notebook 7.6 shows it token by token);
--prefix-weight 0 gives the book's loss. What each choice measured, with three seeds:
results/spam_comparison.md (rows lora-separate and lora-whole) and results/spam_floor.json.
"""

from __future__ import annotations

import os
import sys

from classify.finetune import config_from_args, finetune, finetune_parser, parse_finetune_args
from common.cli import run_main


def parse_args(argv=None):
    """The command line as parsed (--quick swaps in its defaults; --out filled in)."""
    return parse_finetune_args(argv, finetune_parser(__doc__.split("\n\n")[0]))


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = config_from_args(args)  # every setting checked here, before any work
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
    return finetune(cfg, out=args.out, result_json=args.result_json,
                    command=f"{launcher} scripts/finetune_spam.py {' '.join(argv)}".strip())


if __name__ == "__main__":
    run_main(main)
