"""classify/model.py: the 2-class head (untying a tied one), the last-real-token gather, and which
parameters full / last-block / head-only fine-tuning train."""

import pytest
import torch
from torch import nn

from classify.model import add_classification_head, class_logits, set_trainable
from gpt import GPTConfig, GPTModel, count_parameters, tied_parameters

# gpt-tiny: tok_emb 50,257 x 32 = 1,608,224; pos_emb 64 x 32 = 2,048; per block 12,608
# (W_query/W_key/W_value 3 x 1,024, out_proj 1,056, ff 4,224 + 4,128, two norms 128); final_norm 64;
# the tied out_head adds nothing.
TINY_TOTAL = 1_608_224 + 2_048 + 2 * 12_608 + 64  # 1,635,552
HEAD = 32 * 2 + 2  # Linear(32, 2) with bias


class PositionModel(nn.Module):
    """A fake model whose logits say where they come from: logits[b, t] = (t, 100 b)."""

    def forward(self, input_ids):
        b, T = input_ids.shape
        t = torch.arange(T).float().expand(b, T)
        rows = 100 * torch.arange(b).float().unsqueeze(1).expand(b, T)
        return torch.stack([t, rows], dim=-1)  # (b, T, 2)


def test_class_logits_reads_the_last_real_token():
    ids = torch.zeros(3, 5, dtype=torch.long)
    out = class_logits(PositionModel(), ids, torch.tensor([3, 1, 5]))
    assert out.tolist() == [[2.0, 0.0], [0.0, 100.0], [4.0, 200.0]]
    assert class_logits(PositionModel(), ids).tolist() == [[4.0, 0.0], [4.0, 100.0], [4.0, 200.0]]  # no lengths: last column


@pytest.mark.parametrize("lengths", [[0, 1, 1], [6, 1, 1], [1, 1]])
def test_class_logits_rejects_bad_lengths(lengths):
    with pytest.raises(ValueError, match="lengths"):
        class_logits(PositionModel(), torch.zeros(3, 5, dtype=torch.long), torch.tensor(lengths))


def test_head_replacement_unties_and_counts():
    model = GPTModel(GPTConfig.from_preset("gpt-tiny"))
    assert count_parameters(model) == TINY_TOTAL
    assert tied_parameters(model) == [["tok_emb.weight", "out_head.weight"]]
    emb_before = model.tok_emb.weight.detach().clone()
    head = add_classification_head(model, num_classes=2)
    assert head is model.out_head
    assert tuple(model.out_head.weight.shape) == (2, 32) and tuple(model.out_head.bias.shape) == (2,)
    assert tied_parameters(model) == []
    assert count_parameters(model) == TINY_TOTAL + HEAD  # 1,635,618
    assert torch.equal(model.tok_emb.weight, emb_before)  # the embedding is untouched
    logits = model(torch.tensor([[15496, 11, 995, 13]]))
    assert logits.shape == (1, 4, 2)


@pytest.mark.parametrize("method, trainable", [
    ("full", TINY_TOTAL + HEAD),  # 1,635,618
    ("last-block", 12_608 + 64 + HEAD),  # 12,738: trf_blocks.1 + final_norm + out_head
    ("head", HEAD),  # 66
])
def test_set_trainable_counts(method, trainable):
    model = GPTModel(GPTConfig.from_preset("gpt-tiny"))
    add_classification_head(model, 2)
    set_trainable(model, method)
    assert count_parameters(model, trainable_only=True) == trainable
    assert count_parameters(model) == TINY_TOTAL + HEAD


def test_bad_arguments():
    model = GPTModel(GPTConfig.from_preset("gpt-tiny"))
    with pytest.raises(ValueError, match="num_classes"):
        add_classification_head(model, 1)
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        set_trainable(model, "lora")
    with pytest.raises(TypeError, match="out_head"):
        add_classification_head(nn.Linear(2, 2), 2)


def test_default_head_has_two_classes():
    """num_classes defaults to 2 (spam / ham)."""
    model = GPTModel(GPTConfig.from_preset("gpt-tiny"))
    assert add_classification_head(model).out_features == 2


@pytest.mark.parametrize("bad", [3.0, 2.5, True, 1, "2"])
def test_num_classes_must_be_an_integer_of_at_least_two(bad):
    """A float (even 3.0), a bool, 1 or a string is refused with the value named."""
    model = GPTModel(GPTConfig.from_preset("gpt-tiny"))
    with pytest.raises(ValueError) as err:
        add_classification_head(model, bad)
    assert str(err.value) == f"num_classes must be an integer >= 2, got {bad!r}"


def test_no_out_head_message_names_the_model_class():
    with pytest.raises(TypeError) as err:
        add_classification_head(nn.Sequential(nn.Linear(2, 2)), 2)
    assert str(err.value) == "Sequential has no nn.Linear `out_head` to replace"


def test_new_head_is_created_on_the_old_heads_device():
    """The new head lives where the old one did: an old head on the 'meta' device (no memory; the one
    device besides the CPU every machine has) gives a new head on 'meta'."""
    model = nn.Module()
    model.out_head = nn.Linear(32, 50_257, device="meta")
    head = add_classification_head(model, 2)
    assert (head.weight.device.type, head.bias.device.type) == ("meta", "meta")


def test_last_block_means_the_last_of_three_blocks():
    """'last-block' trains trf_blocks[-1] (here the third of three), final_norm and out_head, nothing else."""
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", n_layers=3))
    add_classification_head(model, 2)
    set_trainable(model, "last-block")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("trf_blocks.2.", "final_norm.", "out_head."))}
    # 13 tensors in a block (W_query, W_key, W_value; out_proj weight, bias; 2 feed-forward layers x weight, bias;
    # 2 norms x scale, shift) + final_norm's 2 + out_head's 2
    assert len(trainable) == 17
