"""Exercise 7.2: class logits at the last real token and at the last column, compared with classify.model.class_logits."""

import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require
from classify.dataset import PAD_TOKEN_ID
from classify.model import add_classification_head, class_logits
from gpt import GPTConfig, GPTModel, get_tokenizer

OK_FORMAT = False
name = "ex7_2"
points = 1


@test_case(points=1)
def ex7_2(env):
    torch.manual_seed(29)
    model = GPTModel(GPTConfig.from_preset("gpt-tiny", drop_rate=0.0))
    add_classification_head(model, 2)
    model.eval()
    for text, widths in (("Txt WIN to 80082 for a prize", (9, 17, 40)), ("See you at lunch?", (5, 9, 33))):
        ids = get_tokenizer().encode(text, disallowed_special=())
        widths = tuple(max(w, len(ids)) for w in widths)
        result = answer(env, "exercise_7_2", model, text, widths, returns=dict,
                        expects="a dict {width: {'last_real': tensor (2,), 'last_column': tensor (2,)}}")
        call = f"exercise_7_2(model, {text!r}, {widths})"
        keys(result, set(widths), call, " (one entry per width)")
        for w in widths:
            got = result[w]
            require(isinstance(got, dict), f"{call}[{w}] should be a dict, not {type(got).__name__}.")
            keys(got, {"last_real", "last_column"}, f"{call}[{w}]")
            x = torch.tensor([ids + [PAD_TOKEN_ID] * (w - len(ids))])  # (1, w)
            with torch.no_grad():
                real = class_logits(model, x, torch.tensor([len(ids)]))[0]
                column = model(x)[0, -1]
            for key, expected, hint in (("last_real", real, "the output at the message's last real token"),
                                        ("last_column", column, "the output at the row's last column (section 7.1 "
                                                                "shows which position that is)")):
                t = got[key]
                require(isinstance(t, torch.Tensor) and t.shape == (2,),
                        f"{call}[{w}]['{key}'] should be a tensor of shape (2,), got "
                        f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}.")
                require(torch.allclose(t.detach().float(), expected, rtol=1e-4, atol=1e-5),
                        f"{call}[{w}]['{key}'] = {t.detach().numpy().round(4)} is not the model's logits there; hint: "
                        f"pad with <|endoftext|> ({PAD_TOKEN_ID}) up to the width and read {hint}.")
