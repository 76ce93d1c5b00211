"""The code solutions of chapter 4's exercises (solutions/ch04.py) give the numbers their docstrings state."""

import math

import pytest
import torch

from solutions import ch04


def test_exercise_4_1_untrained_loss_is_ln_vocab():
    out = ch04.exercise_4_1()
    assert out["ln_V"] == pytest.approx(10.8249, abs=1e-4)
    # GPT-2's N(0, 0.02) init: near-uniform predictions, loss within 0.1 nats of ln V.
    assert out["loss"] == pytest.approx(out["ln_V"], abs=0.1)
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]))
    assert out["logit_std"] < 0.5
    # A N(0, 1) output layer is confidently wrong: clearly worse than uniform guessing.
    assert out["loss_large_init"] > out["ln_V"] + 10.0  # 31.7 nats at seed 123


def test_exercise_4_2_top1_is_greedy_and_temperature_limits():
    out = ch04.exercise_4_2()
    assert out["top1_equals_greedy"] == {0.5: True, 1.0: True, 3.0: True}
    torch.testing.assert_close(out["cold"], torch.tensor([1.0, 0.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["hot"], torch.full((4,), 0.25), atol=1e-3, rtol=0)
    other = ch04.exercise_4_2(temperatures=(2.0,), z=(0.0, 0.5, 0.45))  # logits of another size
    assert int(other["cold"].argmax()) == 1 and other["cold"].shape == (3,) and other["top1_equals_greedy"] == {2.0: True}


@pytest.mark.slow
def test_exercise_4_3_crash_and_resume_is_exact(tmp_path):
    out = ch04.exercise_4_3(tmp_path)
    assert out["saved_step"] == 4  # the crash at step 6 came before the step-6 save
    assert out["identical"] is True
    assert math.isfinite(out["final_val_loss"])


def test_exercise_4_4_inverse_mapping_matches_transformers():
    pytest.importorskip("transformers")
    out = ch04.compare_with_transformers()
    for attention in ("separate", "fused"):
        assert out[attention]["missing"] == [] and out[attention]["unexpected"] == []
        assert out[attention]["max_abs_diff"] < 1e-4, out[attention]


def test_gpt_to_hf_state_dict_round_trips_through_the_loader():
    """Our inverse mapping followed by gpt.weights' forward mapping gives back the same tensors."""
    from gpt.config import GPTConfig
    from gpt.model import GPTModel
    from gpt.weights import hf_to_gpt_state_dict

    cfg = GPTConfig.from_preset("gpt-tiny", qkv_bias=True)
    torch.manual_seed(0)
    model = GPTModel(cfg)
    back = hf_to_gpt_state_dict(ch04.exercise_4_4(model), cfg)
    for name, tensor in model.state_dict().items():
        assert torch.equal(back[name], tensor), name
