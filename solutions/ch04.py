"""Solutions to the exercises of chapter 4 (notebooks/04_pretraining.ipynb): pre-training.

Kept outside the notebooks so that a class can hand the notebooks out without the answers.
Each function returns the numbers the answer rests on; tests/test_solutions_ch04.py checks them.
Exercise 4.5 is a discussion: see solutions/ch04.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gpt.config import GPTConfig
from gpt.data import TokenWindows, tokenize_documents
from gpt.generate import generate
from gpt.model import GPTModel
from gpt.tokenizer import DATA_DIR
from gpt.train import PretrainConfig, evaluate_lm, pretrain

VERDICT_FILE = DATA_DIR / "pretrain" / "the-verdict.txt"
CPU = torch.device("cpu")


def verdict_windows(context_length: int = 64) -> tuple[TokenWindows, TokenWindows]:
    """The notebook's split: the first 90 % of The Verdict for training, the last 10 % held out."""
    text = VERDICT_FILE.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    return (TokenWindows(tokenize_documents([text[:cut]]), context_length),
            TokenWindows(tokenize_documents([text[cut:]]), context_length))


def exercise_4_1(seed: int = 123, head_std: float = 1.0) -> dict[str, float]:
    """The loss of an untrained gpt-tiny on the held-out windows, against ln V.

    Answer: 10.83 nats against ln 50,257 = 10.825 (perplexity ~50,460 vs V = 50,257). GPT-2's
    initialisation draws the weights from N(0, 0.02), so the logits are all close to 0 (standard
    deviation 0.11 here) and the softmax is nearly uniform over the 50,257 tokens: the loss of uniform
    guessing is exactly ln V. With the output layer (tied to the embedding) drawn from N(0, 1) instead,
    the logits have a standard deviation of several units (dot products of 32 features), the softmax
    is confidently wrong at random, and the loss is 31.7 nats at this seed, about 21 nats worse than
    knowing nothing. A good initialisation starts at "knows nothing" (ln V), not at "sure of the wrong
    answer".
    """
    _, val = verdict_windows()
    cfg = GPTConfig.from_preset("gpt-tiny")
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    loss = evaluate_lm(model, val, batch_size=8, device=CPU)
    with torch.no_grad():
        logit_std = float(model.eval()(val[0][0].unsqueeze(0)).std())
        model.tok_emb.weight.normal_(0.0, head_std)  # the tied output head gets the same weights
    loss_large = evaluate_lm(model, val, batch_size=8, device=CPU)
    return {"loss": loss, "ln_V": math.log(cfg.vocab_size), "perplexity": math.exp(loss), "logit_std": logit_std,
            "loss_large_init": loss_large}


def exercise_4_2(seed: int = 123, temperatures=(0.5, 1.0, 3.0), z=(2.0, 1.0, 0.5, -1.0)) -> dict:
    """Top-k with k = 1 is greedy at any temperature; softmax(z / T) -> one-hot (T -> 0) and uniform (T -> inf).

    Answer: with k = 1 every logit but the largest is set to -inf before the softmax, so the one survivor
    has probability 1 whatever the temperature: the sampled text equals the greedy text. For the limits,
    softmax(z / T)_i = 1 / sum_j exp((z_j - z_i) / T): for the argmax every exponent is <= 0 and tends to
    -inf as T -> 0 (except its own term), so its probability tends to 1; as T -> inf every exponent tends
    to 0 and every probability to 1 / V.
    """
    torch.manual_seed(seed)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny")).eval()
    prompt = torch.tensor([[6109, 3626, 6100, 345]])  # "Every effort moves you"
    greedy = generate(model, prompt, max_new_tokens=6)
    same = {t: torch.equal(generate(model, prompt, max_new_tokens=6, temperature=t, top_k=1,
                                    generator=torch.Generator().manual_seed(seed)), greedy) for t in temperatures}
    z = torch.tensor(z)
    cold = torch.softmax(z / 0.01, dim=-1)
    hot = torch.softmax(z / 1e4, dim=-1)
    return {"top1_equals_greedy": same, "cold": cold, "hot": hot}


