"""Exercise 1.1: windows over The Verdict, compared with what gpt.data.TokenWindows makes of the same stream."""

import torch
from otter.test_files import test_case

from checks._guard import answer, keys, require
from gpt.data import TokenWindows
from gpt.tokenizer import DATA_DIR, get_tokenizer

OK_FORMAT = False
name = "ex1_1"
points = 1

HINTS = {
    "windows": "count the windows gpt.data.TokenWindows makes over the text's tokens (section 1.4)",
    "target_tokens": "every window trains on max_length (input, target) pairs",
    "distinct_targets": "a token that is a target in two overlapping windows counts once, and with "
                        "stride > max_length some tokens are never a target",
}


@test_case(points=1)
def ex1_1(env):
    text = (DATA_DIR / "pretrain" / "the-verdict.txt").read_text(encoding="utf-8")
    positions = torch.arange(len(get_tokenizer().encode(text)))  # token i of the stream, named by its position i
    for max_length, strides in [(200, (64, 200)), (100, (30, 100, 150))]:
        result = answer(env, "exercise_1_1", max_length=max_length, strides=strides, returns=dict,
                        expects="a dict {stride: {'windows': ..., 'target_tokens': ..., 'distinct_targets': ...}}")
        call = f"exercise_1_1(max_length={max_length}, strides={strides})"
        keys(result, set(strides), call, " (one entry per stride)")
        for stride in strides:
            got = result[stride]
            require(isinstance(got, dict), f"{call}[{stride}] should be a dict, not {type(got).__name__}.")
            keys(got, set(HINTS), f"{call}[{stride}]")
            windows = TokenWindows(positions, max_length=max_length, stride=stride)
            targets = torch.cat([windows[i][1] for i in range(len(windows))])  # the positions trained as targets
            expected = {"windows": len(windows), "target_tokens": targets.numel(),
                        "distinct_targets": targets.unique().numel()}
            for key, hint in HINTS.items():
                require(isinstance(got[key], int) and not isinstance(got[key], bool),
                        f"{call}[{stride}]['{key}'] should be an int, not {type(got[key]).__name__} "
                        f"(use len(...) or .item()).")
                require(got[key] == expected[key],
                        f"{call}[{stride}]['{key}'] = {got[key]} is not right; hint: {hint}.")
