"""Declared value checks: a config field may name its valid values (`choices`) or range (`ge`, `gt`, `le`, `lt`,
plus `also` for special values outside the range such as max_steps=-1). `check_values` enforces them at parse
time, so a bad value fails in a second with the field, the value and what is valid, not hours into a run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

RANGE_KEYS = ("ge", "gt", "le", "lt")


def _f(default, help_text: str, **rules: Any):
    """A config field with its help string and optional value rules (`choices`, `ge`, `gt`, `le`, `lt`, `also`)."""
    unknown = set(rules) - {"choices", "also", *RANGE_KEYS}
    if unknown:
        raise TypeError(f"unknown field rule(s): {sorted(unknown)}")
    metadata = {"help": help_text, **rules}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def describe_rule(metadata: dict) -> str | None:
    """What a field accepts, in words ("one of: a, b", "a value >= 0 and <= 1"), or None if anything goes."""
    if "choices" in metadata:
        return "one of: " + ", ".join(str(c) for c in metadata["choices"])
    bounds = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{op} {metadata[key]}" for key, op in bounds.items() if key in metadata]
    if not parts:
        return None
    text = "a value " + " and ".join(parts)
    if metadata.get("also"):
        text += " (or " + ", ".join(str(a) for a in metadata["also"]) + ")"
    return text


def _in_range(value: Any, metadata: dict) -> bool:
    if value in metadata.get("also", ()):
        return True
    checks = {
        "ge": lambda bound: value >= bound,
        "gt": lambda bound: value > bound,
        "le": lambda bound: value <= bound,
        "lt": lambda bound: value < bound,
    }
    return all(check(metadata[key]) for key, check in checks.items() if key in metadata)


def field_problem(name: str, value: Any, metadata: dict) -> str | None:
    """Why `value` is not valid for the field `name` (None if it is)."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            return f"field '{name}': expects a finite number, got {item!r}"
        if "choices" in metadata and item not in metadata["choices"]:
            return f"field '{name}': expects {describe_rule(metadata)}; got {item!r}"
        if isinstance(item, (int, float)) and not _in_range(item, metadata):
            return f"field '{name}': expects {describe_rule(metadata)}; got {item!r}"
    return None


def field_rules(cls: type, name: str) -> dict:
    """The rules of field `name` of the dataclass `cls`: those of the nearest class up the hierarchy that
    declares the field with rules. A recipe that only changes a group's default (PPO's learning_rate) keeps
    the group's rules; one that declares rules of its own (PPO's max_steps) replaces them."""
    for base in cls.__mro__:
        if name in vars(base).get("__annotations__", {}):
            rules = {k: v for k, v in base.__dataclass_fields__[name].metadata.items() if k != "help"}
            if rules:
                return rules
    return {}


def check_values(cfg: Any) -> None:
    """Raise ValueError for the first field of the dataclass `cfg` whose value breaks its declared rules."""
    for f in dataclasses.fields(cfg):
        problem = field_problem(f.name, getattr(cfg, f.name), field_rules(type(cfg), f.name))
        if problem:
            raise ValueError(problem)
