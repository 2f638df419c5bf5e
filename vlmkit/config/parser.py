"""Typed dataclass configs: `--config file.yaml` plus `--<field> value` overrides.

Every field carries a help string in `field(metadata={"help": ...})`. Unknown keys, in the YAML file or on
the command line, are rejected with the list of valid names. The resolved config is written next to every
run's outputs so a run can be repeated exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vlmkit.config.checks import check_values

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or command line that cannot be turned into a config."""


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML or the command line) to type `tp`, or raise ConfigError naming `where`."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or base is Any:
            return None
        raise ConfigError(f"{where}: expects {getattr(base, '__name__', base)}, got null")
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(base) or (Any,)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expects a list, got {value!r}")
        # "a,b" means two items, in YAML and on the command line alike.
        value = [p for v in value for p in (v.split(",") if isinstance(v, str) else [v]) if p != ""]
        return [_coerce(v, item_tp, where) for v in value]
    if origin is dict or base is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expects a mapping, got {value!r}")
        return dict(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expects true/false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expects an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expects an integer, got {value!r}") from None
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expects a number, got {value!r}") from None
    if base is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expects a string, got {value!r}")
        return str(value)
    return value


def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"{where}: unknown key '{key}'.{hint} Valid keys: {', '.join(sorted(valid))}"


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def config_from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """Build `cls` from a mapping, rejecting unknown keys, wrong types and values outside a field's rules."""
    types_by_name = _field_types(cls)
    aliases: dict[str, str] = getattr(cls, "ALIASES", {})
    kwargs = {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name not in types_by_name:
            raise ConfigError(_unknown_key_message(key, list(types_by_name), where))
        kwargs[name] = _coerce(value, types_by_name[name], f"{where}: field '{name}'")
    try:
        cfg = cls(**kwargs)
        check_values(cfg)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level")
    return data


def _build_argparser(cls: type, prog: str | None, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--config", help="YAML file with any of the fields below; flags override it.")
    inverse_aliases: dict[str, list[str]] = {}
    for alias, name in getattr(cls, "ALIASES", {}).items():
        inverse_aliases.setdefault(name, []).append(alias)
    types_by_name = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, _ = _unwrap_optional(types_by_name[f.name])
        flags = [f"--{f.name}"] + [f"--{a}" for a in inverse_aliases.get(f.name, [])]
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif typing.get_origin(tp) in (list, tuple):
            kwargs.update(nargs="+")
        parser.add_argument(*flags, **kwargs)
    return parser


def parse_config(
    cls: type[C], argv: list[str] | None = None, *, prog: str | None = None, description: str | None = None
) -> C:
    """Parse `--config file.yaml` and `--<field> value` overrides into a `cls` instance.

    Precedence: dataclass defaults < YAML file < command line.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _build_argparser(cls, prog, description)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        flag = next((u for u in unknown if u.startswith("--")), unknown[0])
        raise ConfigError(_unknown_key_message(flag.lstrip("-").split("=")[0], valid, "command line"))
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_yaml(args.config))
    cli = {k: v for k, v in vars(args).items() if k != "config"}
    # YAML keys may use aliases; resolve them before the command line overrides.
    aliases: dict[str, str] = getattr(cls, "ALIASES", {})
    values = {aliases.get(k, k): v for k, v in values.items()}
    values.update(cli)
    return config_from_dict(cls, values, where=args.config or "command line")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as a plain mapping (what `save_config` writes)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
