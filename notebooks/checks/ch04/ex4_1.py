"""Exercise 4.1: an untrained gpt-tiny's loss on The Verdict's held-out end is close to ln V; a wide output layer is worse."""

import math

import torch
from otter.test_files import test_case

from checks._guard import answer, close, keys, require
from gpt import GPTConfig, GPTModel
from gpt.data import TokenWindows, tokenize_documents
from gpt.tokenizer import DATA_DIR
from gpt.train import evaluate_lm

OK_FORMAT = False
name = "ex4_1"
points = 1


@test_case(points=1)
def ex4_1(env):
    text = (DATA_DIR / "pretrain" / "the-verdict.txt").read_text(encoding="utf-8")
    held_out = TokenWindows(tokenize_documents([text[int(0.9 * len(text)):]]), 64)
    cfg = GPTConfig.from_preset("gpt-tiny")
    for kwargs in [{"seed": 3, "head_std": 2.0}, {"seed": 7, "head_std": 0.5}]:
        seed = kwargs.get("seed", 123)
        call = f"exercise_4_1({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        result = answer(env, "exercise_4_1", **kwargs, returns=dict, timeout=60,
                        expects="a dict of five floats {'loss', 'ln_V', 'perplexity', 'logit_std', 'loss_large_init'}")
        keys(result, {"loss", "ln_V", "perplexity", "logit_std", "loss_large_init"}, call)
        for key, value in result.items():
            require(isinstance(value, float) and math.isfinite(value), f"{call}['{key}'] = {value!r}: a finite float.")
        torch.manual_seed(seed)
        truth = evaluate_lm(GPTModel(cfg), held_out, batch_size=8, device=torch.device("cpu"))
        require(close(result["loss"], truth, rel=1e-4),
                f"{call}['loss'] = {result['loss']:.4f}: evaluate the model built right after torch.manual_seed(seed) "
                f"on the held-out windows (the last 10 % of The Verdict, 64 tokens each), like section 4.3.")
        require(close(result["ln_V"], math.log(cfg.vocab_size)) and close(result["perplexity"], math.exp(result["loss"])),
                f"{call}: ln_V = {result['ln_V']!r}, perplexity = {result['perplexity']!r}; ln of the vocabulary size, "
                f"and e to the loss.")
        require(result["logit_std"] > 0, f"{call}['logit_std'] should be the standard deviation of the logits, > 0.")
        require(result["loss_large_init"] > result["ln_V"],
                f"{call}['loss_large_init'] = {result['loss_large_init']:.3f}: with the output layer drawn from "
                f"N(0, head_std) the model is confidently wrong; did you redraw the (tied) output weights?")