class SimulatedCrash(RuntimeError):
    pass


def exercise_4_3(out_dir: str | Path, steps: int = 8, crash_at: int = 6, seed: int = 123) -> dict:
    """Crash a pre-training run at step `crash_at`, resume it, compare with a run that never stopped.

    Answer: `pretrain` saves train_state.pt (model, optimizer moments, step, history, torch's random
    state) every `save_every` steps; the data order is a function of (seed, epoch) and the learning rate
    a function of the step. The callback raises at step 6, after the evaluation and before the step-6
    save, so the last checkpoint is step 4 and steps 5 and 6 are redone after resuming. With dropout on
    (gpt-tiny's 0.1), the restored random state reproduces the same dropout masks, and the final weights
    are bit-identical (torch.equal) to the uninterrupted run's.
    """
    return _crash_and_continue(Path(out_dir), steps, crash_at, seed, resume=True)

def _crash_and_continue(out_dir: Path, steps: int, crash_at: int, seed: int, resume: bool) -> dict:
    """A run that never stops vs. one crashed at `crash_at` and continued with `pretrain(..., resume=resume)`
    from a fresh process's random state (resume=True: the answer; resume=False: the planted mistake)."""
    train, val = verdict_windows(context_length=32)
    cfg = PretrainConfig(max_steps=steps, batch_size=4, lr=2e-3, warmup_steps=2, eval_every=2, eval_batches=1,
                         save_every=2, seed=seed)
    tiny = GPTConfig.from_preset("gpt-tiny", context_length=32)

    torch.manual_seed(seed)
    straight = GPTModel(tiny)
    pretrain(straight, train, val, cfg, out_dir / "straight", resume=False)

    def crash(step, model):
        if step == crash_at:
            raise SimulatedCrash(f"simulated crash at step {step}")

    torch.manual_seed(seed)
    try:
        pretrain(GPTModel(tiny), train, val, cfg, out_dir / "crashed", resume=False, on_eval=crash)
    except SimulatedCrash:
        pass
    saved_step = int(torch.load(out_dir / "crashed" / "train_state.pt", weights_only=True)["step"])
    torch.manual_seed(999)  # a fresh process would have another random state: the checkpoint must restore it
    continued = GPTModel(tiny)  # fresh weights, overwritten from the checkpoint when resuming
    history = pretrain(continued, train, val, cfg, out_dir / "crashed", resume=resume)
    a, b = straight.state_dict(), continued.state_dict()
    return {"saved_step": saved_step, "identical": all(torch.equal(a[k], b[k]) for k in a),
            "final_val_loss": history.val_loss[-1]}


def exercise_4_4(model: GPTModel) -> dict[str, torch.Tensor]:
    """Exercise 4.4: our GPTModel's weights under GPT-2's names and layout (the inverse of
    gpt.weights.hf_to_gpt_state_dict). Conv1D weights are stored (in, out): transpose every linear
    weight back; the separate W_query / W_key / W_value are concatenated into c_attn's [q | k | v]."""
    cfg = model.cfg
    sd = model.state_dict()
    out = {"wte.weight": sd["tok_emb.weight"], "wpe.weight": sd["pos_emb.weight"],
           "ln_f.weight": sd["final_norm.scale"], "ln_f.bias": sd["final_norm.shift"]}
    for i in range(cfg.n_layers):
        ours, hf = f"trf_blocks.{i}.", f"h.{i}."
        if cfg.attention == "fused":
            qkv_w = sd[ours + "att.qkv.weight"]  # (3d, d), rows [q | k | v]
            qkv_b = sd.get(ours + "att.qkv.bias")
        else:
            qkv_w = torch.cat([sd[ours + f"att.{n}.weight"] for n in ("W_query", "W_key", "W_value")])
            qkv_b = (torch.cat([sd[ours + f"att.{n}.bias"] for n in ("W_query", "W_key", "W_value")])
                     if cfg.qkv_bias else None)
        out[hf + "attn.c_attn.weight"] = qkv_w.T  # (d, 3d): Conv1D layout
        out[hf + "attn.c_attn.bias"] = qkv_b if qkv_b is not None else torch.zeros(qkv_w.shape[0])
        out[hf + "attn.c_proj.weight"] = sd[ours + "att.out_proj.weight"].T
        out[hf + "attn.c_proj.bias"] = sd[ours + "att.out_proj.bias"]
        out[hf + "ln_1.weight"], out[hf + "ln_1.bias"] = sd[ours + "norm1.scale"], sd[ours + "norm1.shift"]
        out[hf + "ln_2.weight"], out[hf + "ln_2.bias"] = sd[ours + "norm2.scale"], sd[ours + "norm2.shift"]
        out[hf + "mlp.c_fc.weight"] = sd[ours + "ff.layers.0.weight"].T
        out[hf + "mlp.c_fc.bias"] = sd[ours + "ff.layers.0.bias"]
        out[hf + "mlp.c_proj.weight"] = sd[ours + "ff.layers.2.weight"].T
        out[hf + "mlp.c_proj.bias"] = sd[ours + "ff.layers.2.bias"]
    out = {"transformer." + k: v.contiguous() for k, v in out.items()}
    out["lm_head.weight"] = sd["out_head.weight"]
    return out


