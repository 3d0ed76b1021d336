"""Declared value ranges, checked generically, and unknown keys answered with the nearest one.

Each numeric setting declares its valid interval once, where it is defined:

- a dataclass field: `seed: int = ranged(1337, "[0, 4294967295]")`
  (`dataclasses.field` with the interval in its metadata);
- an argument of a factory that conf/ names as a `_partial_` (optimizers, schedules) or a
  class that conf/ instantiates: `@ranged_args(lr="(0, inf)", betas="[0, 1)")`.

`check_fields` (a dataclass instance) and `check_arguments` (a factory's keyword arguments)
test values against them; `declared_ranges` reads them from either kind of target, so an entry
point can check a whole composed config before instantiating anything. Intervals are written
as in mathematics, "[1, inf)", "(0, 1]", and the error repeats them:
`trainer.grad_clip=-1.0 is invalid: must be in [0, inf)`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

RANGE = "range"  # the dataclass field metadata key


class ConfigError(ValueError):
    """A configuration value is out of its valid range; the message names the field."""


@dataclass(frozen=True)
class Interval:
    """A closed, open or half-open interval of numbers; `inf` bounds are open."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> Interval:
        """ "[1, inf)", "(0, 1]", "[-inf, 0)": brackets are closed ends, parentheses open ones."""
        text = text.strip()
        low, high = (part.strip() for part in text[1:-1].split(","))
        interval = cls(_number(low), _number(high), text[0] == "[", text[-1] == "]")
        if text[0] not in "[(" or text[-1] not in ")]" or not interval.low <= interval.high:
            raise ValueError(f"interval {text!r} is not of the form [low, high) with low <= high")
        return interval

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        def bound(x: float) -> str:
            if math.isinf(x):
                return "-inf" if x < 0 else "inf"
            return str(x) if isinstance(x, int) else f"{x:g}"

        left, right = "[" if self.low_closed else "(", "]" if self.high_closed else ")"
        return f"{left}{bound(self.low)}, {bound(self.high)}{right}"


def _number(text: str) -> float:
    """An int when the text is one (exact bounds such as 2**32 - 1), else a float ("inf")."""
    try:
        return int(text)
    except ValueError:
        return float(text)


@dataclass(frozen=True)
class Spec:
    """What a value must be: in `interval`; an integer when `integer`; None allowed when
    `optional`; a list/tuple of such numbers (of `length` items when given) when `sequence`."""

    interval: Interval
    integer: bool = False
    optional: bool = False
    sequence: bool = False
    length: int | None = None


def ranged(default: Any, interval: str) -> Any:
    """A dataclass field defaulting to `default` whose value must lie in `interval`, e.g.
    `ranged(0.02, "(0, inf)")`; None is valid too when the field's type allows it."""
    return field(default=default, metadata={RANGE: Interval.parse(interval)})


def ranged_args(**intervals: str) -> Callable[[Callable], Callable]:
    """Declare the valid interval of keyword arguments of a factory or class; calls are checked
    too, so the library refuses a bad value without Hydra."""

    def declare(target: Callable) -> Callable:
        parsed = {name: Interval.parse(text) for name, text in intervals.items()}
        function = target.__init__ if inspect.isclass(target) else target
        unknown = set(parsed) - set(inspect.signature(function).parameters)
        if unknown:
            raise TypeError(f"{target.__qualname__} has no arguments {sorted(unknown)}")

        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            bound = inspect.signature(function).bind(*args, **kwargs)
            check_arguments(checked, bound.arguments, _label(target))
            return function(*args, **kwargs)

        checked.__ranges__ = parsed  # type: ignore[attr-defined]
        if inspect.isclass(target):
            target.__init__ = checked
            return target
        return checked

    return declare


def _label(target: Callable) -> str:
    return getattr(target, "__name__", "config")


