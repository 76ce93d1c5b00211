"""The exercise checks (notebooks/checks/chNN/exN_M.py) accept the reference solutions and reject wrong answers.

For every check file that exists (the format: notebooks/checks/README.md):
* the reference solution passes it: solutions/chNN.py's function of the same name as the notebook's stub
  (`exercise_1_3`); a stub that is a variable (`exercise_5_2 = ...`) gets the function's return value;
* the planted wrong answer fails it with the check's own message: solutions/chNN.py's `wrong_exercise_1_3`,
  one mistake a student could make (a check that cannot fail is a defect);
* so do `typed_in_exercise_1_3` (constants typed in from the statement) and `shortcut_exercise_1_3` (the forbidden
  shortcut, or an answer that skips the computation the exercise trains);
* the untouched stub, exactly as the notebook hands it out, fails with "not answered yet";
* its notebook has the stub cell and one `grader.check("exN_M")` cell after it.
A failure that is the check's verdict prints `CheckFailed: <message>`; anything else (a TypeError inside
the checker) would print another exception name, so each test also asserts that name.

Then the bad answers of notebooks/checks/_guard.py, on chapter 1's checks: the wrong type, an exception,
an answer that never returns, one that changes torch's default dtype, grad mode, the global RNG or a package
function, and one that changes the weights it was given. Each gets one clear message, and the next check works.

In a student release (no solutions/) the reference and planted-answer tests skip, saying so; the stub and
notebook tests still run there.
"""

from __future__ import annotations

import importlib
import re
import time
from pathlib import Path

import nbformat
import pytest
import torch
from otter.test_files.exception_test import ExceptionTestFile

from checks import _guard  # notebooks/checks/: pyproject puts notebooks/ on the path, as a notebook sees it

pytestmark = pytest.mark.slow  # runs every exercise check on its reference, planted and typed-in answers

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"

CHECKS = sorted(NOTEBOOK_DIR.glob("checks/ch[0-9][0-9]/ex*.py"))
HAS_SOLUTIONS = (ROOT / "solutions").is_dir()
NO_SOLUTIONS = "solutions/ is not in this copy (a student release): only the stubs and notebooks are checked"


def answer_name(check: Path) -> str:
    """ex1_3 -> exercise_1_3: the name the notebook's stub and the solution function share."""
    return "exercise_" + check.stem[2:]


def notebook_of(check: Path) -> Path:
    chapter = check.parent.name[2:]  # "ch01" -> "01"
    (path,) = NOTEBOOK_DIR.glob(f"{chapter}_*.ipynb")
    return path


def stub_cell(check: Path) -> tuple[int, str]:
    """(cell index, source) of the notebook cell that defines the answer: `def exercise_1_3(` or `exercise_1_3 =`."""
    name = answer_name(check)
    pattern = re.compile(rf"^(def {name}\(|{name}\s*=)", re.MULTILINE)
    cells = nbformat.read(notebook_of(check), as_version=4).cells
    found = [(i, c.source) for i, c in enumerate(cells) if c.cell_type == "code" and pattern.search(c.source)]
    assert len(found) == 1, f"{notebook_of(check).name}: {len(found)} cells define {name}; want exactly one"
    return found[0]


def run_check(check: Path, env: dict):
    """Run one otter test file against a notebook's global environment, as grader.check does."""
    test_file = ExceptionTestFile.from_file(str(check))
    test_file.run(env)
    return test_file


def messages(test_file) -> str:
    return "\n".join(r.message for r in test_file.test_case_results)


def solution_module(check: Path):
    return importlib.import_module(f"solutions.ch{check.parent.name[2:]}")


def env_with(check: Path, function) -> dict:
    """The notebook's environment with `function` as the answer (called once if the stub is a variable)."""
    is_function = f"def {answer_name(check)}(" in stub_cell(check)[1]
    return {answer_name(check): function if is_function else function()}


@pytest.mark.parametrize("check", CHECKS, ids=lambda p: p.stem)
def test_reference_solution_passes(check):
    if not HAS_SOLUTIONS:
        pytest.skip(NO_SOLUTIONS)
    reference = getattr(solution_module(check), answer_name(check))
    result = run_check(check, env_with(check, reference))
    assert result.passed_all, messages(result)