def compare_with_transformers(seed: int = 123) -> dict:
    """Exercise 4.4's answer at work: move a random GPTModel into transformers' GPT2LMHeadModel and compare logits.

    Answer: GPT-2 always has c_attn biases, so a model without qkv_bias maps to zero biases (same function).
    transformers' GPT-2 computes the same function: the logits agree to float rounding (on this CPU they
    are even bit-identical, max |difference| 0.0); the separate and the fused layout give the same
    checkpoint. An untied model (GPTConfig's
    default) needs tie_word_embeddings=False on the transformers side.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    results = {}
    for attention in ("separate", "fused"):
        cfg = GPTConfig.from_preset("gpt-tiny", drop_rate=0.0, attention=attention)
        torch.manual_seed(seed)
        ours = GPTModel(cfg).eval()
        hf = GPT2LMHeadModel(GPT2Config(n_embd=cfg.emb_dim, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                                        n_positions=cfg.context_length, vocab_size=cfg.vocab_size,
                                        tie_word_embeddings=cfg.tie_weights, resid_pdrop=0.0, embd_pdrop=0.0,
                                        attn_pdrop=0.0)).eval()
        missing, unexpected = hf.load_state_dict(exercise_4_4(ours), strict=False)
        # Only the causal-mask buffers of older transformers versions may be left unset.
        missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]
        ids = torch.tensor([[6109, 3626, 6100, 345, 11, 290]])
        with torch.no_grad():
            diff = float((ours(ids) - hf(ids).logits).abs().max())
        results[attention] = {"missing": missing, "unexpected": list(unexpected), "max_abs_diff": diff}
    return results



# ---------------------------------------------------------------------------------------------------------------
# Planted wrong answers: each makes one mistake a student could make; the exercise checks must reject them.

def wrong_exercise_4_1(seed: int = 123, head_std: float = 1.0) -> dict[str, float]:
    """Scores the untrained model on the training windows instead of the held-out ones."""
    train, _ = verdict_windows()
    out = exercise_4_1(seed, head_std)
    torch.manual_seed(seed)
    out["loss"] = evaluate_lm(GPTModel(GPTConfig.from_preset("gpt-tiny")), train, batch_size=8, device=CPU)
    out["perplexity"] = math.exp(out["loss"])
    return out


def wrong_exercise_4_2(seed: int = 123, temperatures=(0.5, 1.0, 3.0), z=(2.0, 1.0, 0.5, -1.0)) -> dict:
    """Takes the "hot" limit at temperature 1: softmax(z) is not uniform."""
    out = exercise_4_2(seed, temperatures, z)
    out["hot"] = torch.softmax(torch.tensor(z), dim=-1)
    return out


def wrong_exercise_4_3(out_dir: str | Path, steps: int = 8, crash_at: int = 6, seed: int = 123) -> dict:
    """Restarts after the crash (resume=False) instead of resuming from the checkpoint."""
    return _crash_and_continue(Path(out_dir), steps, crash_at, seed, resume=False)


def wrong_exercise_4_4(model: GPTModel) -> dict[str, torch.Tensor]:
    """Stacks c_attn as [keys | queries | values] instead of [queries | keys | values]."""
    out = exercise_4_4(model)
    d = model.cfg.emb_dim
    for name in [k for k in out if k.endswith("attn.c_attn.weight")]:
        w = out[name]  # (d, 3d)
        out[name] = torch.cat([w[:, d:2 * d], w[:, :d], w[:, 2 * d:]], dim=1).contiguous()
    return out


# What students really write instead of the computation (tests/test_exercise_checks.py: the checks reject them).

def typed_in_exercise_4_1(seed: int = 123, head_std: float = 1.0) -> dict[str, float]:
    """Types in the statement's setting's five numbers (seed 123, head_std 1) whatever seed and spread are asked."""
    return exercise_4_1()


def shortcut_exercise_4_1(seed: int = 123, head_std: float = 1.0) -> dict[str, float]:
    """States the loss of an untrained model as ln V instead of evaluating it on the held-out windows."""
    out = exercise_4_1(seed, head_std)
    out["loss"] = out["ln_V"]
    out["perplexity"] = math.exp(out["ln_V"])
    return out


def typed_in_exercise_4_2(seed: int = 123, temperatures=(0.5, 1.0, 3.0), z=(2.0, 1.0, 0.5, -1.0)) -> dict:
    """Types in the statement's logits' answer (four probabilities) whatever logits are asked."""
    return {"top1_equals_greedy": {t: True for t in temperatures}, "cold": torch.tensor([1.0, 0.0, 0.0, 0.0]),
            "hot": torch.full((4,), 0.25)}


def shortcut_exercise_4_2(seed: int = 123, temperatures=(0.5, 1.0, 3.0), z=(2.0, 1.0, 0.5, -1.0)) -> dict:
    """Writes down the limits (one-hot at the argmax, uniform) instead of the softmax at the two temperatures."""
    out = exercise_4_2(seed, temperatures, z)
    logits = torch.tensor(z)
    out["cold"] = torch.nn.functional.one_hot(logits.argmax(), len(z)).float()
    out["hot"] = torch.full((len(z),), 1 / len(z))
    return out


def typed_in_exercise_4_3(out_dir: str | Path, steps: int = 8, crash_at: int = 6, seed: int = 123) -> dict:
    """Types in what the statement's setting gives (checkpoint at step 4, identical) without training anything."""
    return {"saved_step": 4, "identical": True, "final_val_loss": 7.0}


