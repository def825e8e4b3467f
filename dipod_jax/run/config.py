"""Run configurations: a frozen dataclass per run kind, checked once on construction, overridden from the
command line with ml_collections' config_flags.

Details: docs/modules.md, section dipod_jax.run.config.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar, cast

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_dict import placeholder

from dipod_jax.run.program import exit_usage_error

CONFIG_FLAG = "config"
_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration field with a value it refuses; `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def require(condition: bool, field: str, value: Any, requirement: str) -> None:
    """ConfigError "<field>: must be <requirement>, got <value>" unless `condition`."""
    if not condition:
        raise ConfigError(field, f"must be {requirement}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Limits on a numeric field (on each number of a tuple field); None: no limit on that side."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def admits(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def text(self) -> str:
        low, low_closed = (self.ge, True) if self.ge is not None else (self.gt, False)
        high, high_closed = (self.le, True) if self.le is not None else (self.lt, False)
        if low is not None and high is not None:
            return f" in {'[' if low_closed else '('}{low:g}, {high:g}{']' if high_closed else ')'}"
        if low is not None:
            return f" {'>=' if low_closed else '>'} {low:g}"
        if high is not None:
            return f" {'<=' if high_closed else '<'} {high:g}"
        return ""


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field with `default` whose numbers must lie within the given bounds (`check_fields`)."""
    return dataclasses.field(default=default, metadata={"bounds": Bounds(ge, gt, le, lt)})


def _is_union(hint: Any) -> bool:
    """Whether an annotation is a union (`X | Y`, `Optional[X]`, `Union[X, Y]`)."""
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _fits(hint: Any, value: Any, bounds: Bounds) -> bool:
    """Whether `value` is of the annotated type (Literal choices, tuples element-wise, X | None) within bounds."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(hint):
        return any(_fits(arg, value, bounds) for arg in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return len(value) > 0 and all(_fits(args[0], item, bounds) for item in value)
        return len(value) == len(args) and all(_fits(a, item, bounds) for a, item in zip(args, value, strict=True))
    if hint is bool or hint is str:
        return isinstance(value, hint)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and bounds.admits(value)
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and bounds.admits(value))
    raise TypeError(f"check_fields: unsupported annotation {hint!r}")


def _describe(hint: Any, bounds: Bounds, plural: bool = False) -> str:
    """What `_fits` admits, in words: "an int >= 1", "one of ('a', 'b') or None", "a pair of numbers in [0, 1)"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(hint):
        parts = [_describe(arg, bounds, plural) for arg in args if arg is not type(None)]
        return " or ".join(parts + (["None"] if type(None) in args else []))
    if origin is typing.Literal:
        return f"one of {args}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a non-empty tuple of {_describe(args[0], bounds, plural=True)}"
        kind = "pair" if len(args) == 2 else f"tuple of {len(args)}"
        return f"a {kind} of {_describe(args[0], bounds, plural=True)}"
    words = {bool: ("True or False", "booleans"), str: ("a string", "strings"), int: ("an int", "ints"),
             float: ("a finite number", "finite numbers")}[hint]
    return words[plural] + (bounds.text() if hint in (int, float) else "")


