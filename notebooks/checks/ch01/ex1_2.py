"""Exercise 1.2: the tokens of "Akwirw ier" and the merge steps, checked against the tokenizer and the merge rule."""

from otter.test_files import test_case

from checks._guard import answer, keys, require
from gpt.tokenizer import get_tokenizer, load_mergeable_ranks

OK_FORMAT = False
name = "ex1_2"
points = 1


def _is_split(step) -> bool:
    return isinstance(step, list) and all(isinstance(part, bytes) for part in step)


def _check_steps(word: str, steps, ranks) -> None:
    where = f"exercise_1_2()['steps'][{word!r}]"
    require(isinstance(steps, list) and steps and all(_is_split(s) for s in steps),
            f"{where} should be a non-empty list of splits, each a list of bytes like [b'A', b'k', ...].")
    require(steps[0] == [bytes([b]) for b in word.encode("utf-8")],
            f"{where}[0] should be the word cut into single bytes; BPE starts from bytes.")
    for i, step in enumerate(steps):
        require(b"".join(step) == word.encode("utf-8"), f"{where}[{i}] does not join back to {word!r}.")
        pairs = [(ranks[a + b], j) for j, (a, b) in enumerate(zip(step, step[1:])) if a + b in ranks]
        if i == len(steps) - 1:
            require(not pairs, f"{where} stops too early: in its last split {step} two neighbours still form a "
                               f"token; merge until no adjacent pair is in the vocabulary.")
            continue
        nxt = steps[i + 1]
        require(len(nxt) == len(step) - 1,
                f"{where}[{i + 1}] should merge exactly one adjacent pair of {where}[{i}].")
        j = min(pairs)[1] if pairs else None
        require(j is not None and nxt == step[:j] + [step[j] + step[j + 1]] + step[j + 2:],
                f"{where}[{i + 1}] merged the wrong pair: BPE merges the adjacent pair with the lowest rank "
                f"(the earliest learned merge), not the first or the most frequent one.")


@test_case(points=1)
def ex1_2(env):
    tokenizer, ranks = get_tokenizer(), load_mergeable_ranks()
    for text in ["Akwirw ier", "Hello, world. naïve café"]:
        result = answer(env, "exercise_1_2", text, returns=dict,
                        expects="a dict with 'ids', 'pieces' and 'steps'")
        keys(result, {"ids", "pieces", "steps"}, f"exercise_1_2({text!r})")
        ids, pieces = result["ids"], result["pieces"]
        require(isinstance(ids, list) and all(isinstance(i, int) for i in ids),
                f"exercise_1_2({text!r})['ids'] should be a list of ints (tokenizer.encode gives one).")
        require(ids == tokenizer.encode(text),
                f"exercise_1_2({text!r})['ids'] = {ids} are not GPT-2's tokens of the text; use the chapter's "
                f"tokenizer on the whole text (not word by word).")
        require(pieces == [tokenizer.decode_single_token_bytes(i) for i in ids],
                f"exercise_1_2({text!r})['pieces'] should be the bytes of each token, in order "
                f"(tokenizer.decode_single_token_bytes), as bytes, not str.")
        steps = result["steps"]
        require(isinstance(steps, dict), f"exercise_1_2({text!r})['steps'] should be a dict {{word: list of splits}}.")
        keys(steps, {"Akwirw", " ier"}, f"exercise_1_2({text!r})['steps']")
        for word in ("Akwirw", " ier"):
            _check_steps(word, steps[word], ranks)
