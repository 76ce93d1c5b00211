"""The code solutions of chapter 5's exercises (solutions/ch05.py), and the chapter script
(scripts/ch05_low_rank.py) in quick mode."""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch
from importlib import import_module

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
# One quick run (a random gpt-tiny, 4 fine-tuning steps; about 30 s) whose printed numbers the tests below read.

SPAM_COMPARISON = Path(__file__).resolve().parent.parent / "results" / "spam_comparison.json"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ch05")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        results = import_module("scripts.ch05_low_rank").main(["--quick", "--out", str(out), "--threads", "1"])
    return results, stdout.getvalue(), out


def _printed(text: str, pattern: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, f"not printed: {pattern}"
    return [float(g.replace(",", "")) for g in match.groups()]


@pytest.mark.slow
def test_script_writes_the_figures_and_what_it_printed(quick_run):
    results, _, out = quick_run
    for name in ("05_rank_r_error.png", "05_params_vs_rank.png", "05_scale_vs_rank.png", "05_first_update_vs_rank.png",
                 "05_delta_w_singular_values.png", "results.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
    assert not (out / "05_alpha_scaling_curves.png").exists()  # chapter 7's compare_finetuning.py runs the spam alpha
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert "scaling_runs" not in results


@pytest.mark.slow
def test_script_rank_and_truncated_svd(quick_run):
    results, text, _ = quick_run
    svd = results["rank_and_svd"]
    assert svd["M_rank"] == 2 and svd["M_equals_B_at_A"]
    assert svd["M_singular_values"] == pytest.approx([8.435449, 0.918264, 0.0], abs=1e-5)
    for r in (4, 8, 16):
        row = svd["truncated_svd"][r]
        assert row["svd_error"] == pytest.approx(row["eckart_young"], rel=1e-4)  # Eckart-Young
        assert row["svd_error"] < 0.8 * row["random_subspace_error"]  # the SVD's subspace beats a random one
    printed = _printed(text, r"rank-8 signal \+ noise: relative error at r = 8: (\S+), r = 16: (\S+), r = 64: (\S+)")
    assert printed == [0.56, 0.52, 0.36]  # notebook 5.3 prints the same with seed 123
    assert _printed(text, r"random 256 x 256: relative error at r = 8: (\S+),") == [0.94]


@pytest.mark.slow
def test_script_linear_with_lora_is_the_formula_written_out(quick_run):
    results, text, _ = quick_run
    n = results["notation"]
    inline, paper = _printed(text, r"vs the layer: max \|diff\| (\S+) \| the paper's .*?: (\S+) \|")
    assert inline == pytest.approx(n["inline_vs_layer_max_abs_diff"], rel=0.1, abs=1e-12)
    assert inline <= 1e-6 and paper <= 1e-5  # float32 rounding; a wrong scale would differ by O(1)
    assert n["scale"] == 2.0 and n["lora_A_shape"] == [64, 8] and n["lora_B_shape"] == [8, 512]
    assert n["delta_w_shape"] == [512, 64] and n["delta_w_rank"] == 8


@pytest.mark.slow
def test_script_parameter_counts(quick_run):
    results, text, _ = quick_run
    counts = results["parameter_counts"]
    assert counts["512x64 r=8"] == {"full": 32768, "lora": 4608, "fewer_percent": 85.9}
    assert counts["100x100 r=1"] == {"full": 10000, "lora": 200, "fewer_percent": 98.0}
    assert counts["10x8 r=3"] == {"full": 80, "lora": 54, "fewer_percent": 32.5}
    assert counts["gpt2-small r=8 query+value"] == 294_912
    assert counts["gpt-mini r=16 all-linear"] == 442_368 and counts["gpt-mini total"] == 17_665_792
    assert _printed(text, r"query and value: ([\d,]+) \| gpt-mini") == [294_912]


@pytest.mark.slow
def test_script_first_update_shrinks_with_r_under_alpha_over_r(quick_run):
    results, text, _ = quick_run
    sizes = results["scale"]["first_update_norm"]
    ranks = (1, 4, 16, 64)
    alpha_r = [sizes["alpha/r"][r] for r in ranks]
    alpha = [sizes["alpha"][r] for r in ranks]
    assert all(a > b for a, b in zip(alpha_r, alpha_r[1:])), alpha_r  # alpha / r: high ranks start slower
    assert all(a < b for a, b in zip(alpha, alpha[1:])), alpha  # alpha: the update grows with r
    assert sizes["alpha/r"][1] == sizes["alpha"][1] == sizes["alpha/sqrt(r)"][1]  # the same scale at r = 1
    assert results["scale"]["alpha_over_alpha_r_at_r16"] == pytest.approx(16.0, rel=0.01)  # AdamW eps: not exactly 16
    printed = _printed(text, r"\n\s+alpha/r \|\s+(\S+) \|\s+(\S+) \|\s+(\S+) \|\s+(\S+)")
    assert printed == pytest.approx([0.2083, 0.1007, 0.0572, 0.0349], abs=2e-4)  # notebook 5.6's table
    assert printed == pytest.approx(alpha_r, abs=5e-5)
    assert _printed(text, r"at r = 16, alpha / \(alpha/r\): (\S+)x") == [16.0]


@pytest.mark.slow
@pytest.mark.skipif(not SPAM_COMPARISON.is_file(), reason="results/spam_comparison.json not present")
def test_script_points_to_chapter_7_for_the_spam_alpha_runs(quick_run):
    results, text, _ = quick_run
    rows = json.loads(SPAM_COMPARISON.read_text())["rows"]
    pointer = results["scale"]["spam_classifier_chapter_7_4"]
    for scaling in ("alpha/r", "alpha"):
        assert pointer[scaling]["test_accuracy"] == rows[f"scale-{scaling}"]["test_accuracy"]
        assert f"{scaling}: test accuracy {100 * rows[f'scale-{scaling}']['test_accuracy']:.2f} %" in text


@pytest.mark.slow
def test_script_energy_of_a_real_delta_w(quick_run):
    results, text, _ = quick_run
    dw = results["delta_w"]
    assert dw["steps"] == 4 and len(dw["matrices"]) == 2 * 6  # gpt-tiny: 2 blocks x 6 linear layers
    before, after = _printed(text, r"validation loss (\S+) -> (\S+) nats")
    assert after < before and after == pytest.approx(dw["val_loss_after"], abs=1e-3)  # the fine-tune trained
    for row in dw["matrices"]:
        assert row["relative_change"] > 0, row["name"]  # every block matrix was trained
        for key in ("delta_w", "w", "random"):
            assert 0.0 < row[key]["energy_top8"] <= row[key]["energy_top16"] <= 1.0, (row["name"], key)
    med = dw["median_energy"]
    assert med["delta_w"]["energy_top8"] > med["random"]["energy_top8"] + 0.05  # Delta W is not a random matrix
    printed = _printed(text, r"all 12 matrices, median \|\s+(\S+) \|\s+(\S+) \|")
    assert printed == pytest.approx([med["delta_w"]["energy_top8"], med["delta_w"]["energy_top16"]], abs=0.006)
    best16 = dw["best_rank16_relative_error"]["median"]
    assert best16 == pytest.approx((1 - med["delta_w"]["energy_top16"]) ** 0.5, abs=0.02)  # Eckart-Young, medians


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--quick", "--model", "no/such/base"], "base model 'no/such/base' not found"),
])
def test_script_refuses_bad_arguments_in_one_line(argv, message, tmp_path, capsys):
    from common.cli import run_main

    script = import_module("scripts.ch05_low_rank")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_main(script.main, [*argv, "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # refused before anything was written
