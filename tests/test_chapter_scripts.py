"""The chapter scripts (scripts/ch01_tokens.py, ch02_attention.py, ch03_gpt_model.py, ch06_lora_layers.py)
run end to end with tiny settings and print/write the chapters' real numbers: GPT-2 token ids, the SMS
length statistics, attention weights equal to an explicit softmax, fused == separate, the 163M / 124M
parameter counts, LoRA trainable counts on a model and on paper, merge/unmerge equality."""

import json
import math
from pathlib import Path

import pytest
import torch
from importlib import import_module

pytestmark = pytest.mark.slow  # runs every chapter script end to end (their counts: tests/test_taught_counts.py)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return Path(path).read_bytes()[:8] == PNG_MAGIC


ch01 = import_module("scripts.ch01_tokens")
ch02 = import_module("scripts.ch02_attention")
ch03 = import_module("scripts.ch03_gpt_model")
ch06 = import_module("scripts.ch06_lora_layers")


# ----------------------------------------------------------------------------- chapter 1

def test_ch01_encodes_with_gpt2_ids_and_plots_sms_lengths(tmp_path, capsys):
    result = ch01.main(["Hello, world. Is this-- a test?", "Akwirw ier", "--out", str(tmp_path)])
    first, second = result["encoded"]
    assert first["ids"] == [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]
    assert first["pieces"][:3] == ["'Hello'", "','", "' world'"]
    assert second["ids"] == [33901, 86, 343, 86, 220, 959]  # the book's unknown-word example
    assert result["reference_ids_ok"] is True and result["vocab_size"] == 50_257
    ham, spam = result["sms_lengths"]["ham"], result["sms_lengths"]["spam"]
    assert (ham["messages"], spam["messages"]) == (4_827, 747)
    assert (ham["max"], spam["max"]) == (257, 68)  # one ham message is longer than gpt-mini's 256-token context
    assert (ham["median"], spam["median"]) == (15.0, 43.0)
    assert _is_png(tmp_path / "01_sms_token_lengths.png")
    assert json.loads((tmp_path / "results.json").read_text())["encoded"][0]["ids"][0] == 15496
    assert "15496:'Hello'" in capsys.readouterr().out


def test_ch01_special_token_and_decode(tmp_path):
    plain = ch01.main(["a <|endoftext|> b", "--no-plot", "--out", str(tmp_path)])
    special = ch01.main(["a <|endoftext|> b", "--special", "--no-plot", "--out", str(tmp_path)])
    assert special["encoded"][0]["ids"] == [64, 220, 50256, 275]
    assert 50256 not in plain["encoded"][0]["ids"] and len(plain["encoded"][0]["ids"]) == 9  # ordinary text
    assert ch01.main(["--decode", "15496", "11", "995", "--no-plot", "--out", str(tmp_path)])["decoded"] == "Hello, world"


def test_ch01_bad_ids_are_errors(tmp_path):
    with pytest.raises(ValueError, match="integer token ids"):
        ch01.main(["--decode", "hello", "--no-plot", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match=r"\[0, 50257\)"):
        ch01.main(["--decode", "50257", "--no-plot", "--out", str(tmp_path)])


# ----------------------------------------------------------------------------- chapter 2

def test_ch02_attention_weights_fused_equality_and_heatmap(tmp_path):
    text = "Your journey starts with one step"
    result = ch02.main(["--quick", "--text", text, "--layer", "1", "--head", "2", "--repeats", "1",
                        "--out", str(tmp_path)])
    assert result["ids"] == [7120, 7002, 4940, 351, 530, 2239]
    assert "".join(result["tokens"]) == text
    w = torch.tensor(result["weights"])  # (T, T)
    assert w.shape == (6, 6)
    torch.testing.assert_close(w.sum(dim=-1), torch.ones(6), rtol=0, atol=1e-5)
    assert torch.equal(w.triu(diagonal=1), torch.zeros(6, 6))  # causal: nothing above the diagonal
    assert w[0, 0] == pytest.approx(1.0, abs=1e-6)  # the first token can only attend to itself
    assert result["fused_max_abs_diff"] <= 1e-5
    assert set(result["timing_ms"]) == {"separate", "fused"} and all(t > 0 for t in result["timing_ms"].values())
    assert _is_png(tmp_path / "02_attention_heatmap.png")


def test_ch02_identity_trick_equals_explicit_softmax():
    """gpt.attention.attention_weights reads the weights out of causal_attention by attending with the
    identity as values; compare with softmax(q k^T / sqrt(hd)) + causal mask written out here."""
    from gpt import GPTConfig, GPTModel
    from gpt.attention import attention_weights

    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)).eval()
    ids = torch.randint(0, 50257, (1, 7))
    weights = attention_weights(model, ids, layer=1)  # (H, T, T)
    with torch.no_grad():
        x = model.trf_blocks[0](model.tok_emb(ids) + model.pos_emb(torch.arange(7)))
        att = model.trf_blocks[1].att
        q, k, _ = att.project_qkv(model.trf_blocks[1].norm1(x))  # (1, H, T, hd)
        scores = (q @ k.transpose(-2, -1))[0] / math.sqrt(att.head_dim)  # (H, T, T)
        scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
        expected = torch.softmax(scores, dim=-1)
    assert weights.shape == (4, 7, 7)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)


