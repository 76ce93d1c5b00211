"""Exercise 8.4: extra multiply-adds per token of an unmerged adapter, against the blocks' frozen linear layers."""

import torch
from otter.test_files import test_case

from checks._guard import answer, close, keys, require
from gpt import GPTConfig, GPTModel
from lora import LoraConfig, lora_trainable_count

OK_FORMAT = False
name = "ex8_4"
points = 1


@test_case(points=1)
def ex8_4(env):
    for preset, rank, targets in (("gpt-mini", 8, ("all-linear",)), ("gpt2-small", 8, ("query", "value")),
                                  ("gpt-tiny", 4, ("ff",))):
        result = answer(env, "exercise_8_4", preset, rank, targets, returns=dict,
                        expects="a dict {'extra_macs_per_token': int, 'base_linear_macs_per_token': int, 'ratio': float}")
        call = f"exercise_8_4({preset!r}, {rank}, {targets})"
        keys(result, {"extra_macs_per_token", "base_linear_macs_per_token", "ratio"}, call)
        cfg = GPTConfig.from_preset(preset)
        extra = lora_trainable_count(cfg, LoraConfig(rank=rank, targets=targets))
        with torch.device("meta"):
            blocks = GPTModel(cfg).trf_blocks
        base = sum(m.in_features * m.out_features for m in blocks.modules() if isinstance(m, torch.nn.Linear))
        require(result["extra_macs_per_token"] == extra,
                f"{call}['extra_macs_per_token'] = {result['extra_macs_per_token']!r}; hint: a branch on a d_in -> "
                f"d_out layer computes x A (d_in r multiply-adds) then (x A) B (r d_out), per token and wrapped layer.")
        require(result["base_linear_macs_per_token"] == base,
                f"{call}['base_linear_macs_per_token'] = {result['base_linear_macs_per_token']!r}; hint: d_in d_out "
                f"per token for every linear layer of the blocks (attention projections and feed-forward), not the "
                f"embeddings or the output head.")
        require(isinstance(result["ratio"], float) and close(result["ratio"], extra / base),
                f"{call}['ratio'] = {result['ratio']!r}: extra over base, a fraction.")
