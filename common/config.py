"""A settings dataclass from a dict (a JSON file's object), refusing keys it does not know.

    from common.config import dataclass_from_dict
    cfg = dataclass_from_dict(GPTConfig, json.loads(text))   # what GPTConfig.from_dict and LoraConfig.from_dict do

A misspelt or foreign key ("n_embd" for GPTConfig's emb_dim) is one clear ValueError naming it and the
fields there are, instead of a TypeError from the constructor or a key silently dropped; the values
themselves are checked by the dataclass (its __post_init__), as when it is made by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], d: Mapping) -> T:
    """cls(**d) for a dataclass `cls`, after checking that d is a mapping whose keys are all fields of cls."""
    name = cls.__name__
    if not isinstance(d, Mapping):
        raise ValueError(f"{name}: expected a dict of settings (a JSON object), got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(map(str, set(d) - known))
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    return cls(**d)


__all__ = ["dataclass_from_dict"]
