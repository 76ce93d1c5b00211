"""Exercise 8.3: what an adapter file holds, read from files the check saves itself (other ranks, targets and
heads than the chapter's), against what safetensors and lora.read_adapter find in them."""

import tempfile
from pathlib import Path

import torch
from otter.test_files import test_case
from safetensors import safe_open

from checks._guard import answer, keys, require
from classify.model import add_classification_head
from gpt import GPTConfig, GPTModel
from lora import LoraConfig, apply_lora, read_adapter, save_adapter

OK_FORMAT = False
name = "ex8_3"
points = 1
KEYS = {"tensors", "tensor_bytes", "header_bytes", "fingerprinted_base_tensors"}


def saved_adapter(folder: Path, rank: int, targets, head: bool, dtype) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0, n_layers=3 if head else 1)).eval()
        if head:
            add_classification_head(model, num_classes=3)
        apply_lora(model, LoraConfig(rank=rank, alpha=8, targets=targets,
                                     modules_to_save=("out_head",) if head else ()), adapter_name="task")
    model.to(dtype)
    return save_adapter(model, folder / f"task-r{rank}.safetensors", name="task")


@test_case(points=1)
def ex8_3(env):
    with tempfile.TemporaryDirectory() as tmp:
        for rank, targets, head, dtype in ((3, ("query", "value"), True, torch.float32),
                                           (5, ("all-linear", "tok_emb"), False, torch.bfloat16)):
            path = saved_adapter(Path(tmp), rank, targets, head, dtype)
            result = answer(env, "exercise_8_3", path, returns=dict, timeout=30,
                            expects="a dict of four ints {'tensors', 'tensor_bytes', 'header_bytes', "
                                    "'fingerprinted_base_tensors'}")
            call = f"exercise_8_3(path) (a file of the check's own: rank {rank}, targets {targets}, {dtype})"
            keys(result, KEYS, call)
            for key, got in result.items():
                require(isinstance(got, int) and not isinstance(got, bool),
                        f"{call}['{key}'] should be an int, not {type(got).__name__}.")
            with safe_open(str(path), framework="pt") as f:
                names = list(f.keys())
                tensor_bytes = sum(f.get_tensor(n).numel() * f.get_tensor(n).element_size() for n in names)
            config, _ = read_adapter(path)
            require(result["tensors"] == len(names),
                    f"{call}['tensors'] = {result['tensors']} is not the number of tensors stored in the file; "
                    f"hint: read the file (section 8.6), do not count the layers you expect.")
            require(result["tensor_bytes"] == tensor_bytes,
                    f"{call}['tensor_bytes'] = {result['tensor_bytes']:,} is not the bytes of the tensors the file "
                    f"holds; hint: add up each stored tensor's size in bytes (its dtype need not be float32).")
            require(result["header_bytes"] == path.stat().st_size - tensor_bytes,
                    f"{call}['header_bytes'] = {result['header_bytes']:,}: everything in the file that is not "
                    f"tensor data, in bytes; hint: compare the file's size on disk with the tensors' bytes.")
            require(result["fingerprinted_base_tensors"] == len(config["base_model"]["fingerprint"]["tensors"]),
                    f"{call}['fingerprinted_base_tensors'] = {result['fingerprinted_base_tensors']}: the number of "
                    f"base tensors the saved fingerprint names; hint: it is in the configuration stored in the file "
                    f"(section 8.9 says what it is for).")
