"""Exercise 1.4: the SMS messages with the most and the fewest tokens per character, among those long enough."""

import numpy as np
from otter.test_files import test_case

from checks._guard import answer, close, keys, require
from classify.data import load_sms_spam
from gpt.tokenizer import get_tokenizer

OK_FORMAT = False
name = "ex1_4"
points = 1


@test_case(points=1)
def ex1_4(env):
    tokenizer = get_tokenizer()
    texts = [m.text for m in load_sms_spam()]
    known = set(texts)
    per_char = np.array([len(ids) for ids in tokenizer.encode_ordinary_batch(texts)]) / np.array([len(t) for t in texts])
    lengths = np.array([len(t) for t in texts])
    for min_chars in (30, 100):
        call = f"exercise_1_4(min_chars={min_chars})"
        result = answer(env, "exercise_1_4", min_chars=min_chars, returns=dict, timeout=60,
                        expects="a dict {'fewest': (tokens per character, message), 'most': (...)}")
        keys(result, {"fewest", "most"}, call)
        for key, pick in (("fewest", np.min), ("most", np.max)):
            got = result[key]
            require(isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], str)
                    and isinstance(got[0], (float, int)) and not isinstance(got[0], bool),
                    f"{call}['{key}'] should be a tuple (tokens per character as a float, the message), "
                    f"got {type(got).__name__} {str(got)[:60]}.")
            ratio, text = got
            require(text in known, f"{call}['{key}'] names a message that is not in the SMS data set "
                                   f"(load_sms_spam(); keep each message's .text exactly as it is).")
            require(len(text) >= min_chars,
                    f"{call}['{key}'] is a message of {len(text)} characters; the exercise keeps only messages "
                    f"of at least min_chars = {min_chars} characters.")
            require(close(ratio, len(tokenizer.encode_ordinary(text)) / len(text), rel=1e-9),
                    f"{call}['{key}'][0] = {ratio} is not that message's tokens per character "
                    f"(its number of tokens divided by its number of characters).")
            best = pick(per_char[lengths >= min_chars])
            require(close(ratio, best, rel=1e-9),
                    f"{call}['{key}'] is not the message with the {key} tokens per character among those of at "
                    f"least {min_chars} characters; compare every such message, not a sample.")
