"""Exercise 3.3: a GPTModel in eval mode is causal; in train mode with dropout two passes differ, in eval mode not."""

import torch
from otter.test_files import test_case

from checks._guard import answer, close, keys, require
from gpt import GPTConfig, GPTModel


def change_from_t(cfg, t, T, seed):
    """How far the logits from position t on move when token t becomes the next id, drawn as the statement says."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = GPTModel(cfg).eval()
        ids = torch.randint(0, cfg.vocab_size, (1, T))
        changed = ids.clone()
        changed[0, t] = (ids[0, t] + 1) % cfg.vocab_size
        return (model(ids)[:, t:] - model(changed)[:, t:]).abs().max().item()

OK_FORMAT = False
name = "ex3_3"
points = 1


@test_case(points=1)
def ex3_3(env):
    for kwargs in [{"cfg": GPTConfig.from_preset("gpt-tiny", drop_rate=0.2, n_layers=1), "t": 2, "T": 6, "seed": 1},
                   {"cfg": GPTConfig.from_preset("gpt-tiny", drop_rate=0.0, n_layers=1), "t": 3, "T": 5, "seed": 4}]:
        cfg = kwargs["cfg"]
        call = f"exercise_3_3({', '.join(f'{a}={b}' for a, b in kwargs.items() if a != 'cfg')})"
        result = answer(env, "exercise_3_3", **kwargs, returns=dict, timeout=30,
                        expects="a dict of four floats {'change_before_t', 'change_from_t', 'train_passes_differ_by', "
                                "'eval_passes_differ_by'}")
        keys(result, {"change_before_t", "change_from_t", "train_passes_differ_by", "eval_passes_differ_by"}, call)
        for key, value in result.items():
            require(isinstance(value, float) and value >= 0, f"{call}['{key}'] = {value!r}: a Python float >= 0.")
        require(result["change_before_t"] < 1e-5,
                f"{call}['change_before_t'] = {result['change_before_t']:.3g}: the logits before position t must not "
                f"move when token t changes. Compare the two runs in eval mode (dropout draws new masks in train mode).")
        require(close(result["change_from_t"], change_from_t(cfg, kwargs["t"], kwargs["T"], kwargs["seed"]), rel=1e-4),
                f"{call}['change_from_t'] = {result['change_from_t']:.3g} is not how far the logits from position t on "
                f"move for this model and these ids; measure it. Hint: draw as the statement says (the model, then the "
                f"ids, after torch.manual_seed(seed)), change token t to the next id, and compare in eval mode.")
        dropout = cfg.drop_rate > 0
        require(not dropout or result["train_passes_differ_by"] > 0,
                f"{call}['train_passes_differ_by'] = 0: two train-mode passes with drop_rate > 0 draw different "
                f"dropout masks; did you call model.train() and use the config you were given?")
        require(dropout or result["train_passes_differ_by"] < 1e-6,
                f"{call}['train_passes_differ_by'] = {result['train_passes_differ_by']:.3g}: with drop_rate = 0 there "
                f"is nothing random in a forward pass, so two train-mode passes must agree; measure, do not assume.")
        require(result["eval_passes_differ_by"] < 1e-6,
                f"{call}['eval_passes_differ_by'] = {result['eval_passes_differ_by']:.3g}: in eval mode dropout is "
                f"off and two passes must agree; did you call model.eval() first?")
