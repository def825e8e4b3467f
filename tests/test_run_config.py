"""The declarative field checks of dipod_jax.run.config: annotations and declared bounds decide what a
configuration field admits, and the error names the field and says what it admits."""
from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from dipod_jax.control.configs import TrainConfig
from dipod_jax.lm.rl_config import RLConfig
from dipod_jax.run.config import ConfigError, bounded, build, check_fields, config_dict


@dataclasses.dataclass(frozen=True)
class Demo:
    kind: Literal["a", "b"] = "a"
    count: int = bounded(1, ge=1)
    rate: float | None = bounded(None, gt=0)
    share: float = bounded(0.5, ge=0, lt=1)
    widths: tuple[int, ...] = bounded((4, 4), ge=1)
    pair: tuple[float, float] = bounded((0.1, 0.2), ge=0, le=1)
    either: float | tuple[float, float] | None = bounded(None, gt=0)
    flag: bool = False
    name: str = "x"

    def __post_init__(self):
        check_fields(self)


@pytest.mark.parametrize("field,value,message", [
    ("kind", "c", "kind: must be one of ('a', 'b'), got 'c'"),
    ("count", 0, "count: must be an int >= 1, got 0"),
    ("count", True, "count: must be an int >= 1, got True"),
    ("count", 1.0, "count: must be an int >= 1, got 1.0"),
    ("rate", 0.0, "rate: must be a finite number > 0 or None, got 0.0"),
    ("rate", float("inf"), "rate: must be a finite number > 0 or None, got inf"),
    ("share", 1.0, "share: must be a finite number in [0, 1), got 1.0"),
    ("share", float("nan"), "share: must be a finite number in [0, 1), got nan"),
    ("widths", (), "widths: must be a non-empty tuple of ints >= 1, got ()"),
    ("widths", (4, 0), "widths: must be a non-empty tuple of ints >= 1, got (4, 0)"),
    ("pair", (0.1,), "pair: must be a pair of finite numbers in [0, 1], got (0.1,)"),
    ("either", (1.0, -1.0), "either: must be a finite number > 0 or a pair of finite numbers > 0 or None"),
    ("flag", 1, "flag: must be True or False, got 1"),
    ("name", 3, "name: must be a string, got 3"),
])
def test_a_value_outside_the_annotation_or_bounds_names_the_field_and_what_it_admits(field, value, message):
    with pytest.raises(ConfigError) as raised:
        Demo(**{field: value})
    assert str(raised.value).startswith(message)
    assert raised.value.field == field


def test_values_inside_the_annotation_and_bounds_are_admitted():
    """Edges included: closed bounds admit the bound, ints stand for floats, None where allowed."""
    Demo(kind="b", count=1, rate=1e-9, share=0.0, widths=(1,), pair=(0, 1), either=2, flag=True, name="")
    Demo(either=(1.0, 2.0))


def test_build_coerces_command_line_values_before_the_check():
    """A list becomes a tuple and an int a float where the annotation says so; the flag is named."""
    assert build(Demo, {"widths": [8, 8], "share": 0}).widths == (8, 8)
    with pytest.raises(ValueError, match=r"^--config\.count: must be an int >= 1, got -2"):
        build(Demo, {"count": -2})


def test_literal_fields_are_parsed_by_config_flags_as_their_choices_type():
    assert isinstance(config_dict(Demo())["kind"], str)


@pytest.mark.parametrize("config_type", [TrainConfig, RLConfig])
def test_every_default_configuration_passes_its_own_checks(config_type):
    check_fields(config_type())