def test_ch02_bad_layer_or_head(tmp_path):
    with pytest.raises(ValueError, match="--layer"):
        ch02.main(["--quick", "--layer", "2", "--out", str(tmp_path)])  # gpt-tiny has blocks 0 and 1
    with pytest.raises(ValueError, match="--head"):
        ch02.main(["--quick", "--head", "4", "--out", str(tmp_path)])


# ----------------------------------------------------------------------------- chapter 3

def test_ch03_quick_counts_tying_generation_and_plot(tmp_path):
    result = ch03.main(["--quick", "--out", str(tmp_path)])
    assert result["parameters"] == 1_635_552  # gpt-tiny, tied head
    assert sum(result["by_kind"].values()) == result["parameters"]
    assert result["by_kind"]["output head"] == 0  # tied: counted with the embeddings
    assert result["gpt2_small_tying"] == {"untied, no qkv bias (book)": 163_009_536, "tied, no qkv bias": 124_412_160,
                                          "tied + qkv bias (released)": 124_439_808}
    gen = result["generation"]
    assert gen["model"].startswith("untrained gpt-tiny")
    assert gen["greedy"].startswith("Every effort moves you") and len(gen["greedy"]) > len("Every effort moves you")
    assert _is_png(tmp_path / "03_parameters_by_module.png")


def test_ch03_gpt2_small_by_module(tmp_path):
    book = ch03.main(["--preset", "gpt2-small", "--no-generate", "--out", str(tmp_path)])
    assert book["parameters"] == 163_009_536
    assert book["by_kind"] == {"embeddings": 50_257 * 768 + 1_024 * 768, "attention": 12 * 2_360_064,
                               "feed-forward": 12 * 4_722_432, "layer norms": (12 * 4 + 2) * 768,
                               "output head": 50_257 * 768}
    released = ch03.main(["--preset", "gpt2-medium", "--released", "--no-generate", "--out", str(tmp_path)])
    assert released["parameters"] == 354_823_168


def test_ch03_generates_reproducibly_from_a_saved_model(tmp_path):
    from gpt import GPTConfig, GPTModel
    from gpt.checkpoint import save_model

    torch.manual_seed(1)
    path = save_model(GPTModel(GPTConfig.from_preset("gpt-tiny")), tmp_path / "tiny" / "model.safetensors")
    a = ch03.main(["--quick", "--model", str(path.parent), "--out", str(tmp_path / "a")])["generation"]
    b = ch03.main(["--quick", "--model", str(path.parent), "--out", str(tmp_path / "b")])["generation"]
    assert a == b and a["model"] == str(path.parent)


# ----------------------------------------------------------------------------- chapter 6

def test_ch06_prices_gpt2_small_query_value(tmp_path):
    result = ch06.main(["--no-merge", "--out", str(tmp_path)])
    p = result["pricing"]
    assert p["trainable"] == p["on_paper"] == p["lora_params"] == 294_912  # 12 x 2 x 8 x (768 + 768)
    assert p["frozen"] == 163_009_536 and p["layers"] == 24
    fused = ch06.main(["--no-merge", "--attention", "fused", "--out", str(tmp_path)])["pricing"]
    assert fused["trainable"] == 294_912 and fused["layers"] == 12  # one fused qkv per block, same count


def test_ch06_prices_the_spam_recipe_on_gpt_mini(tmp_path):
    result = ch06.main(["--preset", "gpt-mini", "--targets", "all-linear", "--rank", "16", "--head-classes", "2",
                        "--no-merge", "--out", str(tmp_path)])
    p = result["pricing"]
    # 6 blocks x (4 x 16 x 512 + 2 x 16 x 1,280) + a 2-class head with bias (256 x 2 + 2)
    assert p["trainable"] == p["on_paper"] == 6 * (4 * 16 * 512 + 2 * 16 * 1_280) + 514 == 442_882
    assert p["modules_to_save"] == 514


