"""Exercise 8.3: the tensor bytes of an adapter file, predicted from the shapes, against lora's own count."""

from otter.test_files import test_case

from checks._guard import answer, keys, require
from gpt import GPTConfig
from lora import LoraConfig, lora_trainable_count

OK_FORMAT = False
name = "ex8_3"
points = 1


@test_case(points=1)
def ex8_3(env):
    for preset, ranks in (("gpt-mini", (1, 2, 4, 8, 16)), ("gpt-tiny", (1, 3))):
        result = answer(env, "exercise_8_3", preset, ranks, returns=dict, expects="a dict {rank: int bytes}")
        call = f"exercise_8_3({preset!r}, {ranks})"
        keys(result, set(ranks), call, " (one entry per rank)")
        cfg = GPTConfig.from_preset(preset)
        for r in ranks:
            lcfg = LoraConfig(rank=r, alpha=16, targets="all-linear", modules_to_save=("out_head",))
            expected = 4 * lora_trainable_count(cfg, lcfg, head_out_features=2, head_bias=True)  # float32
            got = result[r]
            require(isinstance(got, int) and not isinstance(got, bool),
                    f"{call}[{r}] should be an int (bytes), not {type(got).__name__}.")
            require(got == expected,
                    f"{call}[{r}] = {got:,} bytes is not right; hint: r (d_in + d_out) float32 numbers per wrapped "
                    f"layer (q, k, v, out_proj: d -> d; feed-forward: d -> 4d and 4d -> d), 4 bytes each, and the "
                    f"adapter also saves its copy of the 2-class head (weight and bias).")
