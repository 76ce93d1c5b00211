"""common.config.dataclass_from_dict: the one way a settings dataclass is read from a dict (GPTConfig from a
checkpoint, LoraConfig from an adapter_config.json)."""

import pytest

from common.config import dataclass_from_dict
from gpt.config import GPTConfig
from lora.config import LoraConfig


def test_round_trips_and_checks_values_as_the_constructor_does():
    lora = LoraConfig(rank=4, alpha=8, targets=("query", "value"), modules_to_save=("out_head",))
    assert dataclass_from_dict(LoraConfig, lora.to_dict()) == lora == LoraConfig.from_dict(lora.to_dict())
    tiny = GPTConfig.from_preset("gpt-tiny")
    assert GPTConfig.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):  # __post_init__ still runs
        LoraConfig.from_dict({**lora.to_dict(), "rank": 0})


@pytest.mark.parametrize("cls,d,message", [
    (LoraConfig, {"r": 8, "rank": 8}, r"LoraConfig: unknown field\(s\) \['r'\]; known fields are \['alpha', "),
    (GPTConfig, {"n_embd": 768}, r"GPTConfig: unknown field\(s\) \['n_embd'\]"),
    (LoraConfig, [("rank", 8)], "LoraConfig: expected a dict of settings .a JSON object., got list"),
])
def test_refuses_an_unknown_key_or_a_non_dict_in_one_line(cls, d, message):
    with pytest.raises(ValueError, match=message) as info:
        cls.from_dict(d)
    assert "\n" not in str(info.value)
