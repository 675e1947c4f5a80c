"""Read YAML files and build dataclasses from their mappings, rejecting duplicate keys, unknown
keys, wrong types and bad ranges.

Limits live next to each field as metadata (``min``, ``max``, ``choices``), so a component
declares its defaults and their bounds in one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from autocompress.errors import ConfigError, did_you_mean

T = TypeVar("T")


_REPR = reprlib.Repr()  # keyword arguments arrive only in Python 3.12
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def _brief(value: Any) -> str:
    """A value as an error message shows it: cut short, whatever its size."""
    return _REPR.repr(value)


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # e.g. str | float: the first type the value is
            for option in inner:
                with contextlib.suppress(ConfigError):
                    return _coerce(value, option, key, where)
            names = " or ".join(_type_name(a) for a in inner)
            raise ConfigError(f"key '{key}' must be {names}, got {_brief(value)} ({where}): fix the value")
        return _coerce(value, inner[0], key, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where, prefix=f"{key}.")
    if origin is tuple:  # tuple[X, ...]: a YAML list of X
        (inner, _) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"key '{key}' must be a list of {_type_name(inner).split(' ', 1)[1]}s, got {_brief(value)} ({where}): fix the value")
        return tuple(_coerce(v, inner, key, where) for v in value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        return value
    if not ok:
        raise ConfigError(f"key '{key}' must be {_type_name(tp)}, got {_brief(value)} ({where}): fix the value")
    return float(value) if tp is float else value


def _check_limits(value: Any, meta: typing.Mapping[str, Any], key: str, where: str) -> None:
    if value is None:
        return
    if isinstance(value, tuple):
        for item in value:
            _check_limits(item, meta, key, where)
        return
    if "choices" in meta and value not in meta["choices"]:
        choices = ", ".join(map(str, meta["choices"]))
        hint = did_you_mean(str(value), map(str, meta["choices"]))
        raise ConfigError(f"key '{key}' is {_brief(value)}{hint} ({where}): use one of {choices}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"key '{key}' is {value}, below its minimum {meta['min']} ({where}): raise it")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"key '{key}' is {value}, above its maximum {meta['max']} ({where}): lower it")


def _closest_hint(key: str, cls: type, prefix: str, fields: dict[str, Any]) -> str:
    """' (did you mean ...?)' for the closest key here or one level down (trials -> search.trials)."""
    hints = typing.get_type_hints(cls)
    candidates = {name: f"{prefix}{name}" for name in fields}
    for name in fields:
        if dataclasses.is_dataclass(hints[name]):
            for inner in dataclasses.fields(hints[name]):
                candidates.setdefault(inner.name, f"{prefix}{name}.{inner.name}")
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{candidates[close[0]]}'?)" if close else ""


def from_mapping(cls: type[T], data: Any, where: str, prefix: str = "") -> T:
    """Instantiate ``cls`` from a mapping; ``where`` names the file for error messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        section = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"'{section}' must be a mapping of keys to values, got {_brief(data)} ({where}): fix its layout")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            hint = _closest_hint(str(key), cls, prefix, fields)
            known = ", ".join(fields)
            raise ConfigError(f"unknown key '{full}'{hint} ({where}): known keys here are {known}")
        value = _coerce(value, hints[key], full, where)
        _check_limits(value, fields[key].metadata, full, where)
        kwargs[key] = value
    return cls(**kwargs)


MAX_YAML_NODES = 100_000  # a config or space file has hundreds; aliases count each time they expand


def _expanded_nodes(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes ``node`` stands for once every alias is expanded, counted without
    expanding (an alias is the same node object again: its count is remembered)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a node that reaches itself (a recursive alias) counts once, then grows
    if isinstance(node, yaml.MappingNode):
        count = 1 + sum(_expanded_nodes(k, memo) + _expanded_nodes(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        count = 1 + sum(_expanded_nodes(v, memo) for v in node.value)
    else:
        count = 1
    memo[id(node)] = min(count, MAX_YAML_NODES + 1)
    return memo[id(node)]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently),
    and a document whose aliases expand past MAX_YAML_NODES (a "billion laughs" file: each use of
    the result, an error message's repr included, would otherwise expand it)."""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None and _expanded_nodes(node, {}) > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"the document expands to more than {MAX_YAML_NODES} values through its aliases", node.start_mark
            )
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (dict, list)):
                raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning every failure into a one-line ConfigError naming the file."""
    if path.is_dir():
        raise ConfigError(f"expected a YAML file, got a folder ({path}): name the file inside it")
    if not path.is_file():
        hint = "" if path.parent.is_dir() else f" (folder '{path.parent}' does not exist either)"
        raise ConfigError(f"file not found ({path}){hint}: check the path or run from the project folder")
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        fix = "keep one of them" if "twice" in problem else "write the values out" if "aliases" in problem else "fix the YAML syntax"
        raise ConfigError(f"{problem} ({path}{line}): {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file ({path}): {exc}") from None
