"""Exercise 4.3: a pre-training run that crashes and resumes ends with exactly the weights of one that never stopped."""

import math
import tempfile

from pathlib import Path

import torch
from otter.test_files import test_case

from checks._guard import answer, close, keys, require
from gpt.checkpoint import load_training_state


def runs_in(out_dir):
    """{folder: (final weights, last validation loss, step)} of every run under out_dir (its train_state.pt)."""
    runs = {}
    for path in sorted(Path(out_dir).rglob("train_state.pt")):
        state = load_training_state(path)
        runs[path.parent] = (state["model"], state["history"]["val_loss"][-1], int(state["step"]))
    return runs

OK_FORMAT = False
name = "ex4_3"
points = 1


@test_case(points=1)
def ex4_3(env):
    for kwargs in [{"steps": 6, "crash_at": 4, "seed": 5}, {"steps": 10, "crash_at": 8, "seed": 2}]:
        call = f"exercise_4_3(out_dir, {', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        with tempfile.TemporaryDirectory() as out_dir:
            result = answer(env, "exercise_4_3", out_dir, **kwargs, returns=dict, timeout=180,
                            expects="a dict {'saved_step': int, 'identical': bool, 'final_val_loss': float}")
            runs = runs_in(out_dir)
        keys(result, {"saved_step", "identical", "final_val_loss"}, call)
        require(len(runs) >= 2 and all(step == kwargs["steps"] for _, _, step in runs.values()),
                f"{call}: found {len(runs)} finished run(s) under out_dir (folders with a train_state.pt at step "
                f"{kwargs['steps']}); the exercise compares two: one straight through, one crashed and resumed, both "
                f"under out_dir.")
        weights = [w for w, _, _ in runs.values()]
        same = all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])
        require(result["identical"] is same,
                f"{call}['identical'] = {result['identical']!r}, but the final weights of the runs under out_dir are "
                f"{'' if same else 'not '}identical; compare them with torch.equal on every tensor.")
        require(same, f"{call}: the resumed run does not end with exactly the weights of the uninterrupted one. Did you "
                      f"resume (resume=True) from the crashed run's own folder?")
        require(isinstance(result["saved_step"], int) and result["saved_step"] == 2 * ((kwargs["crash_at"] - 1) // 2),
                f"{call}['saved_step'] = {result['saved_step']!r} is not the step of the crashed run's last "
                f"checkpoint; read it from its train_state.pt right after the crash, before resuming.")
        losses = [loss for _, loss, _ in runs.values()]
        require(isinstance(result["final_val_loss"], float)
                and any(close(result["final_val_loss"], loss, rel=1e-9) for loss in losses),
                f"{call}['final_val_loss'] = {result['final_val_loss']!r} is not the last validation loss the runs "
                f"under out_dir recorded; take it from the history the resumed run returns.")
