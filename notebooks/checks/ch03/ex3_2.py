"""Exercise 3.2: attention with a chosen head_dim: the projections are num_heads * head_dim wide, out_proj maps back."""

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from gpt import GPTConfig, GPTModel, count_parameters

OK_FORMAT = False
name = "ex3_2"
points = 1


@test_case(points=1)
def ex3_2(env):
    for preset, head_dim in [("gpt-tiny", 8), ("gpt-tiny", 16), ("gpt-mini", 32)]:
        cfg = GPTConfig.from_preset(preset)
        d, H = cfg.emb_dim, cfg.n_heads
        call = f"exercise_3_2(GPTConfig.from_preset({preset!r}), head_dim={head_dim})"
        model = answer(env, "exercise_3_2", cfg, head_dim, returns=GPTModel, expects="a GPTModel", timeout=30)
        for i, block in enumerate(model.trf_blocks):
            att = block.att
            shapes = (tuple(att.W_query.weight.shape), tuple(att.out_proj.weight.shape))
            require(shapes == ((H * head_dim, d), (d, H * head_dim)),
                    f"{call}: block {i}'s W_query and out_proj weights are {shapes[0]} and {shapes[1]}; with "
                    f"{H} heads of {head_dim} they should be {(H * head_dim, d)} and {(d, H * head_dim)}.")
        model.eval()
        try:
            with torch.no_grad():
                logits = model(torch.randint(0, cfg.vocab_size, (2, 5)))
        except Exception as error:  # the student's model, not the check, is at fault
            require(False, f"{call}: the model fails on a (2, 5) batch of ids: {type(error).__name__}: {error}")
        require(tuple(logits.shape) == (2, 5, cfg.vocab_size),
                f"{call}: logits of shape {tuple(logits.shape)}, expected (2, 5, {cfg.vocab_size}).")
        if H * head_dim == d:
            with torch.device("meta"):
                truth = count_parameters(GPTModel(cfg))
            require(count_parameters(model) == truth, f"{call}: with head_dim = emb_dim / n_heads the model should "
                    f"have exactly GPTModel's {truth:,} parameters, not {count_parameters(model):,}.")
