"""apply_lora on whole models: targets, freezing, training steps, named adapters, the report."""

import pytest
import torch
from torch import nn

from gpt import GPTConfig, GPTModel, convert_attention, count_parameters
from lora import (TARGET_ALIASES, FusedQKVWithLoRA, LinearWithLoRA, LoraConfig, ModulesToSaveWrapper, active_adapter,
                  add_adapter, apply_lora, delete_adapter, disable_adapters, enable_adapters, lora_parameter_report,
                  lora_state_dict, merge_lora, registry_of, replace_linear_with_lora, set_active_adapter,
                  unmerge_lora)
from conftest import make_tiny_gpt


def tiny(attention="separate", **overrides):
    # seed=None: two calls in one test draw two different models, from the test's seed (conftest.py)
    return make_tiny_gpt(None, attention=attention, qkv_bias=True, drop_rate=0.0, **overrides).eval()


def classifier(attention="separate"):
    model = tiny(attention)
    model.out_head = nn.Linear(32, 2)  # a new 2-class head, as in the spam classifier
    return model


def randomise_lora(model, std=0.3):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)


def tokens(T=12, b=2, seed=0):
    return torch.randint(0, 50257, (b, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention", ["separate", "fused"])
@pytest.mark.parametrize("targets", [("query", "value"), ("all-linear",), ("key", "out_proj", "ff_in", "ff_out"),
                                     ("query", "key", "value", "ff", "out_head")])
def test_fresh_adapter_leaves_output_exactly_equal(attention, targets):
    model = tiny(attention)
    x = tokens()
    base = model(x)
    apply_lora(model, LoraConfig(rank=4, alpha=8, targets=targets))
    assert torch.equal(model(x), base)


def test_apply_lora_kwargs_form_and_what_is_wrapped():
    model = classifier()
    apply_lora(model, rank=4, alpha=4, targets="all-linear", modules_to_save=["out_head"])
    blk = model.trf_blocks[0]
    for layer in (blk.att.W_query, blk.att.W_key, blk.att.W_value, blk.att.out_proj, *blk.ff.layers[::2]):
        assert isinstance(layer, LinearWithLoRA)
    # all-linear does NOT put LoRA on the new classification head; it is trained in full instead.
    assert isinstance(model.out_head, ModulesToSaveWrapper)
    assert isinstance(model.out_head.original_module, nn.Linear)
    assert model.out_head.out_features == 2  # attributes read through the wrapper
    with pytest.raises(TypeError, match="either a LoraConfig or keyword"):
        apply_lora(tiny(), LoraConfig(), rank=4)


def test_all_linear_never_wraps_the_output_head():
    model = tiny()
    apply_lora(model, LoraConfig(rank=2, targets="all-linear"))
    assert type(model.out_head) is nn.Linear
    assert model.out_head.weight is model.tok_emb.weight  # tie untouched


def test_fused_layout_gets_one_fused_wrapper_with_the_right_switches():
    model = tiny("fused")
    apply_lora(model, LoraConfig(rank=2, targets=("query", "value")))
    qkv = model.trf_blocks[1].att.qkv
    assert isinstance(qkv, FusedQKVWithLoRA)
    assert qkv.lora["default"].enable == (True, False, True)
    model = tiny("fused")
    apply_lora(model, LoraConfig(rank=2, targets="all-linear"))
    assert model.trf_blocks[0].att.qkv.lora["default"].enable == (True, True, True)
    # The module name itself (PEFT style) is a plain LoRA on the whole qkv layer.
    model = tiny("fused")
    apply_lora(model, LoraConfig(rank=2, targets=["qkv"]))
    assert type(model.trf_blocks[0].att.qkv) is LinearWithLoRA


def test_module_name_suffix_targets():
    model = tiny()
    apply_lora(model, LoraConfig(rank=2, targets=["trf_blocks.1.att.W_query", "layers.2"]))
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LinearWithLoRA))
    assert wrapped == ["trf_blocks.0.ff.layers.2", "trf_blocks.1.att.W_query", "trf_blocks.1.ff.layers.2"]