@pytest.mark.parametrize("check", CHECKS, ids=lambda p: p.stem)
def test_planted_wrong_answer_fails(check):
    if not HAS_SOLUTIONS:
        pytest.skip(NO_SOLUTIONS)
    module = solution_module(check)
    wrong = getattr(module, "wrong_" + answer_name(check), None)
    assert wrong is not None, f"{module.__name__} needs wrong_{answer_name(check)}: a planted wrong answer"
    result = run_check(check, env_with(check, wrong))
    assert not result.passed_all, f"{check.name} passes the planted wrong answer: {wrong.__doc__}"
    assert "CheckFailed: " in messages(result), messages(result)  # the check's verdict, not a crash in it


# What students really write, kept for every check (solutions/chNN.py, next to `wrong_exercise_N_M`):
#   typed_in_exercise_N_M: the numbers the statement or the chapter prints, typed in instead of computed;
#   shortcut_exercise_N_M: the shortcut the statement forbids, or an answer that skips the computation the
#                          exercise trains (where there is none, a second plausible mistake, named in its docstring).
# A check that accepts either could be passed without doing the exercise.
WRONG_KINDS = ("typed_in_", "shortcut_")


@pytest.mark.parametrize("kind", WRONG_KINDS, ids=lambda k: k.rstrip("_"))
@pytest.mark.parametrize("check", CHECKS, ids=lambda p: p.stem)
def test_typed_in_and_shortcut_answers_fail(check, kind):
    if not HAS_SOLUTIONS:
        pytest.skip(NO_SOLUTIONS)
    module = solution_module(check)
    wrong = getattr(module, kind + answer_name(check), None)
    assert wrong is not None, f"{module.__name__} needs {kind}{answer_name(check)}: see WRONG_KINDS above"
    assert wrong.__doc__, f"{kind}{answer_name(check)} needs a docstring naming the mistake it makes"
    result = run_check(check, env_with(check, wrong))
    assert not result.passed_all, f"{check.name} passes {kind}{answer_name(check)}: {wrong.__doc__}"
    assert "CheckFailed: " in messages(result), messages(result)


@pytest.mark.parametrize("check", CHECKS, ids=lambda p: p.stem)
def test_untouched_stub_fails_with_a_clear_message(check):
    env: dict = {}
    exec(stub_cell(check)[1], env)  # the answer cell exactly as handed out
    result = run_check(check, env)
    assert not result.passed_all
    assert f"CheckFailed: not answered yet: fill in {answer_name(check)}" in messages(result), messages(result)


@pytest.mark.parametrize("check", CHECKS, ids=lambda p: p.stem)
def test_notebook_has_the_stub_then_the_check(check):
    cells = nbformat.read(notebook_of(check), as_version=4).cells
    stub_index = stub_cell(check)[0]
    calls = [i for i, c in enumerate(cells) if c.cell_type == "code" and f'grader.check("{check.stem}")' in c.source]
    assert len(calls) == 1 and calls[0] > stub_index, \
        f"{notebook_of(check).name}: want one grader.check(\"{check.stem}\") cell after the stub (cell {stub_index})"
    grader = [c.source for c in cells[:stub_index] if "otter.Notebook(" in c.source]
    assert grader and f'tests_dir="checks/{check.parent.name}"' in grader[-1], \
        f"{notebook_of(check).name}: create the grader before the first stub with tests_dir=\"checks/{check.parent.name}\""


def test_every_check_cell_has_a_check_file():
    called = []
    for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            for name in re.findall(r'grader\.check\("([^"]+)"\)', cell.source):
                called.append(name)
                assert (NOTEBOOK_DIR / "checks" / f"ch{path.name[:2]}" / f"{name}.py").is_file(), \
                    f"{path.name} checks {name!r}, but notebooks/checks/ch{path.name[:2]}/{name}.py does not exist"
    assert len(called) == len(set(called)) >= 4, called  # chapter 1 has four checked exercises


# --- bad answers, on chapter 1's checks --------------------------------------------------------------------

EX1_1 = NOTEBOOK_DIR / "checks" / "ch01" / "ex1_1.py"
EX1_3 = NOTEBOOK_DIR / "checks" / "ch01" / "ex1_3.py"


def good_1_3(vocab_size=50257, emb_dim=16, seed=123):
    torch.manual_seed(seed)
    embedding = torch.nn.Embedding(vocab_size, emb_dim)
    linear = torch.nn.Linear(vocab_size, emb_dim, bias=False)
    with torch.no_grad():
        linear.weight.copy_(embedding.weight.T)
    return embedding, linear