def test_ch06_quick_merge_unmerge_and_scales(tmp_path):
    result = ch06.main(["--quick", "--targets", "all-linear", "--rank", "4", "--out", str(tmp_path)])
    m = result["merge"]
    assert m["layers"] == 2 * 6
    assert m["lora_changes_logits_by"] > 1e-2  # the random "trained" B really changes the model
    assert m["merged_vs_unmerged_max_abs_diff"] < 1e-4
    assert m["unmerged_again_vs_unmerged_max_abs_diff"] < 1e-4
    assert m["weights_restored_max_abs_diff"] < 1e-6
    s = result["scales"]
    i16 = s["ranks"].index(16)
    assert (s["alpha/r"][i16], s["alpha/sqrt(r)"][i16], s["alpha"][i16]) == (1.0, 4.0, 16.0)
    assert _is_png(tmp_path / "06_scale_vs_rank.png")


def test_ch06_bad_head_classes(tmp_path):
    with pytest.raises(ValueError, match="head-classes"):
        ch06.main(["--quick", "--head-classes", "1", "--out", str(tmp_path)])


# ----------------------------------------------------------------------------- chapter 4: continued pre-training

def test_pretrain_init_continues_from_a_shipped_checkpoint_and_records_its_history(tmp_path):
    """--init starts from a shipped checkpoint instead of random weights: ten steps into the second run the validation
    loss is already below where the first run ended (10.05 vs 10.40 nats here), and the new manifest adds up the
    tokens and keeps the first run's command, corpus and checksum, and the commands that remake it."""
    import hashlib

    pretrain = import_module("scripts.pretrain")
    first = pretrain.main(["--quick", "--out", str(tmp_path / "run1"), "--ship", str(tmp_path / "ship1")])
    second = pretrain.main(["--quick", "--init", str(tmp_path / "ship1"), "--out", str(tmp_path / "run2"),
                            "--ship", str(tmp_path / "ship2")])
    m1 = json.loads((tmp_path / "ship1" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "ship2" / "manifest.json").read_text())
    assert m2["tokens_seen"] == m1["tokens_seen"] + second.tokens[-1] == 2 * 10_240  # 20 steps x 8 windows x 64 tokens
    assert m2["continued_from"]["sha256"] == m1["sha256"] == hashlib.sha256(
        (tmp_path / "ship1" / "model.safetensors").read_bytes()).hexdigest()
    assert m2["continued_from"]["command"] == m1["command"] and m2["config"] == m1["config"]
    assert "--init" in m2["command"]
    # the commands that remake each checkpoint, in order, and the first stage's corpus
    assert m1["remake"] == [m1["command"]] and m2["remake"] == [m1["command"], m2["command"]]
    assert m2["continued_from"]["corpus"] == m1["corpus"]
    assert second.val_loss[0] < first.val_loss[-1]  # it continued: a restart from random weights would be at ~10.6
    with pytest.raises(FileNotFoundError, match="--init .*no checkpoint there"):
        pretrain.main(["--quick", "--init", str(tmp_path / "nothing"), "--out", str(tmp_path / "run3")])
    assert not (tmp_path / "run3").exists()


def test_pretrain_sms_corpus_is_the_unlabelled_messages_outside_the_evaluation_split():
    """--corpus sms (gpt-mini's second stage): the SMS messages outside the classifier's validation and test split,
    90 % for training (repeated), 10 % held out; no novel, and no validation or test message anywhere."""
    from classify.data import spam_splits, unlabelled_sms_for_pretraining

    from gpt.corpus import build_corpus

    sms = unlabelled_sms_for_pretraining()
    train, val, described = build_corpus("sms", sms_repeat=6, seed=123, sms=sms)
    assert len(sms) == 5024 and len(val) == 503 and len(train) == 6 * 4521
    assert sorted(set(train) | set(val)) == sorted(set(sms))
    evaluation = {ex.text for ex in spam_splits()["val"] + spam_splits()["test"]}
    assert not evaluation & (set(train) | set(val))
    assert described == ["5024 SMS messages not in the spam val/test split (4521 train x6, 503 val)"]
    novels_train, _, novels_described = build_corpus("novels+sms", sms_repeat=4, seed=123, sms=sms)
    assert len(novels_described) == 11 and len(novels_train) == 10 + 4 * 4521


def test_shipped_gpt_mini_matches_its_manifest():
    """data/gpt-mini: the file is the one the manifest names, its config and parameter count are the manifest's,
    and the manifest gives both stages' commands in the order that remakes it."""
    import hashlib

    from gpt.checkpoint import load_model
    from gpt.params import count_parameters

    folder = Path(__file__).resolve().parent.parent / "data" / "gpt-mini"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    model = load_model(folder / "model.safetensors")
    assert model.cfg.to_dict() == manifest["config"]
    assert count_parameters(model) == manifest["parameters"] == 17_665_792
    stage1, stage2 = manifest["remake"]
    assert stage1 == manifest["continued_from"]["command"] and stage2 == manifest["command"]
    assert "--ship data/gpt-mini" in stage1 and "--init data/gpt-mini --corpus sms" in stage2
    assert manifest["tokens_seen"] == manifest["continued_from"]["tokens_seen"] + manifest["steps"] * 8 * 256