def test_unknown_target_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown LoRA target 'querry'") as e:
        apply_lora(tiny(), LoraConfig(targets=("querry",)))
    for alias in TARGET_ALIASES:
        assert repr(alias) in str(e.value)


def test_target_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="LoRA target 'query' matched no module in Sequential"):
        apply_lora(nn.Sequential(nn.Linear(8, 8)), LoraConfig(rank=2, targets=("query",)))
    with pytest.raises(ValueError, match="matches trf_blocks.0.att, a MultiHeadAttention"):
        apply_lora(tiny(), LoraConfig(targets=("att",)))
    with pytest.raises(ValueError, match="modules_to_save entry 'classifier' matches no module"):
        apply_lora(tiny(), LoraConfig(modules_to_save=("classifier",)))
    with pytest.raises(ValueError, match="both a LoRA target and in modules_to_save"):
        apply_lora(classifier(), LoraConfig(targets=("out_head",), modules_to_save=("out_head",)))


def test_lora_applied_twice_is_an_error_and_leaves_the_model_alone():
    model = tiny()
    apply_lora(model, LoraConfig(rank=2))
    with pytest.raises(ValueError, match="already applied to this model"):
        apply_lora(model, LoraConfig(rank=2))
    with pytest.raises(ValueError, match="already has LoRA layers"):
        replace_linear_with_lora(model, 2, 2)
    # A rank too large for some layer: refused before anything is wrapped.
    fresh = tiny()
    with pytest.raises(ValueError, match=r"rank 40 is larger than min\(d_in=32, d_out=32\)"):
        apply_lora(fresh, LoraConfig(rank=40, targets="all-linear"))
    assert not any(isinstance(m, LinearWithLoRA) for m in fresh.modules())


def test_training_step_changes_only_lora_and_the_head():
    model = classifier()
    apply_lora(model, LoraConfig(rank=4, alpha=8, targets="all-linear", modules_to_save=["out_head"]))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora." in n or n.startswith("out_head.modules_to_save.") for n in trainable)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = tokens(), torch.tensor([0, 1])
    for _ in range(2):  # step 1 moves B (A's gradient is 0 while B = 0), step 2 moves A too
        loss = nn.functional.cross_entropy(model(x)[:, -1, :], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == trainable
    assert "out_head.original_module.weight" not in changed


def test_tied_output_head_with_lora_leaves_embedding_alone():
    model = tiny()  # out_head.weight is tok_emb.weight
    apply_lora(model, LoraConfig(rank=2, targets=("out_head",)))
    emb = model.tok_emb.weight.detach().clone()
    assert model.out_head.linear.weight is model.tok_emb.weight
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(tokens()).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    assert torch.equal(model.tok_emb.weight, emb)
    assert model.out_head.lora["default"].lora_B.abs().sum() > 0


def test_module_to_save_on_a_tied_head_is_an_untied_copy():
    model = tiny()
    apply_lora(model, LoraConfig(rank=2, targets=("query",), modules_to_save=("out_head",)))
    copy = model.out_head.modules_to_save["default"]
    assert copy.weight.data_ptr() != model.tok_emb.weight.data_ptr()
    emb = model.tok_emb.weight.detach().clone()
    with torch.no_grad():
        copy.weight.add_(1.0)
    assert torch.equal(model.tok_emb.weight, emb)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_separate_and_fused_models_with_lora_on_q_v_agree(qkv_bias):
    torch.manual_seed(1)
    sep = GPTModel(GPTConfig.from_preset("gpt-tiny", qkv_bias=qkv_bias, drop_rate=0.0)).eval()
    fused = convert_attention(sep, "fused")
    x = tokens(T=20)
    base = sep(x)
    cfg = LoraConfig(rank=4, alpha=8, targets=("query", "value"))
    apply_lora(sep, cfg)
    apply_lora(fused, cfg)
    randomise_lora(sep)
    with torch.no_grad():
        for i, blk in enumerate(sep.trf_blocks):
            q, v = blk.att.W_query.lora["default"], blk.att.W_value.lora["default"]
            target = fused.trf_blocks[i].att.qkv.lora["default"]
            target.lora_A.copy_(torch.cat([q.lora_A, v.lora_A], dim=1))
            target.lora_B.copy_(torch.stack([q.lora_B, v.lora_B]))
    logits = sep(x)
    assert (logits - base).abs().max() > 1e-3  # the adapters do change the output
    torch.testing.assert_close(fused(x), logits, rtol=0, atol=1e-6)
    assert count_parameters(sep, True) == count_parameters(fused, True) == 2 * 2 * 4 * (32 + 32)


def test_transformers_gpt2_with_c_attn_target():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                              vocab_size=100)).eval()
    x = torch.randint(0, 100, (2, 7))
    base = hf(x).logits
    apply_lora(hf, LoraConfig(rank=4, alpha=8, targets=["c_attn"]))
    assert sorted(n for n, m in hf.named_modules() if isinstance(m, LinearWithLoRA)) == \
        ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert torch.equal(hf(x).logits, base)
    assert count_parameters(hf, True) == 2 * 4 * (32 + 96)
    # Conv1D stores its weight (d_in, d_out) (PEFT: fan_in_fan_out): merging must not transpose.
    randomise_lora(hf)
    unmerged = hf(x).logits
    merge_lora(hf)
    torch.testing.assert_close(hf(x).logits, unmerged, rtol=0, atol=1e-5)
    # all-linear skips lm_head (transformers' output embedding) on a transformers model too.
    hf2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, n_positions=64,
                                                               vocab_size=100))
    apply_lora(hf2, LoraConfig(rank=2, targets="all-linear"))
    assert sorted(n.split(".", 3)[-1] for n, m in hf2.named_modules() if isinstance(m, LinearWithLoRA)) == \
        ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]


