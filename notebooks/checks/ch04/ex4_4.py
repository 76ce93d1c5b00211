"""Exercise 4.4: our GPTModel's state dict under GPT-2's names loads into transformers' GPT2LMHeadModel, same logits."""

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from gpt import GPTConfig, GPTModel

OK_FORMAT = False
name = "ex4_4"
points = 1


@test_case(points=1)
def ex4_4(env):
    from transformers import GPT2Config, GPT2LMHeadModel

    for kwargs in [{"attention": "separate"}, {"attention": "fused"}, {"attention": "separate", "qkv_bias": True}]:
        cfg = GPTConfig.from_preset("gpt-tiny", drop_rate=0.0, **kwargs)
        torch.manual_seed(11)
        ours = GPTModel(cfg).eval()
        call = f"exercise_4_4(GPTModel(gpt-tiny, {', '.join(f'{a}={b}' for a, b in kwargs.items())}))"
        sd = answer(env, "exercise_4_4", ours, returns=dict, timeout=30,
                    expects="a dict {GPT-2 name: tensor}, as GPT2LMHeadModel.state_dict() names them")
        hf = GPT2LMHeadModel(GPT2Config(n_embd=cfg.emb_dim, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                                        n_positions=cfg.context_length, vocab_size=cfg.vocab_size,
                                        tie_word_embeddings=cfg.tie_weights, resid_pdrop=0.0, embd_pdrop=0.0,
                                        attn_pdrop=0.0)).eval()
        try:
            missing, unexpected = hf.load_state_dict(sd, strict=False)
        except RuntimeError as error:  # the student's tensors have the wrong shapes
            require(False, f"{call}: transformers refuses the state dict: {str(error)[:300]}. Hint: Conv1D stores "
                           f"its weight as (in, out), the transpose of nn.Linear's.")
        missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]
        require(not missing and not unexpected,
                f"{call}: names missing {missing[:4]}, not expected {list(unexpected)[:4]}. Hint: GPT-2's names start "
                f"with 'transformer.' (wte, wpe, h.0.attn.c_attn, ..., ln_f), and lm_head.weight.")
        ids = torch.tensor([[6109, 3626, 6100, 345, 11, 290]])
        with torch.no_grad():
            diff = float((ours(ids) - hf(ids).logits).abs().max())
        require(diff < 1e-4, f"{call}: the logits differ by up to {diff:.3g}. Hint: c_attn holds [queries | keys | "
                             f"values] in that order; a model without qkv bias maps to zero biases.")
