"""Typed configs: dataclasses loaded from YAML and overridden from the command line.

``load_config(MyConfig, "recipe.yaml", ["ppo.lr=3e-4", "seed=2"])`` builds a ``MyConfig``:

- nested dataclasses are nested mappings in YAML and dotted keys in overrides;
- an override's value is parsed as YAML (``3e-4`` -> float, ``[1, 2]`` -> list, ``null`` -> None);
- an unknown key, a wrong type or a malformed file is a ``UserError`` whose one-line message
  names the offending key and the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sppo_bench.errors import UserError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against ``annotation`` and convert where lossless (int -> float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"config key {key!r} may not be null")
    if origin is typing.Literal:
        if value not in args:
            valid = ", ".join(str(a) for a in args)
            raise UserError(f"config key {key!r} is {value!r}; valid: {valid}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise UserError(f"config key {key!r} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise UserError(f"config section {key!r} must be a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"config key {key!r} must be a string, got {value!r}")
        return value
    return value


def renamed_keys(cls: type) -> dict[str, str]:
    """``cls.RENAMED``: an old (dotted) key -> its new dotted key, both relative to ``cls``. Old
    keys in files and overrides keep working: their values move to the new key."""
    return dict(getattr(cls, "RENAMED", {}))


def retired_keys(cls: type) -> dict[str, str]:
    """``cls.RETIRED``: an old field name -> the one-line message that names its replacement."""
    return dict(getattr(cls, "RETIRED", {}))


def _move_renamed(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(data))
    for old, new in renamed_keys(cls).items():
        *old_path, old_last = old.split(".")
        node = out
        for key in old_path:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or old_last not in node:
            continue
        value = node.pop(old_last)
        *path, last = new.split(".")
        target = out
        for key in path:
            target = target.setdefault(key, {})
        target.setdefault(last, value)
    for old, message in retired_keys(cls).items():
        if old in out:
            raise UserError(message)
    return out


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error naming the valid ones."""
    fields = _field_types(cls)
    data = _move_renamed(cls, data)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"section {prefix[:-1]!r}" if prefix else "the config"
        raise UserError(
            f"unknown config key {prefix}{unknown[0]!r} in {where}; valid: {', '.join(fields)}"
        )
    kwargs = {k: _coerce(v, fields[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain nested dicts (for YAML)."""
    return dataclasses.asdict(config)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, cls: type) -> None:
    for old, new in renamed_keys(cls).items():
        if dotted == old or dotted.startswith(old + "."):
            dotted = new + dotted[len(old) :]
    parts = dotted.split(".")
    node, node_cls = data, cls
    for i, part in enumerate(parts):
        fields = _field_types(node_cls) if dataclasses.is_dataclass(node_cls) else {}
        if part not in fields and part in renamed_keys(node_cls):
            parts[i : i + 1] = renamed_keys(node_cls)[part].split(".")
            part = parts[i]
        if part not in fields and part in retired_keys(node_cls):
            raise UserError(retired_keys(node_cls)[part])
        if part not in fields:
            where = ".".join(parts[:i]) or "the config"
            raise UserError(
                f"unknown config key {dotted!r} ({part!r} is not in {where}); "
                f"valid: {', '.join(fields)}"
            )
        if i == len(parts) - 1:
            node[part] = value
            return
        node_cls = fields[part]
        if typing.get_origin(node_cls) is dict:  # a free-form table: the rest are its keys
            node = node.setdefault(part, {})
            for key in parts[i + 1 : -1]:
                node = node.setdefault(key, {})
            node[parts[-1]] = value
            return
        if not dataclasses.is_dataclass(node_cls):
            raise UserError(f"config key {'.'.join(parts[: i + 1])!r} has no sub-keys")
        node = node.setdefault(part, {})


def parse_overrides(overrides: Iterable[str], cls: type) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested dict, checking every key against ``cls``."""
    data: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        except ValueError as exc:  # e.g. an integer of more than 4,300 digits
            raise UserError(f"override {key.strip()!r}: {str(exc).split(';')[0]}") from None
        _set_dotted(data, key.strip(), value, cls)
    return data


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a one-line ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        msg = str(exc).split(";")[0]
        raise UserError(f"config file {str(path)!r}: {msg}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Defaults of ``cls`` <- ``base`` mapping <- YAML file ``path`` <- ``overrides``."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = _merge(data, read_yaml(path))
    data = _merge(data, parse_overrides(overrides, cls))
    return from_dict(cls, data)


def yaml_round_trip(data: Any) -> Any:
    """``data`` as it reads back from YAML (tuples become lists, ...): what a stored
    ``config.yaml`` is compared against."""
    return yaml.safe_load(yaml.safe_dump(data, sort_keys=False))


def write_yaml_atomic(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write ``data`` as YAML to ``path`` via a temp file and rename."""
    from sppo_bench.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dict(data), sort_keys=False))


# ---------------------------------------------------------------- value bounds
Bound = tuple[typing.Callable[[Any], bool], str]  # (accepts value, what is valid)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def at_least(n: int, most: int | None = None) -> Bound:
    """An integer >= ``n`` (and <= ``most``: counts whose memory or time grows with them)."""
    high = math.inf if most is None else most
    valid = f"an integer >= {n}" if most is None else f"an integer from {n} to {most:,}"
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and n <= v <= high), valid


FINITE: Bound = _finite, "a finite number"
POSITIVE: Bound = (lambda v: _finite(v) and v > 0), "a finite number > 0"
NON_NEGATIVE: Bound = (lambda v: _finite(v) and v >= 0), "a finite number >= 0"
UNIT: Bound = (lambda v: _finite(v) and 0 < v <= 1), "a number in (0, 1]"
PROBABILITY: Bound = (lambda v: _finite(v) and 0 <= v <= 1), "a number in [0, 1]"
ABOVE_ONE: Bound = (lambda v: _finite(v) and v > 1), "a number > 1"
LEARNING_RATE: Bound = (lambda v: _finite(v) and 0 < v <= 10), "a number in (0, 10]"


def optional(bound: Bound) -> Bound:
    """``bound``, or null."""
    accepts, valid = bound
    return (lambda v: v is None or accepts(v)), f"null or {valid}"


def check_bounds(config: Any, bounds: Mapping[str, Bound]) -> None:
    """A one-line ``UserError`` for the first dotted key of ``bounds`` whose value in the
    (nested dataclass) ``config`` is out of range, naming the value and what is valid."""
    for key, (accepts, valid) in bounds.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if not accepts(value):
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
            raise UserError(f"{key}={shown} is out of range; valid: {valid}")