def test_replace_linear_with_lora_is_the_books_function():
    model = classifier()
    for p in model.parameters():
        p.requires_grad = False
    with pytest.warns(UserWarning, match="out_head"):  # r=4 on a 32 -> 2 head, as the book does at r=16
        replace_linear_with_lora(model, rank=4, alpha=4)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LinearWithLoRA)]
    assert len(wrapped) == 2 * 6 + 1 and "out_head" in wrapped
    assert count_parameters(model, True) == 2 * (4 * 4 * 64 + 2 * 4 * 160) + 4 * (32 + 2)
    # It freezes nothing by itself.
    unfrozen = tiny()
    replace_linear_with_lora(unfrozen, rank=2, alpha=2)
    assert unfrozen.tok_emb.weight.requires_grad


def test_named_adapters_switch_disable_delete():
    torch.manual_seed(0)
    model = classifier()
    x = tokens()
    base = model(x)
    apply_lora(model, LoraConfig(rank=2, alpha=4, targets=("query", "value"), modules_to_save=("out_head",)))
    add_adapter(model, "other", LoraConfig(rank=4, alpha=4, targets=("all-linear",), modules_to_save=("out_head",)))
    randomise_lora(model)
    with torch.no_grad():
        model.out_head.modules_to_save["other"].weight.normal_()
    assert active_adapter(model) == "default"
    # Only the active adapter is trainable.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default" in n for n in trainable)
    out_default = model(x)
    set_active_adapter(model, "other")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".other" in n for n in trainable)
    out_other = model(x)
    assert not torch.allclose(out_default, out_other)
    assert not torch.allclose(out_default, base)
    with disable_adapters(model):
        assert torch.equal(model(x), base)
    torch.testing.assert_close(model(x), out_other, rtol=0, atol=0)
    disable_adapters(model)
    assert torch.equal(model(x), base)
    enable_adapters(model)
    set_active_adapter(model, "default")
    assert torch.equal(model(x), out_default)
    with pytest.raises(ValueError, match="no LoRA adapter named 'nope'"):
        set_active_adapter(model, "nope")
    assert set(lora_state_dict(model, "default")) == {
        *(f"trf_blocks.{i}.att.{w}.{p}" for i in range(2) for w in ("W_query", "W_value")
          for p in ("lora_A", "lora_B")),
        "out_head.weight", "out_head.bias"}
    delete_adapter(model, "other")
    assert torch.equal(model(x), out_default)
    assert type(model.trf_blocks[0].ff.layers[0]) is nn.Linear  # unwrapped again
    delete_adapter(model, "default")
    assert type(model.out_head) is nn.Linear and type(model.trf_blocks[0].att.W_query) is nn.Linear
    assert torch.equal(model(x), base)


