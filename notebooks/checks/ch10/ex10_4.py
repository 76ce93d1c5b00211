"""Exercise 10.4: LoRA+'s learning rate for every trained tensor, with LoRA on the token embedding too, against
lora.loraplus.loraplus_parameter_groups (PEFT's create_loraplus_optimizer), at rates other than the statement's;
the answer must leave the model as it was (its weights, and which of them are trained)."""

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
    """gpt-tiny with a 2-class head, LoRA r = 4 on every linear layer and on the token embedding, the head trained."""
    with torch.random.fork_rng(devices=[]):  # the model draws its weights from the global RNG: leave it as it was
        torch.manual_seed(seed)
        model = GPTModel(GPTConfig.from_preset("gpt-tiny"))
        add_classification_head(model, num_classes=2)
        return apply_lora(model, LoraConfig(rank=4, alpha=4, targets=("all-linear", "tok_emb"),
                                            modules_to_save=("out_head",)))


@test_case(points=1)
def ex10_4(env):
    for lr, ratio, embedding_lr, seed in [(1e-3, 8.0, 1e-5, 0), (5e-4, 20.0, 3e-6, 1)]:
        model = small_model(seed)
        want = {n: g["lr"] for g in loraplus_parameter_groups(model, lr, ratio, embedding_lr) for n in g["param_names"]}
        trained = {n: p.requires_grad for n, p in model.named_parameters()}
        call = f"exercise_10_4(model, lr={lr:g}, ratio={ratio:g}, embedding_lr={embedding_lr:g})"
        got = answer(env, "exercise_10_4", model, lr=lr, ratio=ratio, embedding_lr=embedding_lr, returns=dict,
                     expects="a dict {parameter name: learning rate}")
        now = {n: p.requires_grad for n, p in model.named_parameters()}
        changed = sorted(n for n in trained if now.get(n) != trained[n]) + sorted(set(now) - set(trained))
        require(not changed,
                f"{call} changed the model it was given ({changed[0] if changed else ''}: its requires_grad, or a new "
                f"parameter); hint: only read the model: model.named_parameters() and p.requires_grad, "
                f"never requires_grad_ or new modules.")
        keys(got, set(want), call, " (every tensor that requires a gradient, named as model.named_parameters() "
                                   "names it, and nothing else)")
        odd = sorted(n for n, v in got.items() if isinstance(v, bool) or not isinstance(v, (int, float)))
        require(not odd, f"{call}['{odd[0] if odd else ''}'] should be a Python float (a learning rate), not "
                         f"{type(got[odd[0]]).__name__ if odd else ''}.")
        wrong = sorted(n for n in want if not abs(got[n] - want[n]) <= 1e-12 + 1e-9 * want[n])
        example = f"{wrong[0]} = {got[wrong[0]]:g}" if wrong else ""
        require(not wrong,
                f"{call}: {len(wrong)} of {len(want)} tensors get another rate than LoRA+ gives them, e.g. "
                f"{example}; hint: lora_B and every other 1-D "
                f"tensor learn at lr * ratio, both factors of the embedding's LoRA at embedding_lr, the rest at lr; "
                f"use the arguments you are given.")
