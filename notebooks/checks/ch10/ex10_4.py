"""Exercise 10.4: LoRA+'s learning rate for every trained tensor, with LoRA on the token embedding too, against
lora.loraplus.loraplus_parameter_groups (PEFT's create_loraplus_optimizer), at rates other than the statement's."""

import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require
from classify.model import add_classification_head
from gpt.config import GPTConfig
from gpt.model import GPTModel
from lora import LoraConfig, apply_lora
from lora.loraplus import loraplus_parameter_groups

OK_FORMAT = False
name = "ex10_4"
points = 1


def small_model(seed: int):
    torch.manual_seed(seed)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny"))
    add_classification_head(model, num_classes=2)
    return apply_lora(model, LoraConfig(rank=4, alpha=4, targets=("all-linear", "tok_emb"),
                                        modules_to_save=("out_head",)))


@test_case(points=1)
def ex10_4(env):
    for lr, ratio, embedding_lr, seed in [(1e-3, 8.0, 1e-6, 0), (5e-4, 20.0, 1e-5, 1)]:
        model = small_model(seed)
        call = f"exercise_10_4(model, lr={lr:g}, ratio={ratio:g}, embedding_lr={embedding_lr:g})"
        got = answer(env, "exercise_10_4", model, lr=lr, ratio=ratio, embedding_lr=embedding_lr, returns=dict,
                     expects="a dict {parameter name: learning rate}")
        want = {n: g["lr"] for g in loraplus_parameter_groups(model, lr, ratio, embedding_lr) for n in g["param_names"]}
        keys(got, set(want), call, " (every trained tensor, named as model.named_parameters() names it)")
        wrong = sorted(n for n in want if not abs(float(got[n]) - want[n]) <= 1e-12 + 1e-9 * want[n])
        require(not wrong,
                f"{call}: {len(wrong)} of {len(want)} tensors get another rate than LoRA+ gives them, e.g. "
                f"{wrong[0] if wrong else ''} = {got[wrong[0]] if wrong else ''}; hint: lora_B and every other 1-D "
                f"tensor learn at lr * ratio, the rest at lr, and both factors of the embedding's LoRA at embedding_lr.")