def _spec(interval: Interval, annotation: Any) -> Spec:
    """The Spec of a value annotated `annotation` (int, float, X | None, tuple[float, float])."""
    args = typing.get_args(annotation)
    optional = type(None) in args or annotation is None
    members = [a for a in args if a is not type(None)] if _is_union(annotation) else [annotation]
    sequence, length, element = False, None, members[0] if members else float
    origin = typing.get_origin(element)
    if origin in (tuple, list):
        items = [a for a in typing.get_args(element) if a is not Ellipsis]
        sequence = True
        length = (
            len(items) if origin is tuple and Ellipsis not in typing.get_args(element) else None
        )
        element = items[0] if items else float
    return Spec(interval, element is int, optional, sequence, length)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def field_ranges(cls: type) -> dict[str, Spec]:
    """Each ranged field of a dataclass and its Spec."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: _spec(f.metadata[RANGE], hints.get(f.name, float))
        for f in fields(cls)
        if RANGE in f.metadata
    }


def argument_ranges(function: Callable) -> dict[str, Spec]:
    """Each argument declared by @ranged_args and its Spec."""
    function = function.__init__ if inspect.isclass(function) else function
    intervals = getattr(function, "__ranges__", {})
    parameters = inspect.signature(function, eval_str=True).parameters
    return {
        name: _spec(interval, parameters[name].annotation) for name, interval in intervals.items()
    }


def declared_ranges(target: Callable) -> dict[str, Spec]:
    """The declared ranges of a dataclass's fields or of a factory's (or class's) arguments."""
    return field_ranges(target) if is_dataclass(target) else argument_ranges(target)


def accepted_keys(target: Callable) -> list[str]:
    """The keys a config node may set for `target`: dataclass fields or keyword arguments."""
    if is_dataclass(target):
        return [f.name for f in fields(target) if f.init]
    function = target.__init__ if inspect.isclass(target) else target
    parameters = inspect.signature(function).parameters.values()
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_value(name: str, value: Any, spec: Spec, error: type[Exception] = ConfigError) -> None:
    """Raise `error` naming `name`, the value and its valid range unless value fits spec."""
    if value is None and spec.optional:
        return
    kind = "an integer" if spec.integer else "a number"
    if spec.sequence:
        if not isinstance(value, list | tuple) or (spec.length and len(value) != spec.length):
            count = f"{spec.length} " if spec.length else ""
            raise error(
                f"{name}={value!r} is invalid: must be a list of {count}numbers in {spec.interval}"
            )
        for item in value:
            if not _fits(item, spec):
                raise error(f"{name}={value!r} is invalid: each must be {kind} in {spec.interval}")
        return
    if not _fits(value, spec):
        none = " (or null)" if spec.optional else ""
        raise error(f"{name}={value!r} is invalid: must be {kind} in {spec.interval}{none}")


def _fits(value: Any, spec: Spec) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if spec.integer and not isinstance(value, int):
        return False
    return value in spec.interval


def check_fields(config: Any, prefix: str, error: type[Exception] = ConfigError) -> None:
    """Check every ranged field of a dataclass instance; errors read `prefix.field=value`."""
    for name, spec in field_ranges(type(config)).items():
        check_value(_join(prefix, name), getattr(config, name), spec, error)


def check_arguments(
    target: Callable, values: Mapping[str, Any], prefix: str, error: type[Exception] = ConfigError
) -> None:
    """Check the given keyword arguments of a @ranged_args factory (absent ones keep defaults)."""
    for name, spec in declared_ranges(target).items():
        if name in values:
            check_value(_join(prefix, name), values[name], spec, error)


INSTANTIATE_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def check_config(
    node: Mapping[str, Any], schema: Callable, prefix: str = "", extra_keys: Iterable[str] = ()
) -> None:
    """Check a composed config (plain, resolved containers) against `schema` before anything is
    built: every key must be accepted (a near miss is named: "did you mean ...?") and every
    declared range hold, recursively through dataclass fields and `_target_` nodes (optimizer,
    schedule and logger factories included). `extra_keys`: other names valid at this level
    (config groups). Raises ConfigError naming the first bad key or value."""
    keys = accepted_keys(schema)
    if node.get("_partial_"):  # its first argument (model, optimizer) is the trainer's to give
        keys = keys[1:]
    for key in node:
        if key in extra_keys and key not in keys:
            raise ConfigError(f"{key} is a config group, not a key: choose an option, {key}=NAME")
        if key not in keys and key not in INSTANTIATE_KEYS:
            raise ConfigError(unknown_key_message(prefix, str(key), [*keys, *extra_keys]))
    check_arguments(schema, node, prefix)
    hints = typing.get_type_hints(schema) if is_dataclass(schema) else {}
    children = [(key, value, _node_target(value, hints.get(key))) for key, value in node.items()]
    # settings before the factories that may copy them (schedule.total_steps: trainer.max_steps)
    children.sort(key=lambda child: not is_dataclass(child[2]))
    for key, value, target in children:
        if target is not None:
            check_config(value, target, _join(prefix, str(key)))
        elif isinstance(value, Mapping):  # named targets side by side: logger=[wandb,csv]
            for name, child in value.items():
                child_target = _node_target(child, None)
                if child_target is not None:
                    check_config(child, child_target, _join(_join(prefix, str(key)), str(name)))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _node_target(value: Any, annotation: Any) -> Callable | None:
    """What a sub-node configures: its `_target_` (imported), else its dataclass annotation."""
    if not isinstance(value, Mapping):
        return None
    if isinstance(value.get("_target_"), str):
        return locate(value["_target_"])
    return annotation if is_dataclass(annotation) else None


def locate(path: str) -> Callable:
    """The object a `_target_` names (module.attribute), or ConfigError naming it."""
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"_target_={path!r} is not an importable object: {error}") from error


def nearest(key: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest in spelling to key, if any is close (difflib's ratio >= 0.6)."""
    matches = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_message(prefix: str, key: str, candidates: Iterable[str]) -> str:
    """`model.num_expert is not a valid key: did you mean model.num_experts? (valid: ...)`."""
    candidates = sorted(c for c in candidates if not c.startswith("_"))
    guess = nearest(key, candidates)
    hint = f"did you mean {_join(prefix, guess)}?" if guess else "no valid key is close"
    return f"{_join(prefix, key)} is not a valid key: {hint} (valid keys: {', '.join(candidates)})"


__all__ = [
    "ConfigError",
    "Interval",
    "Spec",
    "accepted_keys",
    "argument_ranges",
    "check_arguments",
    "check_config",
    "check_fields",
    "check_value",
    "declared_ranges",
    "field_ranges",
    "locate",
    "nearest",
    "ranged",
    "ranged_args",
    "unknown_key_message",
]
