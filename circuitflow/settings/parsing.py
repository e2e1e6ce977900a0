"""Parsing a params.yaml mapping into a frozen dataclass: types, bounds, and one sentence per
mistake with the closest known key for a misspelt one."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Literal


class SettingsError(ValueError):
    """A mistake in params.yaml; the message is one sentence naming the setting and the fix."""


def setting(default: Any = dataclasses.MISSING, *, low: float | None = None, high: float | None = None,
            key: str | None = None, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with bounds (``low <= value <= high``) and, where params.yaml spells it
    otherwise (``eap-ig``), its key."""
    metadata = {"low": low, "high": high, "key": key}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def _closest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(word), known, n=1, cutoff=0.5)
    hint = f"did you mean `{close[0]}`? " if close else ""
    return f"{hint}known keys: {', '.join(known) or 'none'}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def parse(cls: type, value: Any, where: str) -> Any:
    """``value`` (a params.yaml mapping) as an instance of dataclass ``cls``, every field checked."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise SettingsError(f"`{where}` must be a mapping of settings, not {_show(value)}.")
    value = cls.prepare(value, where) if hasattr(cls, "prepare") else value
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = [_key(f) for f in fields if not _key(f).startswith("__")]
    for key in value:
        if key not in known:
            raise SettingsError(f"`{_join(where, key)}` is not a setting: {_closest(key, known)}.")
    hints = typing.get_type_hints(cls)
    parsed = {}
    for f in fields:
        if _key(f) in value:
            parsed[f.name] = _convert(hints[f.name], value[_key(f)], _join(where, _key(f)), f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SettingsError(f"`{_join(where, _key(f))}` is missing; add it ({_describe(hints[f.name])}).")
    instance = cls(**parsed)
    if hasattr(instance, "check"):
        instance.check(where)
    return instance


def _show(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _describe(kind: Any) -> str:
    """A type as a user reads it: 'an integer', 'one of zero, mean, resample', ..."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "one of " + ", ".join(member.value for member in kind)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(arg) for arg in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if kind in names:
        return names[kind]
    return "a mapping" if dataclasses.is_dataclass(kind) else str(kind)


def _convert(kind: Any, value: Any, where: str, metadata: Mapping = types.MappingProxyType({})) -> Any:
    """``value`` checked against type ``kind`` (and its bounds); a mismatch is one sentence."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:  # X | None: X's own error says what is wrong
            return _convert(candidates[0], value, where, metadata)
        for arg in candidates:
            try:
                return _convert(arg, value, where, metadata)
            except SettingsError:
                continue
        raise SettingsError(f"`{where}` must be {_describe(kind)}, got {_show(value)}.")
    if dataclasses.is_dataclass(kind):
        return parse(kind, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"`{where}` must be {_describe(kind)}, got {_show(value)}.")
        return tuple(_convert(args[0], item, f"{where}[{i}]", metadata) for i, item in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise SettingsError(f"`{where}` must be a mapping, got {_show(value)}.")
        return types.MappingProxyType({str(k): _convert(args[1], v, _join(where, str(k))) for k, v in value.items()})
    return _scalar(kind, value, where, metadata)


def _scalar(kind: Any, value: Any, where: str, metadata: Mapping) -> Any:
    if typing.get_origin(kind) is Literal:
        if value not in typing.get_args(kind):
            raise SettingsError(f"`{where}` must be {_describe(kind)}, got {_show(value)}.")
        return value
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            raise SettingsError(f"`{where}` must be {_describe(kind)}, got {_show(value)}.") from None
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}[kind]
    if not ok(value):
        raise SettingsError(f"`{where}` must be {_describe(kind)}, got {_show(value)}.")
    value = float(value) if kind is float else value
    low, high = metadata.get("low"), metadata.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"at most {high}" if low is None else f"between {low} and {high}"
        raise SettingsError(f"`{where}` must be {bounds}, got {value!r}.")
    return value