def check_fields(config: Any) -> None:
    """ConfigError "<field>: must be <what the field admits>, got <value>" for the first field of the dataclass
    instance `config` whose value does not fit its annotation (type, Literal choices, tuple shape, None where
    the annotation allows it) or the Bounds declared on it with `bounded`. Cross-field rules stay with the
    configuration that has them."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, bounds = getattr(config, field.name), field.metadata.get("bounds", Bounds())
        if not _fits(hints[field.name], value, bounds):
            raise ConfigError(field.name, f"must be {_describe(hints[field.name], bounds)}, got {value!r}")


def _field_kind(hint: Any) -> type:
    """The type config_flags parses a field as: X | None and unions take any literal (object); Literal choices
    the type of the choices; tuple[...] is tuple; plain types are themselves."""
    origin = typing.get_origin(hint)
    if _is_union(hint):
        return object
    if origin is typing.Literal:
        return type(typing.get_args(hint)[0])
    return origin or hint


def config_dict(config: Any) -> ml_collections.ConfigDict:
    """The fields of a dataclass instance as a ConfigDict whose field types config_flags parses: a None value
    becomes a placeholder of type object (any literal, None included), a float field holds a float."""
    hints = typing.get_type_hints(type(config))
    fields = {}
    for field in dataclasses.fields(config):
        value, kind = getattr(config, field.name), _field_kind(hints[field.name])
        if value is None or kind is object:
            fields[field.name] = placeholder(object)
            if value is not None:
                fields[field.name].set(value)
        else:
            fields[field.name] = float(value) if kind is float else value
    return ml_collections.ConfigDict(fields)


def define_config_flag(defaults: Any, flag_values: flags.FlagValues = flags.FLAGS,
                       argv: Sequence[str] | None = None) -> flags.FlagHolder:
    """Registers --config (config_flags.DEFINE_config_dict) with the fields of `defaults`, a dataclass instance;
    each --config.<field>=<value> overrides one field. config_flags reads the overrides from the command line
    (`argv`, default sys.argv) right here, so a name that is no field is reported now: one line naming the
    flag, exit status 2."""
    argv = sys.argv if argv is None else list(argv)
    try:
        check_config_flag_names(argv[1:], [field.name for field in dataclasses.fields(defaults)])
    except ValueError as error:
        exit_usage_error(error)
    return config_flags.DEFINE_config_dict(
        CONFIG_FLAG, config_dict(defaults),
        f"{type(defaults).__name__} fields, each overridden by --{CONFIG_FLAG}.<field>=<value>.",
        flag_values=flag_values, sys_argv=argv)


def flag_overrides(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """{field: value} of every --config.<field>=<value> given on the command line (after parsing)."""
    return dict(cast(Any, flag_values[CONFIG_FLAG]).override_values)


def check_config_flag_names(argv: Iterable[str], known: Iterable[str]) -> None:
    """ValueError naming the flag for a --config.<name> in `argv` whose name is not in `known`."""
    known = list(known)
    prefixes = (f"--{CONFIG_FLAG}.", f"-{CONFIG_FLAG}.", f"--no{CONFIG_FLAG}.")
    for argument in argv:
        if argument == "--":
            return
        prefix = next((p for p in prefixes if argument.startswith(p)), None)
        if prefix is None:
            continue
        name = argument[len(prefix):].split("=", 1)[0].split(".", 1)[0]
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean --{CONFIG_FLAG}.{close[0]}?)" if close else ""
            raise ValueError(f"--{CONFIG_FLAG}.{name} is not a setting{hint}; the settings are the fields of "
                             f"--{CONFIG_FLAG}: {', '.join(sorted(known))}")


def field_defaults(config_type: type) -> types.SimpleNamespace:
    """The defaults of a dataclass's fields, by name (for flags whose defaults are the fields'; fields without
    one are absent)."""
    return types.SimpleNamespace(**{field.name: field.default for field in dataclasses.fields(config_type)
                                    if field.default is not dataclasses.MISSING})


def _coerce(hint: Any, value: Any) -> Any:
    """`value` in the annotated type where the command line or JSON gives another: list -> tuple, int -> float."""
    kinds = typing.get_args(hint) if _is_union(hint) else (hint,)
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool) and float in kinds and int not in kinds:
        return float(value)
    return value


def build(config_type: type[_T], fields: dict[str, Any], flag: str = f"--{CONFIG_FLAG}") -> _T:
    """`config_type(**fields)` with the values coerced to the annotated types; ValueError naming the flag
    ("--config.<field>: ...") for an unknown field or a value the dataclass refuses."""
    hints = typing.get_type_hints(config_type)
    unknown = sorted(set(fields) - set(hints))
    if unknown:
        raise ValueError(f"{', '.join(f'{flag}.{name}' for name in unknown)}: not a field of "
                         f"{config_type.__name__}")
    values = {name: _coerce(hints[name], value) for name, value in fields.items()}
    try:
        return config_type(**values)
    except ConfigError as error:
        raise ValueError(f"{flag}.{error}") from error
    except TypeError as error:  # a value of a type the checks cannot even compare
        raise ValueError(f"{flag}: {error}") from error
