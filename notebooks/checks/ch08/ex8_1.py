"""Exercise 8.1: an adapter saved as one file, its configuration read back, and the file loaded onto a fresh base."""

import tempfile
from pathlib import Path

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from classify.model import add_classification_head
from gpt import GPTConfig, GPTModel
from lora import LoraConfig, apply_lora, load_adapter, read_adapter

OK_FORMAT = False
name = "ex8_1"
points = 1


def base(seed):
    torch.manual_seed(seed)
    return GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)).eval()


@test_case(points=1)
def ex8_1(env):
    for seed, rank in ((123, 8), (7, 2)):
        model = base(seed)
        add_classification_head(model, num_classes=2)
        apply_lora(model, LoraConfig(rank=rank, alpha=16, targets="all-linear", modules_to_save=("out_head",)),
                   adapter_name="spam")
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.02)
        model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "spam.safetensors"
            result = answer(env, "exercise_8_1", model, path, returns=dict,
                            expects="a dict: the adapter's configuration, read back from the file")
            call = f"exercise_8_1(model, {path.name!r}) (rank {rank})"
            require(path.is_file(),
                    f"{call}: there is no file at the path it was given. Hint: save_adapter(model, path, name=...) "
                    f"writes ONE file when the path ends in .safetensors (a folder otherwise).")
            written = sorted(p.name for p in Path(tmp).iterdir())
            require(written == [path.name], f"{call} wrote {written}; one file, {path.name}, is the whole adapter.")
            config, _ = read_adapter(path)
            require(result == config, f"{call} returned a dict that is not the configuration stored in the file; "
                                      f"hint: lora.read_adapter(path) returns (config, tensors).")
            fresh = load_adapter(base(seed), path)
            x = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                same = torch.allclose(fresh(x), model(x), atol=1e-5)
            require(same, f"{call}: a fresh base with the saved file loaded does not give the trained model's logits; "
                          f"hint: save the adapter that is active (and trained), with its head.")
