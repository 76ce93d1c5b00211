"""The one safety net every exercise check uses: call a student's answer, never let it break the checker.

A check (notebooks/checks/chNN/exN_M.py, an otter-grader test file) never calls a student's answer
directly. It calls `answer(env, "exercise_1_3", ...)`, which

* says "not answered yet" for the stub as handed out (returns None or `...`), and "not defined" when
  the answer cell was never run;
* turns an exception raised by the answer into one sentence (the answer's error, not the checker's);
* stops an answer that runs longer than `timeout` seconds (SIGALRM in the main thread, so Unix only;
  elsewhere the answer simply runs to the end);
* checks the type of what came back;
* puts back whatever global state the answer changed (torch's default dtype, grad mode, random number
  generators, threads, functions and classes of gpt/lora/classify and torch, the tensors and modules
  it was given) so the next check and the rest of the notebook still work, and fails when that state
  was something the notebook relies on (seeding a generator is fine: it is restored silently).

Every failure is an `AssertionError` whose message is what the student reads: what is wrong and a hint.
otter prints it under the line of the check that raised it, never a traceback from inside this module.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import threading
import types
from typing import Any, Iterator

import numpy as np
import torch
import torch._dynamo  # noqa: F401  torch swaps in its own torch.manual_seed the first time an optimizer is
from torch import nn  # built; importing it now keeps that swap out of what an answer is blamed for changing

# Modules whose functions and classes an answer must not replace (monkeypatch). Only modules already
# imported are watched; torch's own are limited to the ones notebooks use, to keep a check fast.
WATCHED_PREFIXES = ("gpt", "lora", "classify", "plots")
WATCHED_TORCH = ("torch", "torch.nn", "torch.nn.functional", "torch.nn.init", "torch.linalg")
DEFAULT_TIMEOUT = 10.0  # seconds; every chapter's exercise answers take well under a second or two


class CheckFailed(AssertionError):
    """A check's verdict: the message is written for the student."""


class _TimeUp(BaseException):
    """Raised by SIGALRM inside an answer; a BaseException so `except Exception` in the answer cannot hide it."""


def fail(message: str) -> None:
    raise CheckFailed(message)


def require(condition: Any, message: str) -> None:
    """The check's `assert`: fails with `message` (what is wrong, then a hint) when `condition` is false."""
    if not condition:
        raise CheckFailed(message)


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:120]


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def lookup(env: dict, name: str) -> Any:
    """The notebook's `name` (a function or a value): fails if it was never defined or is still the stub `...`."""
    if name not in env:
        fail(f"{name} is not defined: run the cell with your answer (the one above this check) first.")
    value = env[name]
    if value is None or value is Ellipsis:
        fail(f"not answered yet: fill in {name} (it is still `{value!r}`), run its cell, then this check.")
    return value


