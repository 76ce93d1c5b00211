"""Exercise 3.1: the parameter count of a GPTConfig by formula equals GPTModel's count, for every kind of config."""

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from gpt import GPTConfig, GPTModel, count_parameters
from gpt.model import TransformerBlock

FORBIDDEN = "the check forbids building the model here: compute the count from the configuration's numbers"


def refuse(*args, **kwargs):
    raise RuntimeError(FORBIDDEN)

OK_FORMAT = False
name = "ex3_1"
points = 1


@test_case(points=1)
def ex3_1(env):
    configs = [GPTConfig.from_preset("gpt2-medium"),
               GPTConfig.from_preset("gpt2-medium", qkv_bias=True, tie_weights=True),
               GPTConfig.from_preset("gpt-mini"),
               GPTConfig.from_preset("gpt-tiny", qkv_bias=True, tie_weights=False, context_length=37)]
    for cfg in configs:
        call = (f"exercise_3_1(GPTConfig(emb_dim={cfg.emb_dim}, n_layers={cfg.n_layers}, context_length="
                f"{cfg.context_length}, qkv_bias={cfg.qkv_bias}, tie_weights={cfg.tie_weights}))")
        inits = (GPTModel.__init__, TransformerBlock.__init__)
        GPTModel.__init__ = TransformerBlock.__init__ = refuse  # the statement: not by building the model
        try:
            count = answer(env, "exercise_3_1", cfg, returns=int, expects="an int: the number of parameters")
        finally:
            GPTModel.__init__, TransformerBlock.__init__ = inits
        with torch.device("meta"):  # shapes only
            truth = count_parameters(GPTModel(cfg))
        require(count == truth,
                f"{call} = {count:,}, but the model has {truth - count:+,} parameters more than that. Hint: go "
                f"through GPTModel's modules one by one (section 3.7) and ask which flags of the configuration change "
                f"each one.")
