"""Frozen-dataclass configs: defaults live in code, files and ``--set`` only override.

    cfg = override(RunConfig(), {"model": {"hidden": [64, 32]}})
    cfg = apply_sets(cfg, ["train.lr=0.01", "model.hidden=[64,32]"])

Values are coerced to the field's declared type (int, float, bool, str, Enum, tuple[int, ...], nested
dataclass, or ``X | None``). An unknown key is an error that names the key and the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from adactr.errors import ConfigError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A config as plain JSON-able data (enums by value, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = to_dict(v)
        elif isinstance(v, Enum):
            out[f.name] = v.value
        elif isinstance(v, tuple):
            out[f.name] = [x.value if isinstance(x, Enum) else x for x in v]
        else:
            out[f.name] = v
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot use {value!r}")
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    if not text.endswith("]"):
                        raise ConfigError(f"{key}: {value!r} is not a list") from None
                    # [user_id,item_id]: names need no quotes on a command line
                    value = [v.strip() for v in text[1:-1].split(",") if v.strip()]
            else:
                value = [v for v in text.split(",") if v.strip()] if text else []
        if not isinstance(value, list | tuple):
            value = [value]
        return tuple(_coerce(v, inner, key) for v in value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return override(tp(), value, prefix=key + ".")  # type: ignore[operator]
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value.value if isinstance(value, Enum) else value)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(str(m.value) for m in tp)}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: {value!r} is not a boolean")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: {value!r} is not {tp.__name__}") from None
    return value


def override(cfg: T, values: dict, *, prefix: str = "") -> T:
    """A copy of ``cfg`` with ``values`` (nested mapping) applied; unknown keys are errors."""
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]  # type: ignore[arg-type]
    changes = {}
    for k, v in values.items():
        if k not in names:
            raise ConfigError(f"unknown config key {prefix + k!r}; valid keys: {', '.join(prefix + n for n in names)}")
        tp = hints[k]
        cur = getattr(cfg, k)
        if dataclasses.is_dataclass(cur) and isinstance(v, dict):
            changes[k] = override(cur, v, prefix=f"{prefix}{k}.")
        else:
            changes[k] = _coerce(v, tp, prefix + k)
    try:
        return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def parse_sets(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": "1"}, "c": "x"}`` (strings; :func:`override` coerces)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is both a value and a section")
        node[parts[-1]] = value.strip()
    return out


def load_file(path: Path) -> dict:
    """A YAML / JSON / TOML config file as a mapping."""
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except Exception as e:  # noqa: BLE001 - parser errors vary by format; report them in one line
        raise ConfigError(f"{path}: cannot parse ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
