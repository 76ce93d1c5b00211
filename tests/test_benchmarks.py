"""Every benchmark runs in its --quick configuration and writes its results; the helpers they
share count and summarise correctly. (No timing is asserted: these are not speed tests.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import common, run_all
from benchmarks.flops import training_step_flops
from benchmarks.setups import Variant, classifier, make_variant, random_batch, shape_config, sharing_copy
from gpt.device import peak_rss_bytes

ROOT = Path(__file__).resolve().parent.parent

TINY = shape_config("gpt-tiny")  # d=32, 2 layers, context 64, no qkv bias
TINY_FULL_PARAMS = 1_635_618  # 50257*32 + 64*32 + 2 * 12,608 (blocks) + 64 (final norm) + 66 (2-class head)
TINY_LORA4_PARAMS = 2 * (4 * 4 * 64 + 2 * 4 * (32 + 128)) + 66  # q, k, v, out_proj, ff in/out per block + head


# ----------------------------------------------------------------------------- helpers

def test_timing_median_and_quartiles():
    t = common.Timing.from_samples([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (t.median, t.q1, t.q3) == (3.0, 2.0, 4.0)
    one = common.Timing.from_samples([0.25])
    assert (one.median, one.q1, one.q3) == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError, match="no timing samples"):
        common.Timing.from_samples([])


def test_time_alternating_rotates_the_order_and_skips_warmup():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "c": lambda: calls.append("c")}
    timings = common.time_alternating(fns, warmup=1, repeats=2, progress=False)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(t.samples) == 2 for t in timings.values())
    with pytest.raises(ValueError, match="repeats"):
        common.time_alternating(fns, repeats=0)


def test_markdown_table_formats_numbers():
    table = common.markdown_table(["name", "n", "x"], [["full", 1635618, 0.5], ["lora", 4674, 1234.5]])
    assert table.splitlines() == ["| name | n | x |", "|---|---|---|", "| full | 1,635,618 | 0.5 |",
                                  "| lora | 4,674 | 1,234 |"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="VmHWM is Linux's")
def test_peak_rss_of_a_subprocess_is_its_own_not_the_parents():
    import subprocess

    ballast = bytearray(768 * 2**20)  # make this (parent) process's peak large
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    assert peak_rss_bytes() > 768 * 2**20
    code = "from gpt.device import peak_rss_bytes; print(peak_rss_bytes())"
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    # torch alone is a few hundred MiB; getrusage's ru_maxrss would have reported the parent's > 768 MiB.
    assert int(child.stdout) < 700 * 2**20
    del ballast


def test_variant_parse():
    assert Variant.parse("full") == Variant("full")
    assert Variant.parse("lora:16") == Variant("lora", 16, ("all-linear",))
    assert Variant.parse("lora:8:query,value") == Variant("lora", 8, ("query", "value"))
    assert Variant.parse("lora:8:query,value").spec == "lora:8:query,value"
    for bad in ("lora", "lora:x", "adapters:4", "full:1"):
        with pytest.raises(ValueError, match="variant|rank"):
            Variant.parse(bad)


def test_sharing_copy_shares_weights_but_not_modules():
    base = classifier(TINY)
    copy = sharing_copy(base)
    assert copy is not base and copy.trf_blocks[0] is not base.trf_blocks[0]
    assert copy.trf_blocks[0].att.W_query.weight is base.trf_blocks[0].att.W_query.weight
    make_variant(copy, Variant.parse("lora:4"))  # wraps the copy's layers only
    assert type(base.trf_blocks[0].att.W_query).__name__ == "Linear"


def test_training_step_flops_are_exact():
    model = classifier(TINY)
    ids, _ = random_batch(TINY, 2, 16)
    n = 2 * 16
    linear = 2 * (3 * 32 * 32 + 32 * 32 + 2 * 32 * 128) + 32 * 2  # matmul weights of the blocks + the 2-class head
    attention_fwd = 2 * 4 * n * 16 * 32  # per layer: Q K^T and weights @ V, 2 * N * T_k * d each
    full = training_step_flops(model, ids)
    assert full["trained_params"] == linear and full["frozen_params"] == 0
    assert full["forward"] == 2 * n * linear + attention_fwd
    assert full["total"] == 6 * n * linear + 3 * attention_fwd == 5_124_096

    lora = training_step_flops(make_variant(model, Variant.parse("lora:4:query,value")), ids)
    branches = 2 * 2 * 4 * (32 + 32)  # A and B of query and value in 2 blocks
    head = 32 * 2  # trained in full (its copy); the frozen original does not run and is not counted
    assert lora["trained_params"] == branches + head
    assert lora["frozen_params"] == linear - head
    assert lora["total"] == 4 * n * (linear - head) + 6 * n * (branches + head) + 3 * attention_fwd


# ----------------------------------------------------------------------------- the benchmarks, --quick

@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """Run every benchmark once in --quick mode into one folder (about a minute on 2 cores)."""
    out = tmp_path_factory.mktemp("results")
    torch.set_num_threads(1)
    run_all.main(["--quick", "--threads", "1", "--out-dir", str(out)])
    return out


def _load(out: Path, name: str) -> dict:
    assert (out / f"{name}.md").is_file(), f"{name}.md was not written"
    data = json.loads((out / f"{name}.json").read_text())
    assert data["benchmark"] == name
    assert data["command"].startswith(f"python -m benchmarks.") and "--quick" in data["command"]
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["torch_threads"] == 1
    md = (out / f"{name}.md").read_text()
    assert f"Command: `{data['command']}`" in md and "Machine: " in md
    return data["results"]


@pytest.mark.slow
def test_lora_vs_full_quick(quick_results):
    res = _load(quick_results, "lora_vs_full")["shapes"][0]
    assert res["shape"] == "gpt-tiny" and (res["batch_size"], res["tokens"]) == (2, 16)
    rows = {r["variant"]: r for r in res["variants"].values()}
    assert rows["full"]["trainable_params"] == TINY_FULL_PARAMS
    assert rows["lora:4"]["trainable_params"] == TINY_LORA4_PARAMS == 4674
    for r in rows.values():
        assert r["step_seconds"]["median"] > 0 and len(r["step_seconds"]["samples"]) == 2
        assert set(r["phases_seconds"]) == {"forward", "backward", "optimizer"}
        mem = r["memory"]  # measured in a fresh subprocess per variant
        assert mem["kind"] == "peak_rss" and mem["peak_bytes"] >= mem["rss_built_bytes"] > mem["rss_start_bytes"] > 0
    assert rows["full"]["flops"]["total"] == 5_124_096


@pytest.mark.slow
def test_peers_quick_agree_before_timing(quick_results):
    res = _load(quick_results, "peers")
    assert [k["kernel"] for k in res["kernels"]] == ["eager", "sdpa"]
    for k in res["kernels"]:
        for other in ("PEFT", "book"):
            assert k["agreement"][other]["max_abs_logit_diff"] < 2e-4
        counts = {name: v["trainable_params"] for name, v in k["variants"].items()}
        # the same layers, rank and head in all three: 2 blocks x (qkv, out_proj, ff in, ff out) at r=16
        expected = 2 * 16 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32)) + 66
        assert set(counts.values()) == {expected}, counts
        assert k["ours_vs_peft"] > 0 and k["ours_vs_book"] > 0


@pytest.mark.slow
def test_attention_quick(quick_results):
    res = _load(quick_results, "attention")
    assert set(res["levels"]) == {"attention module", "whole GPT"}
    for level in res["levels"].values():
        assert len(level) == 3  # forward, forward+backward full, forward+backward LoRA
        for timings in level.values():
            assert set(timings) == {"separate / explicit softmax", "separate / SDPA", "fused / explicit softmax",
                                    "fused / SDPA"}


@pytest.mark.slow
def test_inference_quick(quick_results):
    res = _load(quick_results, "inference")
    assert res["merged_vs_unmerged_max_abs_diff"] < 1e-4
    assert res["trainable_params"] == {
        "LoRA r=4 unmerged": 2 * 2 * 4 * 64,  # query and value, 2 blocks
        "LoRA r=4 merged": 1024,  # the branches stay (for unmerging); they no longer run
        "bottleneck adapters m=8": 4 * (2 * 32 * 8 + 8 + 32),
        "prefix tuning P=10": 2 * 2 * 10 * 32,
        "DoRA r=4 unmerged": 1024 + 2 * 2 * 32,  # + one magnitude per output feature
        "DoRA r=4 merged": 0,  # plain nn.Linear again
    }
    assert set(res["batches"]) == {"1", "2"}
    assert all(v["x_base"] > 0 for v in res["batches"]["1"].values())


@pytest.mark.slow
def test_mfu_quick(quick_results):
    res = _load(quick_results, "mfu")
    cases = res["cases"]
    assert cases["training step, full fine-tuning"]["flops"] == 5_124_096
    assert cases[res["reference"]]["utilisation"] == 1.0
    assert cases["matmul 256x256 @ 256x256"]["flops"] == 2 * 256**3


@pytest.mark.slow
def test_peft_methods_quick(quick_results):
    res = _load(quick_results, "peft_methods")
    rows = res["methods"]
    assert {m: r["trainable_params"] for m, r in rows.items()} == {
        "head": 66, "lora": TINY_LORA4_PARAMS, "dora": TINY_LORA4_PARAMS + 2 * (4 * 32 + 128 + 32),
        "adapters": 4 * (2 * 32 * 8 + 8 + 32) + 66, "prefix": 2 * 2 * 10 * 32 + 66, "full": TINY_FULL_PARAMS}
    assert {m: r["context_left"] for m, r in rows.items()} == {m: (54 if m == "prefix" else 64) for m in rows}
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and r["steps"] == 4 for r in rows.values())
    assert (quick_results / "peft_methods.png").stat().st_size > 1000


@pytest.mark.slow
def test_generate_quick(quick_results):
    res = _load(quick_results, "generate")
    assert (res["shape"], res["batch_size"], res["prompt_tokens"], res["new_tokens"]) == ("gpt-tiny", 1, 8, 16)
    assert res["same_tokens"] is True  # cached and uncached generation agree before anything is timed
    assert res["cache_bytes"] == 2 * 2 * 1 * (8 + 16) * 32 * 4  # keys and values, 2 blocks, float32
    assert set(res["variants"]) == {"uncached", "KV cache"}
    assert res["speedup"] == pytest.approx(res["variants"]["uncached"]["seconds"]["median"]
                                           / res["variants"]["KV cache"]["seconds"]["median"])


@pytest.mark.slow
def test_lora_family_cost_quick(quick_results):
    res = _load(quick_results, "lora_family_cost")["shapes"][0]
    rows = res["methods"]
    assert res["shape"] == "gpt-tiny" and list(rows) == ["lora", "qlora", "dora", "pissa", "loraplus", "rslora",
                                                          "vera", "full"]
    lora16 = 2 * (4 * 16 * (32 + 32) + 2 * 16 * (32 + 128)) + 66  # q, k, v, out_proj, ff in and out; the new head
    assert {m: r["trainable_params"] for m, r in rows.items()} == {
        "lora": lora16, "qlora": lora16, "pissa": lora16, "loraplus": lora16, "rslora": lora16,
        "dora": lora16 + 2 * (4 * 32 + 128 + 32), "vera": 2 * (4 * (256 + 32) + (256 + 128) + (256 + 32)) + 66,
        "full": TINY_FULL_PARAMS}
    # frozen bytes by value: the whole classifier frozen (float32: 4 bytes a number, bfloat16: 2) ...
    assert rows["lora"]["frozen_bytes"] == {"float32": 4 * TINY_FULL_PARAMS, "bfloat16": 2 * TINY_FULL_PARAMS}
    assert rows["full"]["frozen_bytes"] == {"float32": 0, "bfloat16": 0}
    # ... VeRA's shared A (256 x 128) and B (128 x 256) on top; QLoRA's 24,576 block weights in NF4: per 32 x 32
    # layer 512 bytes of codes, 16 of 8-bit block constants and 8 of double quantization, per 32 x 128 layer
    # 2,048 + 64 + 8
    assert rows["vera"]["frozen_bytes"]["float32"] == 4 * (TINY_FULL_PARAMS + 2 * 256 * 128)
    nf4 = 2 * (4 * (512 + 16 + 8) + 2 * (2048 + 64 + 8))
    assert rows["qlora"]["frozen_bytes"]["float32"] == 4 * (TINY_FULL_PARAMS - 24_576) + nf4
    assert all(r["memory"]["kind"] == "peak_rss" and r["memory"]["peak_reset_after_build"] for r in rows.values())
    assert all(r["step_seconds"]["median"] > 0 for r in rows.values())
    assert isinstance(_load(quick_results, "lora_family_cost")["total_seconds"], int)
    assert (quick_results / "lora_family_cost.png").stat().st_size > 1000


@pytest.mark.slow
def test_run_all_writes_the_readme(quick_results):
    readme = (quick_results / "README.md").read_text()
    assert "--quick results" in readme
    assert "| our LoRA step vs PEFT's, eager attention (gpt-tiny) | <= 0.9x |" in readme
    assert "## Targets" in readme and run_all.TARGETS_NOTE in readme and "issue" not in readme.lower()
    assert "| greedy generation with the KV cache vs without (gpt-tiny, 8 + 16 tokens) | measure |" in readme
    for name in ("mfu", "attention", "lora_vs_full", "peers", "inference", "peft_methods", "generate", "lora_family_cost"):
        assert f"[`{name}.md`]({name}.md)" in readme
    # --readme-only rebuilds it from the JSON files without running anything.
    (quick_results / "README.md").unlink()
    run_all.main(["--readme-only", "--quick", "--out-dir", str(quick_results)])
    assert (quick_results / "README.md").read_text() == readme


def test_bad_arguments_are_errors(tmp_path):
    from benchmarks import bench_lora_vs_full

    with pytest.raises(ValueError, match="unknown model shape"):
        bench_lora_vs_full.main(["--quick", "--shapes", "gpt-huge", "--out-dir", str(tmp_path), "--no-memory"])
    with pytest.raises(ValueError, match="repeats"):
        bench_lora_vs_full.main(["--quick", "--repeats", "0", "--out-dir", str(tmp_path)])
