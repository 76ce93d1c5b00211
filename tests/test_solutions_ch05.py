"""The code solutions of chapter 5's exercises (solutions/ch05.py), and the chapter script
(scripts/ch05_low_rank.py) in quick mode."""

import json

import pytest
import torch
from _scripts import load_script

from solutions import ch05



def test_exercise_5_1_ranks():
    out = ch05.exercise_5_1(d=64, k=48, r=4)
    assert out == {"rank_BA": 4, "rank_sum": 8, "rank_W": 48, "rank_W_plus_BA": 48, "rank_zero_B": 0}


def test_exercise_5_2_break_even_ranks():
    out = ch05.exercise_5_2()
    assert out[(768, 768)]["break_even"] == 384.0
    assert out[(768, 768)]["first_worse_rank"] == 385
    assert out[(512, 64)]["break_even"] == pytest.approx(56.888, abs=1e-3)
    assert out[(512, 64)]["first_worse_rank"] == 57
    assert out[(10, 8)]["break_even"] == pytest.approx(4.444, abs=1e-3)
    assert out[(10, 8)]["first_worse_rank"] == 5


def test_exercise_5_3_scalings_are_reparametrisations():
    out = ch05.exercise_5_3()
    assert out["max_diff_alpha"] < 1e-4
    assert out["max_diff_sqrt"] < 1e-4
    assert out["ratio_alpha_vs_alpha_r"] == pytest.approx(16.0, rel=1e-5)  # r = 16: 16x larger update


def test_exercise_5_4_svd_initialisation_meets_eckart_young():
    out = ch05.svd_init_errors()
    assert out["output_error_r4"] < 1e-4
    assert out["update_error_r4"] < 1e-4 * out["norm"]
    assert out["update_error_r2"] == pytest.approx(out["eckart_young_r2"], rel=1e-4)
    assert 0.05 * out["norm"] < out["update_error_r2"] < out["norm"]  # rank 2 really loses something


def test_exercise_5_5_gradients_at_initialisation():
    out = ch05.exercise_5_5()
    lora = out["A random, B zero"]
    assert lora["output_norm"] == 0.0 and lora["grad_A"] == 0.0 and lora["grad_B"] > 0.0
    mirrored = out["A zero, B random"]
    assert mirrored["output_norm"] == 0.0 and mirrored["grad_B"] == 0.0 and mirrored["grad_A"] > 0.0
    dead = out["both zero"]
    assert dead["grad_A"] == 0.0 and dead["grad_B"] == 0.0
    both = out["both random"]
    assert both["output_norm"] > 0.0 and both["grad_A"] > 0.0 and both["grad_B"] > 0.0


def test_svd_init_refuses_a_rank_larger_than_the_matrix():
    delta = torch.randn(6, 5)
    with pytest.raises(ValueError, match="rank"):
        ch05.exercise_5_4(delta, r=6)  # a rank larger than min(d_in, d_out) is refused by LoRALayer


# ----------------------------------------------------------------------------- the chapter script

def test_energy_and_rank_r_error_agree():
    """Eckart-Young: relative error of the best rank-m approximation^2 = 1 - energy(top m)."""
    script = load_script("ch05_low_rank")
    torch.manual_seed(0)
    W = torch.randn(40, 30)
    S = torch.linalg.svdvals(W)
    for m in (1, 5, 30):
        approx = script.rank_r_approximation(W, m)
        rel = torch.linalg.norm(W - approx) / torch.linalg.norm(W)
        assert float(rel**2) == pytest.approx(1 - script.energy(S, m), abs=1e-5)
    low = torch.randn(40, 3) @ torch.randn(3, 30)
    assert script.energy(torch.linalg.svdvals(low), 3) == pytest.approx(1.0, abs=1e-6)


def test_script_quick_run_writes_figures_and_results(tmp_path):
    script = load_script("ch05_low_rank")
    results = script.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    for name in ("05_rank_r_error.png", "05_params_vs_rank.png", "05_scale_vs_rank.png",
                 "05_alpha_scaling_curves.png", "05_delta_w_singular_values.png", "results.json"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["parameter_counts"]["512x64 r=8"] == {"full": 32768, "lora": 4608}
    assert saved["parameter_counts"]["100x100 r=1"] == {"full": 10000, "lora": 200}
    assert saved["parameter_counts"]["10x8 r=3"] == {"full": 80, "lora": 54}
    assert set(saved["scaling_runs"]) == {"alpha/r", "alpha"}
    assert saved["scaling_runs"]["alpha"]["scale"] == 16.0 and saved["scaling_runs"]["alpha/r"]["scale"] == 1.0
    for row in saved["delta_w"]["matrices"]:
        for key in ("delta_w", "w", "random"):
            assert 0.0 < row[key]["energy_top8"] <= row[key]["energy_top16"] <= 1.0


def test_script_rejects_bad_arguments(tmp_path):
    script = load_script("ch05_low_rank")
    with pytest.raises(SystemExit):
        script.main(["--epochs", "0", "--out", str(tmp_path)])
