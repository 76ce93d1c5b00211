"""Data-parallel training (gpt/distributed.py, gpt/train.py under torchrun), on CPU processes.

The claim: N processes with global batch B take the same optimizer steps as one process with
batch B. The main test runs scripts/pretrain.py under `torchrun --nproc_per_node=2 --standalone`
(gloo on localhost; torchrun binds a free port itself, so no port race) with gradient accumulation,
and in this process with one process and no accumulation, and compares losses and final weights. It also records which training
windows each rank read, so that "each rank takes its own half of every micro-batch" is checked
directly rather than inferred from the numbers (two ranks that both read the whole batch
would also reach the same weights).

Tolerance: losses agree to 1e-5 relative. Weights: |difference| <= 1e-5. Adam divides each
update by the root of its running squared gradient, so for weights whose gradient is almost
zero, float summation-order noise becomes a visible difference (measured: up to ~2e-6 after
6 steps at lr 1e-3); a wrong shard changes updates by about lr = 1e-3.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import gpt.distributed as gd
import gpt.train
from gpt.checkpoint import load_model, load_training_state
from gpt.config import GPTConfig
from gpt.data import TokenWindows
from gpt.model import GPTModel
from gpt.train import PretrainConfig, batch_indices, pretrain

from distributed_workers import finetune  # tests/distributed_workers.py: what torchrun runs below

ROOT = Path(__file__).resolve().parent.parent
RTOL_LOSS, ATOL_WEIGHTS = 1e-5, 1e-5
# Two processes of tests/distributed_workers.py (found as a module: this folder and the project on PYTHONPATH).
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
            "distributed_workers"]
WORKER_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


pytestmark = [pytest.mark.slow,  # starts process groups and torchrun
              pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="torch.distributed with gloo is not available")]


# ----------------------------------------------------------------------------- unit level

def test_shard_splits_a_batch_evenly_and_completely():
    batch = [17, 3, 42, 8, 5, 23]
    parts = [gd.shard(batch, rank, 3) for rank in range(3)]
    assert parts == [[17, 8], [3, 5], [42, 23]]  # interleaved, like DistributedSampler
    assert sorted(sum(parts, [])) == sorted(batch)
    assert gd.shard(batch, 0, 1) == batch  # one process: the whole batch
    with pytest.raises(ValueError, match="cannot be split evenly over 4 processes"):
        gd.shard(batch, 0, 4)


def test_single_process_helpers_are_no_ops():
    assert not gd.is_distributed() and gd.get_rank() == 0 and gd.get_world_size() == 1 and gd.is_main_process()
    assert gd.all_reduce_mean(2.5) == 2.5 and gd.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    model = torch.nn.Linear(2, 2)
    assert gd.wrap_model(model, torch.device("cpu")) is model and gd.unwrap(model) is model
    gd.barrier()
    gd.cleanup()


def test_init_distributed_without_torchrun_changes_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert gd.init_distributed(torch.device("cpu")) == torch.device("cpu")
    assert not gd.is_distributed()


def test_init_distributed_rejects_a_bad_environment(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        gd.init_distributed(torch.device("cpu"))
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK='zero' is not an integer"):
        gd.init_distributed(torch.device("cpu"))


# ----------------------------------------------------------------------------- DDP in this process

def _synthetic_windows(n_windows: int = 24, length: int = 16, seed: int = 0) -> TokenWindows:
    g = torch.Generator().manual_seed(seed)
    return TokenWindows(torch.randint(0, 50257, (n_windows * length + 1,), generator=g), length)


def test_ddp_path_with_grad_accumulation_syncs_once_per_step(tmp_path, monkeypatch):
    """DDP's code path in this process (a gloo group of one): gradients are all-reduced only in
    the last micro-batch's backward (no_sync before it), counted with a DDP communication hook;
    and DDP of one process gives exactly the weights of plain training."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    train, val = _synthetic_windows(), _synthetic_windows(8, seed=1)
    cfg = dict(max_steps=3, batch_size=4, warmup_steps=1, eval_every=3, eval_batches=1, save_every=3, seed=5)
    calls = []

    def counting_wrap(model, device):
        ddp = gd.wrap_model(model, device)
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)

        def hook(state, bucket):
            calls.append(bucket.index())
            return allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, hook)
        return ddp

    def run(out, accum):
        torch.manual_seed(0)
        model = GPTModel(GPTConfig.from_preset("gpt-tiny", context_length=16, drop_rate=0.0))
        calls.clear()
        pretrain(model, train, val, PretrainConfig(grad_accum=accum, **cfg), tmp_path / out)
        return model, len(calls)

    plain, _ = run("plain", accum=2)  # before the process group exists: no DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(gpt.train, "wrap_model", counting_wrap)
        ddp_model, syncs_accum2 = run("a", accum=2)
        _, syncs_accum1 = run("b", accum=1)
        monkeypatch.setattr(gpt.train, "sync_gradients", lambda model, sync: gd.sync_gradients(model, True))
        _, syncs_without_no_sync = run("c", accum=2)
    finally:
        dist.destroy_process_group()
    assert syncs_accum2 == syncs_accum1 > 0  # 2 micro-batches per step, still one sync per bucket per step
    assert syncs_without_no_sync == 2 * syncs_accum1  # the control: without no_sync, twice as many
    for (name, a), b in zip(plain.state_dict().items(), ddp_model.state_dict().values()):
        assert torch.equal(a, b), name
    # Saved without DDP's "module." prefix: the checkpoint loads into a plain GPTModel.
    assert all(not k.startswith("module.") for k in load_training_state(tmp_path / "a" / "train_state.pt")["model"])