def test_parameter_report():
    model = classifier()
    apply_lora(model, LoraConfig(rank=2, targets=("query", "value"), modules_to_save=("out_head",)))
    report = lora_parameter_report(model, depth=1)
    lora = 2 * 2 * 2 * (32 + 32)
    head = 32 * 2 + 2
    assert report["lora"] == lora and report["modules_to_save"] == head
    assert report["trainable"] == lora + head == report["per_adapter"]["default"]
    assert report["total"] == report["trainable"] + report["frozen"]
    # The frozen base: tok_emb + pos_emb + blocks + final norm + the original head.
    assert report["frozen"] == count_parameters(classifier())
    assert report["per_module"]["trf_blocks"]["trainable"] == lora
    assert report["per_module"]["out_head"] == {"total": 2 * head, "trainable": head, "frozen": head}
    assert f"{report['trainable']:,}" in report["table"]


def test_lora_added_to_a_model_in_eval_mode_runs_no_dropout():
    model = tiny()  # in eval mode
    apply_lora(model, LoraConfig(rank=2, dropout=0.5, targets="all-linear", modules_to_save=("out_head",)))
    assert not any(m.training for m in model.modules())
    randomise_lora(model)
    x = tokens()
    assert torch.equal(model(x), model(x))
    model.train()
    assert all(m.training for m in model.modules())


# ---- Pinned by value: messages of each refusal, what reaches each layer, which adapter is active ----


def test_config_argument_refusals():
    """apply_lora / add_adapter take a LoraConfig or keyword arguments, not both and nothing else."""
    with pytest.raises(TypeError, match=r"^expected a LoraConfig, got dict$"):
        apply_lora(tiny(), {"rank": 2})
    model = tiny()
    apply_lora(model, LoraConfig(rank=2, targets=("query",)))
    with pytest.raises(TypeError, match=r"^pass either a LoraConfig or keyword arguments, not both \(got \['alpha', "
                                        r"'rank'\]\)$"):
        add_adapter(model, "b", LoraConfig(), rank=4, alpha=2)
    add_adapter(model, "b", rank=4, alpha=2, targets=("key",))  # the keyword form
    assert model.lora_adapters["b"] == LoraConfig(rank=4, alpha=2, targets=("key",))
    assert model.trf_blocks[0].att.W_key.lora["b"].lora_A.shape == (32, 4)


def test_what_the_config_gives_each_layer():
    """rank_pattern / alpha_pattern, dropout and scaling reach every branch; each wrapper knows its module
    name (used in its messages)."""
    model = tiny()
    apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.25, scaling="alpha", targets=("query", "value", "ff"),
                                 rank_pattern={"W_query": 2}, alpha_pattern={"W_value": 3}))
    att = model.trf_blocks[1].att
    q, v = att.W_query.lora["default"], att.W_value.lora["default"]
    ff = model.trf_blocks[1].ff.layers[0].lora["default"]
    assert (q.rank, q.scale, v.rank, v.scale, ff.rank, ff.scale) == (2, 8.0, 4, 3.0, 4, 8.0)
    assert q.dropout.p == v.dropout.p == ff.dropout.p == 0.25
    assert att.W_query.describe() == "trf_blocks.1.att.W_query"
    with pytest.raises(ValueError, match=r"^LoRA rank 33 is larger than min\(d_in=32, d_out=32\) = 32 for "
                                         r"trf_blocks\.1\.att\.W_query: "):
        att.W_query.add_adapter("big", rank=33, alpha=1)
    fused = tiny("fused")
    apply_lora(fused, LoraConfig(rank=4, alpha=8, targets=("query",)))
    assert fused.trf_blocks[0].att.qkv.describe() == "trf_blocks.0.att.qkv"


def _two_qkv_layers(d_in=64, d=16):
    # Two fused qkv projections named like GPTModel's (....att.qkv), d_in != d on purpose.
    blocks = []
    for _ in range(2):
        block = nn.Module()
        block.att = nn.Module()
        block.att.qkv = nn.Linear(d_in, 3 * d)
        blocks.append(block)
    return nn.Sequential(*blocks)


