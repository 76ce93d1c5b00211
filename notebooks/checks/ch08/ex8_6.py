"""Exercise 8.6: which rows of an embedding adapter's A moved, against the token ids of the texts it saw."""

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


def model_with_two_embedding_adapters(words: set[int]) -> torch.nn.Module:
    """A tiny GPT with adapters "words" (rows `words` of A non-zero, as if trained on texts holding those
    tokens) and "other" (other rows non-zero), both on the token embedding."""
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0)).eval()
    add_classification_head(model, num_classes=2)
    cfg = LoraConfig(rank=4, alpha=8, targets=("all-linear", "tok_emb"), modules_to_save=("out_head",))
    apply_lora(model, cfg, adapter_name="words")
    add_adapter(model, "other", cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        rows = sorted(words)
        model.tok_emb.lora["words"].lora_A[rows] = torch.randn(len(rows), 4, generator=g)
        model.tok_emb.lora["other"].lora_A[:7] = torch.randn(7, 4, generator=g)
    return model


@test_case(points=1)
def ex8_6(env):
    for texts in TEXTS:
        words = {i for text in texts for i in encode_text(text)}
        model = model_with_two_embedding_adapters(words)
        result = answer(env, "exercise_8_6", model, "words", texts, returns=dict,
                        expects='a dict {"rows_nonzero": int, "token_ids_in_texts": int}')
        call = f"exercise_8_6(model, 'words', {texts})"
        keys(result, {"rows_nonzero", "token_ids_in_texts"}, call)
        require(result["token_ids_in_texts"] == len(words),
                f"{call}['token_ids_in_texts'] = {result['token_ids_in_texts']!r} is not the number of distinct token "
                f"ids in the texts; hint: classify.dataset.encode_text(text) gives a text's ids, count each id once.")
        require(result["rows_nonzero"] == len(words),
                f"{call}['rows_nonzero'] = {result['rows_nonzero']!r} is not the number of rows of the 'words' "
                f"adapter's A that are not all zero; hint: model.tok_emb.lora['words'].lora_A is (V, r): a row is "
                f"one token id, count the rows with any non-zero entry (not the entries).")
