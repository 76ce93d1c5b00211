"""Exercise 8.6: which rows of an embedding adapter's A moved, read from the adapter, against the token ids of the
texts. The check's adapter did not move every row of the texts' tokens (as when a batch is dropped or a text
truncated), so counting the texts' tokens does not answer the first question."""

import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require
from classify.dataset import encode_text
from classify.model import add_classification_head
from gpt import GPTConfig, GPTModel
from lora import LoraConfig, add_adapter, apply_lora

OK_FORMAT = False
name = "ex8_6"
points = 1

TEXTS = (["Great phone, the battery lasts.", "Cold food and rude staff."],
         ["Not worth the money.", "A wonderful film!", "I would go back again."])


def model_with_two_embedding_adapters(rows: list[int]) -> torch.nn.Module:
    """A tiny GPT with adapters "words" (rows `rows` of A non-zero, as if trained) and "other" (other rows
    non-zero), both on the token embedding."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)).eval()
        add_classification_head(model, num_classes=2)
        cfg = LoraConfig(rank=4, alpha=8, targets=("all-linear", "tok_emb"), modules_to_save=("out_head",))
        apply_lora(model, cfg, adapter_name="words")
        add_adapter(model, "other", cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        A = model.tok_emb.lora["words"].lora_A
        A[rows] = torch.randn(len(rows), 4, generator=g)
        A[rows[0], 1:] = 0  # a moved row can hold zeros too
        model.tok_emb.lora["other"].lora_A[:7] = torch.randn(7, 4, generator=g)
    return model


@test_case(points=1)
def ex8_6(env):
    for dropped, texts in zip((2, 3), TEXTS):
        words = sorted({i for text in texts for i in encode_text(text)})
        rows = words[dropped:]  # the first few tokens' rows never moved
        model = model_with_two_embedding_adapters(rows)
        result = answer(env, "exercise_8_6", model, "words", texts, returns=dict,
                        expects='a dict {"rows_nonzero": int, "token_ids_in_texts": int}')
        call = f"exercise_8_6(model, 'words', {texts}) (an adapter of the check's own)"
        keys(result, {"rows_nonzero", "token_ids_in_texts"}, call)
        for key, got in result.items():
            require(isinstance(got, int) and not isinstance(got, bool),
                    f"{call}['{key}'] should be an int, not {type(got).__name__} (use int(...) or .item()).")
        require(result["token_ids_in_texts"] == len(words),
                f"{call}['token_ids_in_texts'] = {result['token_ids_in_texts']!r} is not the number of distinct token "
                f"ids in the texts; hint: tokenise each text as the classifier does and count each id once.")
        require(result["rows_nonzero"] == len(rows),
                f"{call}['rows_nonzero'] = {result['rows_nonzero']!r} is not the number of rows of the 'words' "
                f"adapter's A that are not all zero. Read the adapter itself (not the texts: a text's token need "
                f"not have moved its row); hint: a row of A belongs to one token id (section 8.4).")