def test_rank_of_a_fused_projection_is_checked_per_slice_before_anything_changes():
    """A fused qkv projection d_in -> 3d holds three d_in -> d layers: rank <= min(d_in, d) = 16 here. A rank
    too large for the second layer only is refused before the first is wrapped."""
    model = _two_qkv_layers()
    with pytest.raises(ValueError, match=r"^LoRA rank 20 is larger than min\(d_in=64, d_out=16\) = 16 "
                                         r"for 1\.att\.qkv: "):
        apply_lora(model, LoraConfig(rank=8, targets=("query",), rank_pattern={"1.att.qkv": 20}))
    assert type(model[0].att.qkv) is nn.Linear and type(model[1].att.qkv) is nn.Linear
    assert registry_of_model_is_empty(model)
    apply_lora(model, LoraConfig(rank=8, targets=("query",), rank_pattern={"1.att.qkv": 16}))  # rank = d fits
    assert model[1].att.qkv.lora["default"].lora_B.shape == (1, 16, 16)
    assert model[0].att.qkv.lora["default"].lora_B.shape == (1, 8, 16)


def registry_of_model_is_empty(model):
    registry = registry_of(model)
    return len(registry) == 0 and registry.active is None


def test_check_rank_false_lets_a_large_rank_through():
    """check_rank=False (load_adapter of the book's adapters) skips the rank <= min(d_in, d_out) check."""
    model = tiny()
    add_adapter(model, "big", LoraConfig(rank=40, alpha=40, targets=("query",)), check_rank=False)
    assert model.trf_blocks[0].att.W_query.lora["big"].lora_A.shape == (32, 40)
    with pytest.raises(ValueError, match=r"^LoRA rank 40 is larger than min\(d_in=32, d_out=32\) = 32 for "
                                         r"trf_blocks\.0\.att\.W_query: "):
        add_adapter(tiny(), "big", LoraConfig(rank=40, alpha=40, targets=("query",)))


def test_second_adapters_on_fused_and_whole_qkv_layers():
    """A fused qkv layer takes more fused adapters (with their own switches), but not a whole-layer LoRA,
    and a whole-layer LoRA on qkv takes no fused one; an adapter name already on a layer is refused."""
    model = tiny("fused")
    apply_lora(model, LoraConfig(rank=2, targets=("query", "value")))
    add_adapter(model, "k", LoraConfig(rank=2, targets=("key",)))
    assert model.trf_blocks[0].att.qkv.lora["k"].enable == (False, True, False)
    with pytest.raises(ValueError, match=r"^trf_blocks\.0\.att\.qkv already carries LoRA as a FusedQKVWithLoRA; "
                                         r"another adapter cannot put a whole-layer LoRA on it$"):
        add_adapter(model, "whole", LoraConfig(rank=2, targets=["qkv"]))
    whole = tiny("fused")
    apply_lora(whole, LoraConfig(rank=2, targets=["qkv"]))
    with pytest.raises(ValueError, match=r"^trf_blocks\.0\.att\.qkv already carries LoRA as a LinearWithLoRA; "
                                         r"another adapter cannot put a fused LoRA on it$"):
        add_adapter(whole, "q", LoraConfig(rank=2, targets=("query",)))
    # A layer wrapped by hand into a model that already has a registry: its adapter name is not in the
    # model's registry, but the layer refuses it.
    by_hand = tiny()
    apply_lora(by_hand, LoraConfig(rank=2, targets=("query",)))
    by_hand.trf_blocks[0].att.W_value = LinearWithLoRA(by_hand.trf_blocks[0].att.W_value, rank=2, alpha=2,
                                                       adapter_name="extra")
    with pytest.raises(ValueError, match=r"^LoRA adapter 'extra' is already applied to trf_blocks\.0\.att\.W_value "
                                         r"\(LoRA applied twice\)$"):
        add_adapter(by_hand, "extra", LoraConfig(rank=2, targets=("value",)))


