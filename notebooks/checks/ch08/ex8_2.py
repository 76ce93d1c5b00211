"""Exercise 8.2: a base that differs in one number is refused by the fingerprint, and loads with check_base=False."""

import tempfile
from pathlib import Path

import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require
from classify.model import add_classification_head
from gpt import GPTConfig, GPTModel
from lora import LoraConfig, apply_lora, save_adapter

OK_FORMAT = False
name = "ex8_2"
points = 1


def make_base():
    torch.manual_seed(123)
    return GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)).eval()


@test_case(points=1)
def ex8_2(env):
    model = make_base()
    add_classification_head(model, num_classes=2)
    apply_lora(model, LoraConfig(rank=4, alpha=16, targets="all-linear", modules_to_save=("out_head",)),
               adapter_name="spam")
    with tempfile.TemporaryDirectory() as tmp:
        adapter = save_adapter(model, Path(tmp) / "spam", name="spam")
        for nudge in (1e-3, 1e-5):
            result = answer(env, "exercise_8_2", make_base, adapter, nudge, returns=dict,
                            expects="a dict {'error': str, 'loaded_with_check_base_false': bool}")
            call = f"exercise_8_2(make_base, adapter, nudge={nudge:g})"
            keys(result, {"error", "loaded_with_check_base_false"}, call)
            error = result["error"]
            require(isinstance(error, str) and "fingerprint" in error,
                    f"{call}['error'] = {error!r}: load_adapter should refuse the nudged base with a ValueError "
                    f"about the weights' fingerprint; return str(err). Hint: change the base's weight in place, under "
                    f"torch.no_grad() (weight[0, 0] += nudge), not a copy of it.")
            require(result["loaded_with_check_base_false"] is True,
                    f"{call}['loaded_with_check_base_false'] = {result['loaded_with_check_base_false']!r}: after "
                    f"load_adapter(base, adapter, check_base=False) the base carries the adapter (True).")
