"""Exercise 6.1: LoRA's trainable parameters on a GPT-2 preset, compared with lora.lora_trainable_count."""

from otter.test_files import test_case

from checks._guard import answer, keys, require
from gpt import GPTConfig
from lora import LoraConfig, lora_trainable_count

OK_FORMAT = False
name = "ex6_1"
points = 1

HINTS = {
    "query_value": "per block, two wrapped layers (W_query, W_value), each with r (d_in + d_out) LoRA weights",
    "all_linear": "per block, four attention projections (d -> d) and two feed-forward layers (d -> 4d, 4d -> d), "
                  "each with r (d_in + d_out) LoRA weights; then the new 2-class head, trained in full "
                  "(weights and bias), because all-linear does not wrap it",
}


@test_case(points=1)
def ex6_1(env):
    for preset in ("gpt2-medium", "gpt2-small"):
        result = answer(env, "exercise_6_1", preset, returns=dict,
                        expects="a dict {'query_value': int, 'all_linear': int}")
        call = f"exercise_6_1({preset!r})"
        keys(result, set(HINTS), call)
        cfg = GPTConfig.from_preset(preset)
        expected = {
            "query_value": lora_trainable_count(cfg, LoraConfig(rank=8, targets=("query", "value"))),
            "all_linear": lora_trainable_count(cfg, LoraConfig(rank=16, targets="all-linear",
                                                               modules_to_save=("out_head",)),
                                               head_out_features=2, head_bias=True),
        }
        for key, hint in HINTS.items():
            got = result[key]
            require(isinstance(got, int) and not isinstance(got, bool),
                    f"{call}['{key}'] should be an int, not {type(got).__name__}.")
            require(got == expected[key], f"{call}['{key}'] = {got:,} is not right; hint: {hint}.")