def returns_the_difference(vocab_size=50257, emb_dim=16, seed=123):
    return 0.0  # a number is not the layers: a check of a number could not tell a right answer from this


def raises(vocab_size=50257, emb_dim=16, seed=123):
    return torch.nn.Linear(vocab_size, emb_dim)(torch.zeros(2, emb_dim)).max().item()  # wrong shapes


def never_returns(vocab_size=50257, emb_dim=16, seed=123):
    while True:
        try:
            time.sleep(0.01)
        except Exception:  # an answer that swallows errors must still be stopped
            pass


def leaves_float64(vocab_size=50257, emb_dim=16, seed=123):
    torch.set_default_dtype(torch.float64)
    return good_1_3(vocab_size, emb_dim, seed)


def leaves_grad_off(vocab_size=50257, emb_dim=16, seed=123):
    torch.set_grad_enabled(False)
    return good_1_3(vocab_size, emb_dim, seed)


def reseeds(vocab_size=50257, emb_dim=16, seed=123):
    return good_1_3(vocab_size, emb_dim, seed)  # calls torch.manual_seed: allowed, and restored


def patches_the_package(max_length=256, strides=(128, 256)):
    import gpt.data

    gpt.data.TokenWindows.__len__ = lambda self: 0
    return {s: {"windows": 0, "target_tokens": 0, "distinct_targets": 0} for s in strides}


BAD_ANSWERS = {
    "wrong type": (EX1_3, returns_the_difference, "exercise_1_3 should return a tuple (embedding, linear): the two layers, "
                                                  "but it returned float 0.0"),
    "raises": (EX1_3, raises, "exercise_1_3(vocab_size=500, emb_dim=4, seed=3) raised RuntimeError: "
                                   "mat1 and mat2 shapes cannot be multiplied"),
    "never returns": (EX1_3, never_returns, "exercise_1_3(vocab_size=500, emb_dim=4, seed=3) did not return "
                                               "within 1 seconds"),
    "default dtype": (EX1_3, leaves_float64, "exercise_1_3 changed torch's default dtype to torch.float64"),
    "grad mode": (EX1_3, leaves_grad_off, "exercise_1_3 switched gradients off for the whole notebook"),
    "monkeypatch": (EX1_1, patches_the_package, "exercise_1_1 replaced gpt.data.TokenWindows.__len__ (put back)"),
}


@pytest.mark.parametrize("case", BAD_ANSWERS)
def test_bad_answer_gets_a_clear_message_and_the_next_check_works(case, monkeypatch):
    check, bad, expected = BAD_ANSWERS[case]
    monkeypatch.setattr(_guard, "DEFAULT_TIMEOUT", 1.0)
    rng = torch.get_rng_state()
    import gpt.data
    length = gpt.data.TokenWindows.__len__

    started = time.perf_counter()
    result = run_check(check, {answer_name(check): bad})
    assert time.perf_counter() - started < 30
    assert not result.passed_all
    assert "CheckFailed: " in messages(result) and expected in messages(result), messages(result)
    assert "Traceback" not in messages(result)
    # Everything is as before, and the next check passes a good answer.
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), rng) and gpt.data.TokenWindows.__len__ is length
    assert run_check(EX1_3, {"exercise_1_3": good_1_3}).passed_all


def test_seeding_inside_an_answer_is_allowed_and_undone():
    rng = torch.get_rng_state()
    assert run_check(EX1_3, {"exercise_1_3": reseeds}).passed_all
    assert torch.equal(torch.get_rng_state(), rng)


def test_missing_and_non_function_answers():
    result = run_check(EX1_3, {})
    assert "CheckFailed: exercise_1_3 is not defined: run the cell with your answer" in messages(result)
    result = run_check(EX1_3, {"exercise_1_3": 0.0})
    assert "CheckFailed: exercise_1_3 should be a function (`def exercise_1_3(...):`), not float 0.0" \
        in messages(result), messages(result)


def test_answer_that_changes_the_weights_it_was_given():
    model = torch.nn.Linear(4, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def scales_weights(m):
        with torch.no_grad():
            m.weight.mul_(2)
        return 1.0

    with pytest.raises(_guard.CheckFailed, match=r"changed the weights of the model it was given \(weight\) in place"):
        _guard.answer({"f": scales_weights}, "f", model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # put back
    assert _guard.answer({"f": lambda m: m.weight.sum().item()}, "f", model) == pytest.approx(before["weight"].sum().item())
