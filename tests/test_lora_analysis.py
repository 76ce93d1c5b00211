"""lora.analysis, the measurements of chapter 9, on cases whose answer is known in advance."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from lora.analysis import (AdapterFactors, amplification, check_comparable, check_fits_base, delta_weight, energy,
                           load_factors, principal_angles, rank_for_energy, save_factors, similarity_grid,
                           subspace_similarity, top_directions, total_update_norm, update_norms)


def orthonormal(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]


def adapter(shapes: dict[str, tuple[int, int]], r: int, seed: int = 0, scale: float = 1.0, base=None) -> AdapterFactors:
    """Random factors for modules of weight shape (d_out, d_in)."""
    g = torch.Generator().manual_seed(seed)
    lora_A = {n: torch.randn(d_in, r, generator=g) for n, (d_out, d_in) in shapes.items()}
    lora_B = {n: torch.randn(r, d_out, generator=g) for n, (d_out, d_in) in shapes.items()}
    return AdapterFactors(lora_A, lora_B, scale, base if base is not None else {"name": "toy", "sha256": "aaa"})


SHAPES = {"blocks.0.query": (16, 16), "blocks.0.ff_in": (32, 16), "blocks.1.query": (16, 16)}


# ------------------------------------------------------------------------------------------ subspace similarity
def test_similarity_of_a_subspace_with_itself_is_one_and_with_an_orthogonal_one_zero():
    Q = orthonormal(64, 12)
    U, V = Q[:, :6], Q[:, 6:]  # two orthogonal 6-dimensional subspaces
    assert subspace_similarity(U, U) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(U, V) == pytest.approx(0.0, abs=1e-12)
    assert subspace_similarity(U[:, :2], U) == pytest.approx(1.0, abs=1e-12)  # contained: normalised by min(i, j)
    # half of V's directions inside U: ||U^T W||^2 = 3 of min(6, 6)
    W = torch.cat([U[:, :3], V[:, :3]], dim=1)
    assert subspace_similarity(U, W) == pytest.approx(0.5, abs=1e-12)


def test_similarity_grid_of_an_A_with_itself_is_one_everywhere_and_matches_the_definition():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(40, 8, generator=g)
    grid = similarity_grid(A, A)
    assert grid.shape == (8, 8)
    torch.testing.assert_close(grid, torch.ones(8, 8, dtype=torch.float64), atol=1e-10, rtol=0)
    B = torch.randn(40, 5, generator=g)
    grid = similarity_grid(A, B)
    U, V = top_directions(A, 8), top_directions(B, 5)
    for i, j in ((1, 1), (3, 5), (8, 2)):
        assert grid[i - 1, j - 1] == pytest.approx(subspace_similarity(U[:, :i], V[:, :j]), abs=1e-12)
    # an A that reads orthogonal inputs: 0 everywhere
    Q = orthonormal(40, 10, seed=2)
    assert similarity_grid(Q[:, :5] * 3.0, Q[:, 5:]).abs().max() < 1e-12


def test_random_subspaces_have_the_expected_similarity():
    """Two random i- and j-dimensional subspaces of R^n: E ||U^T V||^2 = i j / n, so phi ~ max(i, j) / n."""
    values = [subspace_similarity(orthonormal(256, 8, s), orthonormal(256, 8, 100 + s)) for s in range(40)]
    assert sum(values) / len(values) == pytest.approx(8 / 256, rel=0.15)


def test_principal_angles_of_shared_and_orthogonal_directions():
    Q = orthonormal(30, 4)
    U = Q[:, :2]
    V = torch.cat([Q[:, :1], Q[:, 2:3]], dim=1)  # shares one direction with U, the other orthogonal
    torch.testing.assert_close(principal_angles(U, V), torch.tensor([0.0, 90.0], dtype=torch.float64), atol=1e-5, rtol=0)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    tilted = (c * Q[:, 0] + s * Q[:, 3])[:, None]
    assert float(principal_angles(Q[:, :1], tilted)[0]) == pytest.approx(30.0, abs=1e-6)



@pytest.mark.parametrize("degrees", [0.0, 60.0, 90.0])
def test_two_planes_that_share_a_line_chapter_9s_example(degrees):
    """Chapter 9's planes in R^3: the x-y plane and the plane through the x axis turned by theta about it. The
    angles are 0 and theta, and phi = (1 + cos^2 theta) / 2 is their mean cos^2 (0.625 at 60 degrees)."""
    t = math.radians(degrees)
    P1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    P2 = torch.tensor([[1.0, 0.0], [0.0, math.cos(t)], [0.0, math.sin(t)]])
    torch.testing.assert_close(principal_angles(P1, P2), torch.tensor([0.0, degrees], dtype=torch.float64),
                               atol=1e-3, rtol=0)
    assert subspace_similarity(P1, P2) == pytest.approx((1 + math.cos(t) ** 2) / 2, abs=1e-6)
    assert subspace_similarity(P1, P2) == pytest.approx(
        float(torch.cos(torch.deg2rad(principal_angles(P1, P2))).square().mean()), abs=1e-6)

# ------------------------------------------------------------------------------------------ Delta W against W
def test_amplification_factor_of_a_built_example():
    """W = diag(10, 5, 1, 0.5, ...); Delta W = 3 e_3 e_3^T + 4 e_4 e_4^T touches only W's weak directions 3 and 4.
    Top-2 directions of Delta W: e_3, e_4, where U^T W V = diag(1, 0.5): norm sqrt(1.25); ||Delta W|| = 5;
    factor 5 / sqrt(1.25) = 4.47. W's own top-2 directions see W's largest entries: sqrt(125)."""
    n = 8
    W = torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.01]))
    delta = torch.zeros(n, n)
    delta[2, 2], delta[3, 3] = 3.0, 4.0
    out = amplification(delta, W, r=2)
    assert out["delta_norm"] == pytest.approx(5.0)
    assert out["delta_dirs"] == pytest.approx(math.sqrt(1.25), rel=1e-9)
    assert out["factor"] == pytest.approx(5.0 / math.sqrt(1.25), rel=1e-9)
    assert out["W_dirs"] == pytest.approx(math.sqrt(125.0), rel=1e-9)
    assert out["W_norm"] == pytest.approx(float(torch.linalg.norm(W)), rel=1e-6)
    assert 0 < out["random_dirs"] < out["W_dirs"]


def test_an_update_along_Ws_own_top_directions_is_not_amplified():
    W = torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.5]))
    out = amplification(0.1 * W, W, r=2)
    # ||0.1 W|| / ||diag(10, 5)||: the update is as strong as W is along its own directions, divided by 10
    assert out["factor"] == pytest.approx(0.1 * math.sqrt(126.25 / 125.0), rel=1e-9)
    assert out["delta_dirs"] == pytest.approx(out["W_dirs"], rel=1e-9)


def test_rank_larger_than_the_layer_is_refused():
    W = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"rank 5 is not possible for the layer of shape \(6, 4\): it has at most 4"):
        amplification(W, W, r=5)
    with pytest.raises(ValueError, match="rank 0 is not possible"):
        amplification(W, W, r=0)
    with pytest.raises(ValueError, match=r"rank 7 is not possible for this matrix of shape \(6, 4\)"):
        top_directions(W, 7)


def test_amplification_refuses_an_update_of_another_shape():
    with pytest.raises(ValueError, match=r"Delta W \(4, 4\) and W \(6, 4\) differ in shape"):
        amplification(torch.randn(4, 4), torch.randn(6, 4), r=2)


# ------------------------------------------------------------------------------------------ norms
def test_per_module_norms_add_up_in_squares_to_the_whole_update():
    a = adapter(SHAPES, r=3, seed=4, scale=0.5)
    norms = update_norms(a)
    assert sorted(norms) == sorted(SHAPES)
    whole = total_update_norm(a)  # computed without building Delta W (trace formula)
    assert math.sqrt(sum(v * v for v in norms.values())) == pytest.approx(whole, rel=1e-9)
    # and equal to the norm of all updates side by side, built the slow way
    flat = torch.cat([(0.5 * (a.lora_A[n].double() @ a.lora_B[n].double()).T).flatten() for n in a.modules])
    assert whole == pytest.approx(float(flat.norm()), rel=1e-9)


def test_delta_weight_is_scale_times_B_A_in_the_weights_layout():
    a = adapter({"m": (5, 3)}, r=2, seed=5, scale=2.0)
    B, A = a.lora_B["m"].T, a.lora_A["m"].T  # the paper's B (d, r), A (r, k)
    torch.testing.assert_close(a.delta_weight("m"), 2.0 * B @ A)
    assert a.delta_weight("m").shape == (5, 3) and a.shapes() == {"m": (5, 3)}
    torch.testing.assert_close(delta_weight(a.lora_A["m"], a.lora_B["m"], 2.0), a.delta_weight("m"))
    assert torch.linalg.matrix_rank(a.delta_weight("m")) == 2


def test_energy_and_the_rank_that_holds_a_fraction():
    S = torch.tensor([3.0, 2.0, 1.0, 1.0, 1.0])  # sigma^2: 9, 4, 1, 1, 1 of 16
    assert energy(S, 1) == pytest.approx(9 / 16) and energy(S, 2) == pytest.approx(13 / 16)
    assert rank_for_energy(S, 0.5) == 1 and rank_for_energy(S, 0.8) == 2 and rank_for_energy(S, 13 / 16) == 2
    assert rank_for_energy(S, 0.9) == 4 and rank_for_energy(S, 1.0) == 5
    with pytest.raises(ValueError, match="fraction must be in"):
        rank_for_energy(S, 0.0)


# ------------------------------------------------------------------------------------------ bad input
def test_adapters_of_different_targets_are_refused_with_the_modules_named():
    a = adapter(SHAPES, r=2)
    b = adapter({"blocks.0.query": (16, 16), "blocks.1.query": (16, 16)}, r=4)
    assert check_comparable(b, a) == ["blocks.0.query", "blocks.1.query"]  # b's modules are all in a
    with pytest.raises(ValueError, match=r"adapt different modules: not in the first adapter: \[\], "
                                         r"not in the second: \['blocks.0.ff_in'\]"):
        check_comparable(a, b)


def test_adapters_of_different_shapes_are_refused_with_the_shapes_named():
    a = adapter({"q": (16, 16)}, r=2)
    b = adapter({"q": (32, 16)}, r=2)
    with pytest.raises(ValueError, match=r"weight shapes differ \(d_out, d_in\): q: \(16, 16\) vs \(32, 16\)"):
        check_comparable(a, b)
    with pytest.raises(ValueError, match=r"lora_A shapes \(16, 2\) and \(32, 2\)"):
        similarity_grid(a.lora_A["q"], torch.randn(32, 2))


def test_adapters_of_different_bases_are_refused():
    a = adapter({"q": (8, 8)}, r=2, base={"name": "data/gpt-mini", "sha256": "aaa"})
    b = adapter({"q": (8, 8)}, r=2, base={"name": "data/gpt-mini", "sha256": "bbb"})
    with pytest.raises(ValueError, match="trained on different base models: sha256 'aaa' vs 'bbb'"):
        check_comparable(a, b)


def test_an_adapter_for_another_base_is_refused():
    a = adapter(SHAPES, r=2, base={"name": "data/gpt-mini", "sha256": "aaa"})
    weights = {n: torch.randn(s) for n, s in SHAPES.items()}
    check_fits_base(a, weights, {"sha256": "aaa"})  # the right base: no error
    with pytest.raises(ValueError, match="trained on another base model: its sha256 is 'aaa', these weights' is 'ccc'"):
        check_fits_base(a, weights, {"sha256": "ccc"})
    bigger = dict(weights, **{"blocks.0.ff_in": torch.randn(64, 16)})
    with pytest.raises(ValueError, match=r"shapes differ.*blocks.0.ff_in: adapter \(32, 16\), weight \(64, 16\)"):
        check_fits_base(a, bigger)
    fewer = {n: w for n, w in weights.items() if n != "blocks.1.query"}
    with pytest.raises(ValueError, match=r"it adapts \['blocks.1.query'\], which these weights do not have"):
        check_fits_base(a, fewer)


def test_factors_that_do_not_multiply_are_refused():
    with pytest.raises(ValueError, match=r"m: lora_A \(4, 2\) and lora_B \(3, 5\) do not multiply"):
        AdapterFactors({"m": torch.zeros(4, 2)}, {"m": torch.zeros(3, 5)}, 1.0)
    with pytest.raises(ValueError, match=r"only A: \['m'\]"):
        AdapterFactors({"m": torch.zeros(4, 2)}, {}, 1.0)


# ------------------------------------------------------------------------------------------ the file
def test_save_and_load_keep_everything(tmp_path):
    a = adapter(SHAPES, r=3, seed=7, scale=0.25)
    a.meta = {"test_accuracy": 0.97, "targets": ["all-linear"]}
    a.saved_modules = {"out_head.weight": torch.randn(2, 16), "out_head.bias": torch.randn(2)}
    back = load_factors(save_factors(a, tmp_path / "a.safetensors"))
    assert back.modules == a.modules and back.scale == 0.25 and back.base == a.base and back.meta == a.meta
    for n in a.modules:
        assert torch.equal(back.lora_A[n], a.lora_A[n]) and torch.equal(back.lora_B[n], a.lora_B[n])
    assert torch.equal(back.saved_modules["out_head.weight"], a.saved_modules["out_head.weight"])
    half = load_factors(save_factors(a, tmp_path / "h.safetensors", dtype=torch.float16))
    for n in a.modules:  # float16 storage: Delta W within 1e-3 relative
        err = torch.linalg.norm(half.delta_weight(n) - a.delta_weight(n)) / torch.linalg.norm(a.delta_weight(n))
        assert err < 1e-3
    assert [p.name for p in tmp_path.iterdir()] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_loading_something_else_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not a lora-from-scratch/lora-factors file"):
        load_factors(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="no adapter factors at"):
        load_factors(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------ chapter 9's results
RESULTS = Path(__file__).resolve().parent.parent / "results" / "ch09"


def test_chapter_9_results_are_small_and_fit_the_shipped_base():
    """results/ch09 (scripts/ch09_inside_adapter.py): every file under 3 MiB, every stored adapter made for
    data/gpt-mini (its sha256 and its shapes), every budget run at 18,432 LoRA parameters per block."""
    from safetensors import safe_open

    files = [p for p in RESULTS.rglob("*") if p.is_file()]
    assert len(files) >= 3 and not [p for p in files if p.stat().st_size >= 3 * 2**20]
    doc = json.loads((RESULTS / "runs.json").read_text())
    base = RESULTS.parent.parent / "data" / "gpt-mini" / "model.safetensors"
    assert doc["base"]["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    with safe_open(str(base), "pt") as f:
        weights = {k[: -len(".weight")]: f.get_slice(k) for k in f.keys() if k.endswith(".weight")}
        shapes = {k: torch.empty(tuple(s.get_shape()), device="meta") for k, s in weights.items()}
    adapters = sorted((RESULTS / "adapters").glob("*.safetensors"))
    assert adapters
    for path in adapters:
        factors = load_factors(path)
        check_fits_base(factors, shapes, doc["base"])
    budget = {n: r for n, r in doc["runs"].items() if n.startswith("budget_")}
    assert budget
    for name, run in budget.items():
        assert run["trainable_params"] - 514 == 6 * 18_432, (name, run["trainable_params"])  # 514: the 2-class head


def run_chapter_script(*args: str):
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "ch09_inside_adapter.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_chapter_9_script_recomputes_the_numbers_from_the_committed_results():
    done = run_chapter_script("analyse")
    assert done.returncode == 0, done.stderr
    doc = json.loads((RESULTS / "runs.json").read_text())
    main = doc["runs"]["main_all-linear_r16_s123"]
    assert f"all-linear r=16: {100 * main['test_accuracy']:.2f} / {100 * main['val_accuracy']:.2f}" in done.stdout
    assert f"main adapter: ||Delta W|| {main['update_norm']:.3f}" in done.stdout
    assert "Figures 3/4, r=8 vs r=64: phi(1, 1) median" in done.stdout


@pytest.mark.slow
def test_chapter_9_script_refuses_a_missing_runs_folder_in_one_line(tmp_path):
    done = run_chapter_script("collect", "--runs", str(tmp_path / "nowhere"), "--results", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'} is not a folder of runs; train them "
                                                f"first (`train --runs {tmp_path / 'nowhere'}`)"]
    assert not (tmp_path / "out").exists()  # nothing written
