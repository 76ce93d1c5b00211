"""Exercise 6.1: LoRA's trainable parameters on GPT-2 presets, counted by hand (the check makes
lora_trainable_count unavailable to the answer) and compared with lora.lora_trainable_count, on presets of the
statement and of the check's own."""
import lora
import lora.counts
from otter.test_files import test_case
from checks._guard import answer, keys, require
from gpt import GPTConfig
from lora import LoraConfig, lora_trainable_count

OK_FORMAT = False
name = "ex6_1"
points = 1

HINTS = {
    "query_value": "per block, two wrapped layers (W_query, W_value), each a d x d matrix at r = 8; section 5.5 counts "
                   "one such layer",
    "all_linear": "per block, the four attention projections and the two feed-forward layers (d -> 4d, 4d -> d) at "
                  "r = 16; then the new 2-class head, which all-linear does not wrap and modules_to_save trains in "
                  "full (weights and bias), section 6.4",
}


def _counted_by_hand_only(*args, **kwargs):
    raise RuntimeError("exercise_6_1 is counted by hand from emb_dim and n_layers; lora_trainable_count is what the "
                       "check compares with (call it in a cell of your own)")


@test_case(points=1)
def ex6_1(env):
    for preset in ("gpt2-medium", "gpt-mini", "gpt2-large", "gpt2-small"):
        cfg = GPTConfig.from_preset(preset)
        expected = {
            "query_value": lora_trainable_count(cfg, LoraConfig(rank=8, targets=("query", "value"))),
            "all_linear": lora_trainable_count(cfg, LoraConfig(rank=16, targets="all-linear",
                                                               modules_to_save=("out_head",)),
                                               head_out_features=2, head_bias=True),
        }
        call = f"exercise_6_1({preset!r})"
        names = getattr(env.get("exercise_6_1"), "__globals__", env)  # where the answer looks its names up
        saved = {"lora": lora.lora_trainable_count, "counts": lora.counts.lora_trainable_count,
                 "env": names.get("lora_trainable_count")}
        lora.lora_trainable_count = lora.counts.lora_trainable_count = _counted_by_hand_only
        if saved["env"] is not None:
            names["lora_trainable_count"] = _counted_by_hand_only
        try:
            result = answer(env, "exercise_6_1", preset, returns=dict,
                            expects="a dict {'query_value': int, 'all_linear': int}")
        finally:
            lora.lora_trainable_count, lora.counts.lora_trainable_count = saved["lora"], saved["counts"]
            if saved["env"] is not None:
                names["lora_trainable_count"] = saved["env"]
        keys(result, set(HINTS), call)
        for key, hint in HINTS.items():
            got = result[key]
            require(isinstance(got, int) and not isinstance(got, bool),
                    f"{call}['{key}'] should be an int, not {type(got).__name__}.")
            require(got == expected[key], f"{call}['{key}'] = {got:,} is not right for this preset (emb_dim "
                    f"{cfg.emb_dim}, {cfg.n_layers} blocks); hint: {hint}.")