# ----------------------------------------------------------------------------- two processes

# scripts/pretrain.py's main() under torchrun, recording the training windows each rank reads.
ARGS = ["--quick", "--max-steps", "6", "--batch-size", "4", "--eval-every", "3", "--drop-rate", "0",
        "--device", "cpu", "--threads", "1", "--no-resume"]


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    cmd = [*TORCHRUN, "record", "scripts.pretrain",
           str(tmp_path / "reads-rank{rank}.json"), *ARGS, "--grad-accum", "2", "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=WORKER_ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Only rank 0 prints: the header line and the final line appear once.
    assert proc.stdout.count("gpt-tiny: 1,635,552 parameters") == 1
    assert "x 2 processes (2 windows each)" in proc.stdout
    assert proc.stdout.count("final train loss") == 1
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["loss.png", "model.safetensors", "train_state.pt"]

    # One process, global batch 4 in one micro-batch, in this process.
    threads = torch.get_num_threads()
    try:
        from scripts.pretrain import main

        history = main([*ARGS, "--out", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)

    # Each rank read its own half of every micro-batch: rank r got batch_indices(...)[r::2].
    n_windows = 72  # The Verdict's training 90 % in windows of 64 tokens (the script prints it)
    assert f"{n_windows} training windows" in proc.stdout
    cfg = PretrainConfig(max_steps=6, batch_size=4, grad_accum=2, seed=123)
    reads = [json.loads((tmp_path / f"reads-rank{r}.json").read_text()) for r in range(2)]
    for rank in range(2):
        expected = [0]  # pretrain reads window 0 once for its length
        for step in range(6):
            for micro in range(2):
                expected += batch_indices(step, micro, n_windows, cfg)[rank::2]
        assert reads[rank] == expected
    assert not set(reads[0][1:5]) & set(reads[1][1:5])  # different windows in the same step

    ddp = load_training_state(tmp_path / "ddp" / "train_state.pt")
    assert ddp["world_size"] == 2 and len(ddp["torch_rng_per_rank"]) == 2
    assert ddp["history"]["steps"] == history.steps == [3, 6]
    assert ddp["history"]["train_loss"] == pytest.approx(history.train_loss, rel=RTOL_LOSS)
    assert ddp["history"]["val_loss"] == pytest.approx(history.val_loss, rel=RTOL_LOSS)
    a, b = load_model(tmp_path / "ddp" / "model.safetensors"), load_model(tmp_path / "one" / "model.safetensors")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=ATOL_WEIGHTS, msg=name)
    # Training happened (equal untrained models would pass the comparison too).
    torch.manual_seed(123)
    untrained = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0))
    assert (a.trf_blocks[0].att.W_query.weight - untrained.trf_blocks[0].att.W_query.weight).abs().max() > 1e-3


