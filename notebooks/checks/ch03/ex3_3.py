"""Exercise 3.3: a GPTModel in eval mode is causal; in train mode with dropout two passes differ, in eval mode not."""

from otter.test_files import test_case

from checks._guard import answer, keys, require
from gpt import GPTConfig

OK_FORMAT = False
name = "ex3_3"
points = 1


@test_case(points=1)
def ex3_3(env):
    for kwargs in [{}, {"cfg": GPTConfig.from_preset("gpt-tiny", drop_rate=0.2, n_layers=1), "t": 2, "T": 6, "seed": 1}]:
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
        require(result["change_from_t"] > 1e-5,
                f"{call}['change_from_t'] = {result['change_from_t']:.3g}: the logits from position t on should move "
                f"when token t changes; did you change the token at position t?")
        require(result["train_passes_differ_by"] > 0,
                f"{call}['train_passes_differ_by'] = 0: two train-mode passes with drop_rate > 0 draw different "
                f"dropout masks; did you call model.train() and use a config with drop_rate > 0?")
        require(result["eval_passes_differ_by"] < 1e-6,
                f"{call}['eval_passes_differ_by'] = {result['eval_passes_differ_by']:.3g}: in eval mode dropout is "
                f"off and two passes must agree; did you call model.eval() first?")
