"""Exercise 8.4: every adapter of a model asked about one batch, with the active adapter put back afterwards;
compared with set_active_adapter + class_logits on a model of the check's own (adapters that disagree)."""

import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require
from classify.model import add_classification_head, class_logits
from gpt import GPTConfig, GPTModel
from lora import LoraConfig, active_adapter, add_adapter, apply_lora, set_active_adapter

OK_FORMAT = False
name = "ex8_4"
points = 1


def model_with_adapters(names, seed):
    """A tiny GPT with a 3-class head and one adapter per name, each with its own random B and head."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0, n_layers=1)).eval()
        add_classification_head(model, num_classes=3)
        cfg = LoraConfig(rank=2, alpha=4, targets="all-linear", modules_to_save=("out_head",))
        apply_lora(model, cfg, adapter_name=names[0])
        for n in names[1:]:
            add_adapter(model, n, cfg)
        for n in names:
            set_active_adapter(model, n)
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:  # the active adapter's own tensors
                        p.normal_(std=0.5)
        set_active_adapter(model, names[1])  # not the first one: an answer must put back this one
    return model.eval()


@test_case(points=1)
def ex8_4(env):
    for names, seed in ((("news", "sport", "weather"), 3), (("formal", "casual"), 8)):
        model = model_with_adapters(names, seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 50257, (16, 9), generator=g)
        lengths = torch.randint(3, 10, (16,), generator=g)
        before = active_adapter(model)
        result = answer(env, "exercise_8_4", model, x, lengths, returns=dict,
                        expects="a dict {adapter name: tensor of predicted class ids, shape (batch,)}")
        call = f"exercise_8_4(model, x, lengths) (adapters {list(names)}, active {before!r})"
        require(active_adapter(model) == before,
                f"{call} left {active_adapter(model)!r} active; put back the adapter that was active when it was "
                f"called ({before!r}): other code relies on it.")
        keys(result, set(names), call, " (one entry per adapter on the model)")
        expected = {}
        with torch.no_grad():
            for n in names:
                set_active_adapter(model, n)
                expected[n] = class_logits(model, x, lengths).argmax(dim=-1)
        set_active_adapter(model, before)
        for n in names:
            got = result[n]
            require(isinstance(got, torch.Tensor) and tuple(got.shape) == (len(x),),
                    f"{call}[{n!r}] should be a tensor of {len(x)} class ids, got "
                    f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}.")
            require(torch.equal(got.cpu().long(), expected[n]),
                    f"{call}[{n!r}]: {int((got.cpu().long() != expected[n]).sum())} of {len(x)} predictions are not "
                    f"what adapter {n!r} predicts. Hint: make each adapter the active one before asking the model "
                    f"(section 8.8), and read each text's logits at its last real token (lengths).")