# ----------------------------------------------------------------------------- fine-tuning, two processes

def test_two_process_lora_finetune_equals_one_process(tmp_path):
    """distributed_workers.finetune (LoRA on a small random GPT, DDP-wrapped, sharded loaders) under torchrun
    and in this one process: the same history and the same LoRA weights."""
    cmd = [*TORCHRUN, "finetune", str(tmp_path / "two.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=WORKER_ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finetune(str(tmp_path / "one.json"))  # one process, in this one

    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    h1, h2 = one["history"], two["history"]
    assert h1["step"] == h2["step"] == [6, 12]  # 2 epochs of 48 / 8 = 6 global batches, a new order each
    assert h1["examples_seen"] == h2["examples_seen"] == [48, 96]
    assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=RTOL_LOSS)
    assert h1["val_loss"] == pytest.approx(h2["val_loss"], rel=RTOL_LOSS)
    assert h1["val_accuracy"] == h2["val_accuracy"]  # over all 37 validation messages, from both ranks' shares
    assert set(one["weights"]) == set(two["weights"]) and any("lora_A" in k for k in one["weights"])
    for name in one["weights"]:
        a, b = torch.tensor(one["weights"][name]), torch.tensor(two["weights"][name])
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL_WEIGHTS, msg=name)
    # It learned something (equal untrained adapters would pass too): B started at zero.
    assert max(torch.tensor(w).abs().max().item() for k, w in one["weights"].items() if "lora_B" in k) > 1e-3


def test_sharded_batch_sampler_gives_each_rank_its_share_of_the_same_batches():
    batches = [[4, 1, 7, 0], [2, 6, 3, 5], [8]]
    assert [list(gd.ShardedBatchSampler(batches[:2], rank=r, world_size=2)) for r in range(2)] == [
        [[4, 7], [2, 3]], [[1, 0], [6, 5]]]
    with pytest.raises(ValueError, match="a batch of 1 examples cannot be split evenly over 2 processes"):
        list(gd.ShardedBatchSampler(batches, rank=0, world_size=2))
    # Evaluation: uneven shares allowed, an empty share skipped.
    assert list(gd.ShardedBatchSampler(batches, rank=1, world_size=2, even=False)) == [[1, 0], [6, 5]]
    assert list(gd.ShardedBatchSampler(batches, rank=0, world_size=2, even=False)) == [[4, 7], [2, 3], [8]]


FINETUNE_SCRIPT = ROOT / "scripts" / "finetune_spam.py"


def test_finetune_script_under_torchrun_equals_one_process(tmp_path):
    """The chapter script itself, `torchrun --nproc_per_node=2 scripts/finetune_spam.py --quick`,
    against `python scripts/finetune_spam.py --quick`: same accuracies, losses and adapter."""
    from safetensors.torch import load_file

    args = ["--quick", "--threads", "1", "--no-progress", "--device", "cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(FINETUNE_SCRIPT), *args, "--out", str(tmp_path / "two"),
           "--result-json", str(tmp_path / "two.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("accuracy: train") == 1  # only rank 0 prints
    from scripts.finetune_spam import main

    main([*args, "--out", str(tmp_path / "one"), "--result-json", str(tmp_path / "one.json")])
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    for split in ("train", "val", "test"):
        assert one[f"{split}_accuracy"] == two[f"{split}_accuracy"]
        assert one[f"{split}_loss"] == pytest.approx(two[f"{split}_loss"], rel=RTOL_LOSS)
    assert one["history"]["train_loss"] == pytest.approx(two["history"]["train_loss"], rel=RTOL_LOSS)
    a, b = load_file(tmp_path / "one" / "adapter.safetensors"), load_file(tmp_path / "two" / "adapter.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=ATOL_WEIGHTS, msg=name)
