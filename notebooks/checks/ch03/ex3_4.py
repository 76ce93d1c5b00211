"""Exercise 3.4: memory of GPT-2 XL's weights and of AdamW training, full and with a small trainable share."""

import torch
from otter.test_files import test_case

from checks._guard import answer, close, keys, require
from gpt import GPTConfig, GPTModel, count_parameters
from gpt.config import GPT2_CHECKPOINT_SETTINGS

OK_FORMAT = False
name = "ex3_4"
points = 1
KEYS = {"parameters", "fp32_weights_gb", "bf16_weights_gb", "adamw_fp32_full_gb", "adamw_fp32_partial_gb"}


@test_case(points=1)
def ex3_4(env):
    with torch.device("meta"):
        xl = count_parameters(GPTModel(GPTConfig.from_preset("gpt2-xl", **GPT2_CHECKPOINT_SETTINGS)))
    for kwargs, n in [({}, xl), ({"n_params": 10**9, "trainable_fraction": 0.1}, 10**9)]:
        call = f"exercise_3_4({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        result = answer(env, "exercise_3_4", **kwargs, returns=dict, timeout=30,
                        expects="a dict {'parameters': int, and four sizes in GB (10^9 bytes) as floats}")
        keys(result, KEYS, call)
        require(result["parameters"] == n, f"{call}['parameters'] = {result['parameters']!r}; count the released "
                f"GPT-2 XL (tied, qkv biases) on the meta device when n_params is None, else use n_params.")
        require(close(result["fp32_weights_gb"], 4 * n / 1e9) and close(result["bf16_weights_gb"], 2 * n / 1e9),
                f"{call}: weights {result['fp32_weights_gb']!r} GB (fp32) and {result['bf16_weights_gb']!r} GB (bf16); "
                f"how many bytes is one float32, one bfloat16? GB means 10^9 bytes.")
        require(close(result["adamw_fp32_full_gb"], 4 * result["fp32_weights_gb"]),
                f"{call}['adamw_fp32_full_gb'] = {result['adamw_fp32_full_gb']!r} is not what full AdamW training in fp32 "
                f"keeps; hint: list what AdamW stores for every trained parameter (section 3.9).")
        fraction = kwargs.get("trainable_fraction", 0.01)
        require(close(result["adamw_fp32_partial_gb"], result["fp32_weights_gb"] * (1 + 3 * fraction)),
                f"{call}['adamw_fp32_partial_gb'] = {result['adamw_fp32_partial_gb']!r} is not right for a trained share "
                f"of {fraction}; hint: which of those tensors does a frozen parameter still need?")
