"""Exercise 2.3: the book's single-head CausalAttention equals MultiHeadAttention(num_heads=1) with out_proj = identity.
The answer returns the two modules; the check runs them on inputs of its own and compares the CausalAttention with a
one-head MultiHeadAttention the check builds from its projections."""

import torch
from otter.test_files import test_case

from checks._guard import answer, require
from gpt.attention import MultiHeadAttention

OK_FORMAT = False
name = "ex2_3"
points = 1


@test_case(points=1)
def ex2_3(env):
    for kwargs in [{"seed": 5, "d_in": 4, "d_out": 10, "T": 7}, {"seed": 2, "d_in": 9, "d_out": 3, "T": 4}]:
        d_in, d_out, T = kwargs["d_in"], kwargs["d_out"], kwargs["T"]
        call = f"exercise_2_3({', '.join(f'{a}={b}' for a, b in kwargs.items())})"
        pair = answer(env, "exercise_2_3", **kwargs, returns=tuple,
                      expects="a tuple (causal, multi): your CausalAttention and the one-head MultiHeadAttention")
        require(len(pair) == 2 and all(isinstance(m, torch.nn.Module) for m in pair),
                f"{call} should return two modules (causal, multi), not {len(pair)} things.")
        causal, multi = pair
        require(not isinstance(causal, MultiHeadAttention) and not hasattr(causal, "out_proj"),
                f"{call}[0] should be your own CausalAttention, the book's layer without an output projection, not "
                f"a MultiHeadAttention.")
        require(isinstance(multi, MultiHeadAttention) and multi.num_heads == 1,
                f"{call}[1] should be a MultiHeadAttention with num_heads=1.")
        require(all(isinstance(getattr(causal, n, None), torch.nn.Linear) for n in ("W_query", "W_key", "W_value")),
                f"{call}[0] should have the three projections W_query, W_key and W_value (nn.Linear(d_in, d_out)).")
        causal.eval(); multi.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            reference = MultiHeadAttention(d_in, d_out, context_length=T, dropout=0.0, num_heads=1).eval()
            for n in ("W_query", "W_key", "W_value"):
                getattr(reference, n).load_state_dict(getattr(causal, n).state_dict())
            reference.out_proj.weight.copy_(torch.eye(d_out)); reference.out_proj.bias.zero_()
            x = torch.randn(3, T, d_in, generator=torch.Generator().manual_seed(kwargs["seed"] + 100))
            try:
                own, theirs = causal(x), multi(x)
            except Exception as error:  # the answer's modules, not the check, are at fault
                require(False, f"{call}: a module fails on a (3, {T}, {d_in}) input: {type(error).__name__}: {error}")
            own_error = (own - reference(x)).abs().max().item()
            pair_error = (own - theirs).abs().max().item()
        require(own_error < 1e-5,
                f"{call}[0] is not causal attention: on inputs of the check's own its output differs by up to "
                f"{own_error:.3g} from one head with its projections. Hint: the mask, the scale and the softmax's "
                f"dimension (section 2.3).")
        require(pair_error < 1e-5,
                f"{call}: the two modules differ by up to {pair_error:.3g}. Hint: copy W_query, W_key and W_value "
                f"across, set out_proj's weight to the identity and its bias to 0 (under torch.no_grad()), and use "
                f"eval mode.")
