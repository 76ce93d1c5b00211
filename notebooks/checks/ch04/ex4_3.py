"""Exercise 4.3: a pre-training run that crashes and resumes ends with exactly the weights of one that never stopped."""

import math
import tempfile

from otter.test_files import test_case

from checks._guard import answer, keys, require

OK_FORMAT = False
name = "ex4_3"
points = 1


@test_case(points=1)
def ex4_3(env):
    for kwargs in [{"steps": 8, "crash_at": 6}, {"steps": 6, "crash_at": 4, "seed": 5}]:
        call = f"exercise_4_3(out_dir, {', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        with tempfile.TemporaryDirectory() as out_dir:
            result = answer(env, "exercise_4_3", out_dir, **kwargs, returns=dict, timeout=180,
                            expects="a dict {'saved_step': int, 'identical': bool, 'final_val_loss': float}")
        keys(result, {"saved_step", "identical", "final_val_loss"}, call)
        require(isinstance(result["saved_step"], int) and 0 < result["saved_step"] < kwargs["crash_at"],
                f"{call}['saved_step'] = {result['saved_step']!r}: the step of the last checkpoint before the crash "
                f"(read it from train_state.pt), an int below crash_at = {kwargs['crash_at']}.")
        require(result["identical"] is True,
                f"{call}['identical'] = {result['identical']!r}: the resumed run should end with exactly the weights "
                f"of the uninterrupted one (torch.equal on every tensor). Did you resume (resume=True) from the "
                f"crashed run's own folder?")
        require(isinstance(result["final_val_loss"], float) and math.isfinite(result["final_val_loss"]),
                f"{call}['final_val_loss'] = {result['final_val_loss']!r}: a finite float.")
