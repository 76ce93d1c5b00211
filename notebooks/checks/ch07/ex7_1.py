"""Exercise 7.1: the recipe's trainable parameters and their share, compared with lora and a model on the meta device."""

import torch
from otter.test_files import test_case

from checks._guard import answer, close, keys, require
from classify.model import add_classification_head
from gpt import GPTConfig, GPTModel, count_parameters
from lora import LoraConfig, apply_lora, lora_trainable_count

OK_FORMAT = False
name = "ex7_1"
points = 1

RECIPE = LoraConfig(rank=16, alpha=16, targets="all-linear", modules_to_save=("out_head",))
QV = LoraConfig(rank=8, alpha=16, targets=("query", "value"), modules_to_save=("out_head",))
HINTS = {
    "recipe": "per block, four attention projections (d -> d) and two feed-forward layers (d -> 4d, 4d -> d), each "
              "with r (d_in + d_out) LoRA weights, for every block; plus the 2-class head with its bias",
    "query_value": "two wrapped layers per block at r = 8, plus the 2-class head trained in full",
    "full": "every parameter of the classifier: the base (its old head was tied to the embedding: no weights of "
            "its own) plus the new head",
    "recipe_fraction_of_full": "the recipe's trainable parameters over what full fine-tuning trains (a fraction, "
                               "not a percentage)",
    "recipe_fraction_of_total": "the recipe's trainable parameters over EVERY parameter of the LoRA classifier, the "
                                "frozen base and head included (a fraction, not a percentage)",
}


@test_case(points=1)
def ex7_1(env):
    for preset in ("gpt-mini", "gpt-tiny"):
        result = answer(env, "exercise_7_1", preset, returns=dict,
                        expects="a dict with 'recipe', 'query_value', 'full' (ints) and 'recipe_fraction_of_full', "
                                "'recipe_fraction_of_total' (floats)")
        call = f"exercise_7_1({preset!r})"
        keys(result, set(HINTS), call)
        cfg = GPTConfig.from_preset(preset)
        with torch.device("meta"):
            model = GPTModel(cfg)
            add_classification_head(model, 2)
            full = count_parameters(model)
            apply_lora(model, RECIPE)
            total = count_parameters(model)
        recipe = lora_trainable_count(cfg, RECIPE, head_out_features=2, head_bias=True)
        expected = {"recipe": recipe, "query_value": lora_trainable_count(cfg, QV, head_out_features=2, head_bias=True),
                    "full": full, "recipe_fraction_of_full": recipe / full, "recipe_fraction_of_total": recipe / total}
        for key, hint in HINTS.items():
            got = result[key]
            if key.startswith("recipe_fraction"):
                require(isinstance(got, float), f"{call}['{key}'] should be a float, not {type(got).__name__}.")
                require(close(got, expected[key], rel=1e-6), f"{call}['{key}'] = {got:.6f} is not right; hint: {hint}.")
            else:
                require(isinstance(got, int) and not isinstance(got, bool),
                        f"{call}['{key}'] should be an int, not {type(got).__name__}.")
                require(got == expected[key], f"{call}['{key}'] = {got:,} is not right; hint: {hint}.")