def shortcut_exercise_4_3(out_dir: str | Path, steps: int = 8, crash_at: int = 6, seed: int = 123) -> dict:
    """Runs once, straight through, and reports it identical to itself: no crash, no resume, nothing compared."""
    train, val = verdict_windows(context_length=32)
    cfg = PretrainConfig(max_steps=steps, batch_size=4, lr=2e-3, warmup_steps=2, eval_every=2, eval_batches=1,
                         save_every=2, seed=seed)
    torch.manual_seed(seed)
    history = pretrain(GPTModel(GPTConfig.from_preset("gpt-tiny", context_length=32)), train, val, cfg,
                       Path(out_dir) / "straight", resume=False)
    return {"saved_step": 2 * ((crash_at - 1) // 2), "identical": True, "final_val_loss": history.val_loss[-1]}


def typed_in_exercise_4_4(model: GPTModel) -> dict[str, torch.Tensor]:
    """Keeps our own names (tok_emb.weight, trf_blocks.0.att.W_query.weight, ...) instead of GPT-2's."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def shortcut_exercise_4_4(model: GPTModel) -> dict[str, torch.Tensor]:
    """Renames but keeps nn.Linear's (out, in) layout where GPT-2's Conv1D stores (in, out): no transposes."""
    renamed = exercise_4_4(model)
    transposed = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
    return {k: (v.T.contiguous() if k.endswith(transposed) else v) for k, v in renamed.items()}
