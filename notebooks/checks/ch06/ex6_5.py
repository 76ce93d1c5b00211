"""Exercise 6.5: LoRA on gpt-tiny's tied output head: one step leaves the embedding, merging is refused."""

from otter.test_files import test_case

from checks._guard import answer, keys, require

OK_FORMAT = False
name = "ex6_5"
points = 1


@test_case(points=1)
def ex6_5(env):
    for seed in (123, 7):
        result = answer(env, "exercise_6_5", seed, returns=dict, timeout=20,
                        expects="a dict {'embedding_unchanged': bool, 'still_tied': bool, 'logits_changed_by': float, "
                                "'merge_error': str or None}")
        call = f"exercise_6_5(seed={seed})"
        keys(result, {"embedding_unchanged", "still_tied", "logits_changed_by", "merge_error"}, call)
        require(result["still_tied"] is True,
                f"{call}['still_tied'] = {result['still_tied']!r}: out_head's frozen weight should still BE the token "
                f"embedding (compare with `is`). Hint: apply_lora wraps out_head; its .linear.weight is the tied tensor.")
        require(isinstance(result["logits_changed_by"], float) and result["logits_changed_by"] > 1e-4,
                f"{call}['logits_changed_by'] = {result['logits_changed_by']!r}: the training step should change the "
                f"logits (a float > 0). Hint: give AdamW the trainable parameters and call opt.step() after backward.")
        require(result["embedding_unchanged"] is True,
                f"{call}['embedding_unchanged'] = {result['embedding_unchanged']!r}: LoRA trains only A and B; the "
                f"tied weight must stay frozen, so the embedding does not move. Hint: do not unfreeze any base weight.")
        require(isinstance(result["merge_error"], str) and "tied" in result["merge_error"],
                f"{call}['merge_error'] = {result['merge_error']!r}: merge_lora refuses an adapter on a tied weight; "
                f"return the message of the ValueError it raises (str(err)).")
