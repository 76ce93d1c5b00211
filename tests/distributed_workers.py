"""The programs tests/test_distributed.py runs under torchrun (and, for the fine-tune, in its own process too).

    python -m torch.distributed.run --nproc_per_node=2 --standalone -m distributed_workers record \
        scripts.pretrain OUT_{rank}.json ARGS...     # a script's main(ARGS), recording the windows each rank reads
    python -m torch.distributed.run --nproc_per_node=2 --standalone -m distributed_workers finetune OUT.json

(with this folder and the project root on PYTHONPATH).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import torch

import gpt.train
from classify.data import spam_splits
from classify.dataset import ClassificationDataset, make_loader
from classify.model import add_classification_head
from classify.train import train_classifier
from gpt.config import GPTConfig
from gpt.distributed import cleanup, init_distributed, is_main_process, shard_loader, unwrap, wrap_model
from gpt.model import GPTModel
from lora import LoraConfig, apply_lora, lora_state_dict


class Recording(torch.utils.data.Dataset):
    """A dataset that notes every index read from it."""

    def __init__(self, data, reads: list[int]):
        self.data, self.reads = data, reads

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads.append(int(i))
        return self.data[i]


def record(module: str, out_file: str, argv: list[str]) -> None:
    """Run `module`.main(argv) with gpt.train.pretrain reading its training windows through Recording; write the
    indices this rank read to out_file (with {rank} filled in)."""
    reads: list[int] = []
    original = gpt.train.pretrain
    gpt.train.pretrain = lambda model, train_data, *a, **k: original(model, Recording(train_data, reads), *a, **k)
    importlib.import_module(module).main(argv)  # imported after the patch: it sees the recording pretrain
    Path(out_file.format(rank=os.environ["RANK"])).write_text(json.dumps(reads))


def finetune(out: str) -> None:
    """A LoRA spam fine-tune of a small random GPT, with the DDP plumbing a training script needs:
    init_distributed, wrap_model, shard_loader (each rank keeps its share of the one-process batches),
    rank 0 writes the history and the LoRA weights to `out` (JSON)."""
    device = init_distributed(torch.device("cpu"))  # joins the gloo group under torchrun, else nothing
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", n_layers=1, drop_rate=0.0))
    add_classification_head(model, 2)
    apply_lora(model, LoraConfig(rank=4, alpha=8, targets=("query", "value"), modules_to_save=("out_head",)))
    splits = spam_splits()
    train_set = ClassificationDataset(splits["train"][:48], context_length=64)
    val_set = ClassificationDataset(splits["val"][:37], max_length=train_set.max_length)  # 37: an odd last batch
    train_loader = shard_loader(make_loader(train_set, 8, shuffle=True, drop_last=True, seed=5))
    val_loader = shard_loader(make_loader(val_set, 8), even=False)
    model = wrap_model(model, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    history = train_classifier(model, train_loader, val_loader, optimizer, epochs=2, device=device,
                               eval_every=6, seed=1, log=None, progress=False)
    if is_main_process():
        weights = {k: v.tolist() for k, v in lora_state_dict(unwrap(model)).items()}
        Path(out).write_text(json.dumps({"history": history.to_dict(), "weights": weights}))
    cleanup()


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        finetune(sys.argv[2])
