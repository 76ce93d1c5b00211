"""Exercise 6.5: LoRA on gpt-tiny's tied output head: one step leaves the embedding, merging is refused; the refusal
must be the one merge_lora really raises (the check asks merge_lora itself), at seeds of the statement and its own."""
import torch
from otter.test_files import test_case
from checks._guard import answer, keys, require
from gpt import GPTConfig, GPTModel
from lora import LoraConfig, apply_lora, merge_lora

OK_FORMAT = False
name = "ex6_5"
points = 1


def _refusal(seed):
    """What merge_lora says about an adapter on the tied head of the statement's model."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = apply_lora(GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)),
                           LoraConfig(rank=4, alpha=8, targets=("query", "out_head")))
        try:
            merge_lora(model)
        except ValueError as err:
            return str(err)
    return None


@test_case(points=1)
def ex6_5(env):
    for seed in (123, 7, 11):
        result = answer(env, "exercise_6_5", seed, returns=dict, timeout=20,
                        expects="a dict {'embedding_unchanged': bool, 'still_tied': bool, 'logits_changed_by': float, "
                                "'merge_error': str or None}")
        call = f"exercise_6_5(seed={seed})"
        keys(result, {"embedding_unchanged", "still_tied", "logits_changed_by", "merge_error"}, call)
        require(result["still_tied"] is True,
                f"{call}['still_tied'] = {result['still_tied']!r}: out_head's frozen weight should still BE the token "
                f"embedding (compare with `is`). Hint: apply_lora wraps out_head; look at its .linear.weight.")
        require(isinstance(result["logits_changed_by"], float) and result["logits_changed_by"] > 1e-4,
                f"{call}['logits_changed_by'] = {result['logits_changed_by']!r}: the training step should change the "
                f"logits (a float > 0). Hint: give AdamW the trainable parameters and call opt.step() after backward.")
        require(result["embedding_unchanged"] is True,
                f"{call}['embedding_unchanged'] = {result['embedding_unchanged']!r}: LoRA trains only A and B; the "
                f"tied weight must stay frozen, so the embedding does not move. Hint: do not unfreeze any base weight.")
        require(result["merge_error"] == _refusal(seed),
                f"{call}['merge_error'] = {result['merge_error']!r} is not the message merge_lora raises on this model. "
                f"Hint: call merge_lora(model) inside try/except ValueError and return str(err).")
