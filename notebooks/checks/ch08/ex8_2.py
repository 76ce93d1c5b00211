"""Exercise 8.2: a base that differs in one number of a named tensor is refused by the fingerprint, naming that
tensor, and the adapter loads onto it with check_base=False. The check hands over a base maker that remembers
every base it made, so it can see which one carries the adapter."""

import tempfile
from pathlib import Path

import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require
from classify.model import add_classification_head
from gpt import GPTConfig, GPTModel
from lora import LoraConfig, adapter_configs, apply_lora, load_adapter, save_adapter

OK_FORMAT = False
name = "ex8_2"
points = 1


def make_base_factory(made: list):
    def make_base():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            base = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)).eval()
        made.append(base)
        return base
    return make_base


def expected_error(make_base, adapter, weight, nudge):
    """What load_adapter says about a base whose tensor `weight` differs by `nudge` in one number."""
    base = make_base()
    with torch.no_grad():
        base.state_dict()[weight].view(-1)[0] += nudge
    try:
        load_adapter(base, adapter)
    except ValueError as err:
        return str(err)
    return None


@test_case(points=1)
def ex8_2(env):
    reference: list = []
    model = make_base_factory(reference)()
    add_classification_head(model, num_classes=2)
    apply_lora(model, LoraConfig(rank=2, alpha=4, targets=("query", "ff"), modules_to_save=("out_head",)),
               adapter_name="topic")
    with tempfile.TemporaryDirectory() as tmp:
        adapter = save_adapter(model, Path(tmp) / "topic", name="topic")
        for weight, nudge in (("trf_blocks.1.att.W_value.weight", 1e-3), ("final_norm.scale", 1e-5)):
            made: list = []
            make_base = make_base_factory(made)
            result = answer(env, "exercise_8_2", make_base, adapter, weight=weight, nudge=nudge, returns=dict,
                            expects="a dict {'error': str, 'loaded_with_check_base_false': bool}", timeout=30)
            call = f"exercise_8_2(make_base, adapter, weight={weight!r}, nudge={nudge:g})"
            keys(result, {"error", "loaded_with_check_base_false"}, call)
            error = result["error"]
            require(isinstance(error, str) and error == expected_error(make_base_factory([]), adapter, weight, nudge),
                    f"{call}['error'] = {str(error)[:160]!r} is not what load_adapter says about a base whose "
                    f"{weight!r} differs in one number. Hint: change that tensor of the base make_base() gave you, "
                    f"in place and under torch.no_grad(), call load_adapter on that base and return str() of the "
                    f"ValueError it raises (section 8.9).")
            require(result["loaded_with_check_base_false"] is True,
                    f"{call}['loaded_with_check_base_false'] = {result['loaded_with_check_base_false']!r}: a bool, "
                    f"True once the nudged base carries the adapter.")
            fresh = make_base_factory([])()
            carriers = [b for b in made if adapter_configs(b)
                        and not torch.equal(b.state_dict()[weight], fresh.state_dict()[weight])]
            require(carriers, f"{call}: none of the bases make_base() gave you carries the adapter with its "
                              f"{weight!r} nudged. Hint: load the adapter onto the nudged base itself, with "
                              f"load_adapter(..., check_base=False), before you report True.")