@contextlib.contextmanager
def time_limit(seconds: float, name: str) -> Iterator[None]:
    """Raise _TimeUp after `seconds` (main thread on Unix only; elsewhere no limit)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds is None:
        yield
        return

    def on_alarm(signum, frame):
        raise _TimeUp()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_MISSING = object()
# Only code is watched (functions, classes, methods): module-level data such as a cache filled on first use
# legitimately changes while an answer runs.
_CODE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type, classmethod, staticmethod, property)


def _watched_modules() -> list[Any]:
    names = [n for n in list(sys.modules) if n.split(".")[0] in WATCHED_PREFIXES] + list(WATCHED_TORCH)
    return [sys.modules[n] for n in names if sys.modules.get(n) is not None]


def _attribute_snapshot() -> dict[tuple[int, str], tuple[Any, str, Any]]:
    """{(id of owner, attribute): (owner, label, value)} for the watched modules and the classes they define."""
    snapshot = {}
    for module in _watched_modules():
        for attr, value in list(vars(module).items()):
            if attr.startswith("__") or not isinstance(value, _CODE):
                continue
            snapshot[(id(module), attr)] = (module, f"{module.__name__}.{attr}", value)
            if isinstance(value, type) and getattr(value, "__module__", None) == module.__name__:
                for cls_attr, cls_value in list(vars(value).items()):
                    dunder = cls_attr.startswith("__") and cls_attr not in ("__init__", "__call__", "__len__")
                    if isinstance(cls_value, _CODE) and not dunder:
                        snapshot[(id(value), cls_attr)] = (value, f"{module.__name__}.{value.__name__}.{cls_attr}",
                                                           cls_value)
    return snapshot


def _restore_attributes(before: dict) -> list[str]:
    """Put back every watched attribute the answer replaced or deleted; returns their names."""
    changed = []
    for (owner_id, attr), (owner, label, value) in before.items():
        current = vars(owner).get(attr, _MISSING)
        if current is not value:
            changed.append(label)
            setattr(owner, attr, value)
    return changed


def _tensors_in(values: list[Any]) -> list[tuple[str, torch.Tensor]]:
    """The tensors an answer receives: tensor arguments and every parameter and buffer of module arguments."""
    found = []
    for i, value in enumerate(values):
        if isinstance(value, torch.Tensor):
            found.append((f"the tensor it was given (argument {i + 1})", value))
        elif isinstance(value, nn.Module):
            for key, tensor in value.state_dict(keep_vars=True).items():
                found.append((f"the weights of the model it was given ({key})", tensor))
    return found


@contextlib.contextmanager
def _state_kept(name: str, arguments: list[Any], problems: list[str]) -> Iterator[None]:
    """Snapshot global state and the arguments' tensors; afterwards restore all of it and list what changed
    that the notebook relies on (appended to `problems`)."""
    dtype, grad, threads = torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads()
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    attributes = _attribute_snapshot()
    tensors = _tensors_in(arguments)
    copies = [t.detach().clone() for _, t in tensors]
    try:
        yield
    finally:
        if torch.get_default_dtype() != dtype:
            problems.append(f"{name} changed torch's default dtype to {torch.get_default_dtype()} and left it so "
                            f"(put back to {dtype}); use dtype=... on the tensors you create instead")
            torch.set_default_dtype(dtype)
        if torch.is_grad_enabled() != grad:
            problems.append(f"{name} switched gradients {'off' if grad else 'on'} for the whole notebook "
                            f"(put back); use `with torch.no_grad():` around the lines that need it")
            torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)  # harmless to change, restored silently
        torch.set_rng_state(rng[0]); np.random.set_state(rng[1]); random.setstate(rng[2])  # seeding is allowed
        for label in _restore_attributes(attributes):
            problems.append(f"{name} replaced {label} (put back); never reassign the package's functions, "
                            f"write your own function instead")
        for (label, tensor), copy in zip(tensors, copies):
            if tensor.shape != copy.shape or not torch.equal(tensor.detach(), copy):
                problems.append(f"{name} changed {label} in place (put back); work on a copy "
                                f"(`.clone()`, `copy.deepcopy(model)`) or under `torch.no_grad()` without `_` methods")
                with torch.no_grad():
                    tensor.data = copy


def answer(env: dict, name: str, *args: Any, returns: type | tuple[type, ...] | None = None,
           expects: str = "", timeout: float | None = None, **kwargs: Any) -> Any:
    """Call the notebook's function `name(*args, **kwargs)` safely and return what it returned.

    returns: the accepted type(s) of the result; expects: how the statement describes it, used in messages
    ("a dict {stride: {...}}"); timeout: seconds, DEFAULT_TIMEOUT when None. Fails (CheckFailed, a message for
    the student) when the answer is missing, still the stub, not a function, raises, runs past `timeout`
    seconds, returns the wrong type, or changed state the notebook relies on.
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    fn = lookup(env, name)
    if not callable(fn):
        fail(f"{name} should be a function (`def {name}(...):`), not {_kind(fn)}; run the cell as handed out "
             f"to get the stub back.")
    shown = ", ".join([repr(a) if not isinstance(a, (torch.Tensor, nn.Module)) else type(a).__name__ for a in args]
                      + [f"{k}={v!r}" if not isinstance(v, (torch.Tensor, nn.Module)) else f"{k}={type(v).__name__}"
                         for k, v in kwargs.items()])
    call = f"{name}({shown})"[:160]
    problems: list[str] = []
    error = None
    with _state_kept(name, list(args) + list(kwargs.values()), problems):
        try:
            with time_limit(timeout, name):
                result = fn(*args, **kwargs)
        except _TimeUp:
            error = (f"{call} did not return within {timeout:g} seconds; look for a loop that never ends, "
                     f"or work that the exercise does not need (the reference answer takes well under a second)")
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:  # the answer's own error, reported in one sentence
            error = (f"{call} raised {type(exc).__name__}: {exc}. Run {name}(...) in a cell of its own to see "
                     f"the full traceback")
    if error or problems:  # both when both: a changed default dtype is often why the answer raised
        fail(" Also: ".join(([error] if error else []) + (["; ".join(problems) + "."] if problems else [])))
    if result is None or result is Ellipsis:
        fail(f"not answered yet: fill in {name} so that it returns {expects or 'the answer'} "
             f"(it returned {result!r}: still the stub, or a missing `return`).")
    if returns is not None and not isinstance(result, returns):
        fail(f"{name} should return {expects or _type_names(returns)}, but it returned {_kind(result)}.")
    return result


def value(env: dict, name: str, returns: type | tuple[type, ...] | None = None, expects: str = "") -> Any:
    """The notebook's variable `name` (an answer that is a value, not a function), type-checked."""
    result = lookup(env, name)
    if returns is not None and not isinstance(result, returns):
        fail(f"{name} should be {expects or _type_names(returns)}, but it is {_kind(result)}.")
    return result


def close(got: float, expected: float, rel: float = 1e-6, abs_: float = 1e-9) -> bool:
    """Whether two numbers agree to the stated tolerance (NaN never does)."""
    return abs(float(got) - float(expected)) <= max(abs_, rel * abs(float(expected)))


def keys(result: dict, expected: set, name: str, where: str = "") -> None:
    """Fails unless the dict `result` has exactly the keys `expected` (names them, in a student's words)."""
    got = set(result)
    require(got == set(expected),
            f"{name}{where} should have the keys {sorted(expected, key=str)}, but it has {sorted(got, key=str)}.")


__all__ = ["CheckFailed", "answer", "close", "fail", "keys", "lookup", "require", "time_limit", "value"]