def test_modules_to_save_follow_the_models_active_adapter():
    """Each adapter's copy of the head runs when that adapter is active (the copy shares the model's
    registry): a copy with zero weights and bias (1, -1) gives exactly those logits; disabled: the base."""
    model = classifier()
    x = tokens()
    base = model(x)
    apply_lora(model, LoraConfig(rank=2, targets=("query",), modules_to_save=("out_head",)))
    add_adapter(model, "other", LoraConfig(rank=2, targets=("query",), modules_to_save=("out_head",)))
    with torch.no_grad():
        head = model.out_head.modules_to_save["other"]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([1.0, -1.0]))
    assert torch.equal(model(x), base)  # "default" active, B = 0, its head copy = the original head
    set_active_adapter(model, "other")
    assert torch.equal(model(x), torch.tensor([1.0, -1.0]).expand_as(base))
    with disable_adapters(model):
        assert torch.equal(model(x), base)


def test_disable_adapters_block_lets_errors_through_and_enable_restores():
    """The `with disable_adapters(model)` block re-enables the adapters on exit and does not swallow an
    error raised inside it; enable_adapters sets disabled back to False (shown in each layer's repr)."""
    model = tiny()
    apply_lora(model, LoraConfig(rank=2, targets=("query",)))
    with pytest.raises(RuntimeError, match="inside the block"):
        with disable_adapters(model):
            raise RuntimeError("inside the block")
    layer = model.trf_blocks[0].att.W_query
    assert layer.extra_repr() == "active_adapter='default', merged=[], disabled=False"
    disable_adapters(model)
    assert layer.extra_repr() == "active_adapter='default', merged=[], disabled=True"
    enable_adapters(model)
    assert layer.extra_repr() == "active_adapter='default', merged=[], disabled=False"


def test_delete_adapter_keeps_or_moves_the_active_adapter():
    """Deleting a non-active adapter keeps the active one; deleting the active one activates the first
    remaining name in sorted order; deleting the last leaves none (None), and a new adapter is active
    again. A merged adapter cannot be deleted."""
    model = tiny()
    for name in ("c", "a", "b"):
        add_adapter(model, name, LoraConfig(rank=2, targets=("query",)))
    set_active_adapter(model, "b")
    delete_adapter(model, "c")
    assert active_adapter(model) == "b"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"trf_blocks.{i}.att.W_query.lora.b.{w}" for i in range(2) for w in ("lora_A", "lora_B")}
    merge_lora(model)
    with pytest.raises(ValueError, match=r"^adapter 'b' is merged into the base weights; unmerge_lora first$"):
        delete_adapter(model, "b")
    unmerge_lora(model)
    delete_adapter(model, "b")
    assert active_adapter(model) == "a"
    assert model.trf_blocks[0].att.W_query.lora["a"].lora_A.requires_grad
    delete_adapter(model, "a")
    assert active_adapter(model) is None and type(model.trf_blocks[0].att.W_query) is nn.Linear
    add_adapter(model, "new", LoraConfig(rank=2, targets=("query",)))
    assert active_adapter(model) == "new"
    randomise_lora(model)
    base = model.trf_blocks[0].att.W_query.linear
    h = torch.randn(3, 32)
    assert not torch.allclose(model.trf_blocks[0].att.W_query(h), base(h))  # its branch runs


def test_delete_adapter_keeps_the_other_adapters_module_copy():
    """With two adapters saving out_head, deleting one keeps the other's own (trained) copy in use; deleting
    the last puts the original head back."""
    model = classifier()
    x = tokens()
    apply_lora(model, LoraConfig(rank=2, targets=("query",), modules_to_save=("out_head",)))
    add_adapter(model, "other", LoraConfig(rank=2, targets=("query",), modules_to_save=("out_head",)))
    with torch.no_grad():
        model.out_head.modules_to_save["default"].bias.add_(5.0)
    with_copy = model(x)
    delete_adapter(model, "other")
    assert isinstance(model.out_head, ModulesToSaveWrapper) and list(model.out_head.modules_to_save) == ["default"]
    assert torch.equal(model(x), with_copy)
    delete_adapter(model, "default")
    assert type(model.out_head) is nn.Linear
    torch.testing.assert_close(model(x), with_copy - 5.0, rtol=0, atol=1e-5)
