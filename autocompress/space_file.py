"""Search-space files: the knob grammar and the checks of what a file says, before any model.
Search spaces: ``search_spaces/*.yaml`` x the model's layers -> Optuna distributions -> plans.

A space file says which layers to compress (globs on module names) and the knobs each gets::

    layers: ["*"]                 # globs on qualified module names (Linear and Conv2d only)
    exclude: []                   # globs taken out of the selection
    knobs:
      sparsity: {low: 0.0, high: 0.95, step: 0.05}
      sparsity_mode: unstructured         # or channel (removes output channels), or a list of both
      bits: [2, 3, 4, 5, 6, 8, 32]        # 32 = not quantized
      rank: {low: 0.1, high: 1.0, step: 0.1}   # fraction of full rank; 1.0 = not factorized
      quant_mode: [uniform, kmeans]       # integer grid, a k-means codebook (weight sharing), or ternary
      lowrank_mode: [svd, tucker]         # two factors, or Tucker-2 of a conv (1x1, kxk, 1x1)
      importance: [l1, taylor]            # what ranks pruned weights/channels (l2, fpgm: channels)
      act_bits: [8, 32]                   # int8 targets: integer kernels, or float activations
    overrides:                    # later entries win; each names layers by glob
      - layers: ["fc2"]
        bits: [4, 6, 8, 32]

A knob is a fixed value (``bits: 8``), a list of choices, or a range ``{low, high, step, log}``;
``null`` or leaving it out switches it off. Optuna parameters are named ``<group>.<knob>``.

Groups (``group_by``, ``groups``) and ``@first``/``@last`` selectors are read here and matched
against a model in :mod:`autocompress.space`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna

from autocompress._schema import read_yaml
from autocompress.errors import SpaceError, did_you_mean
from autocompress.plan import ACT_BITS, FULL_PRECISION_BITS, LOWRANK_MODES, QUANT_MODES

KNOBS = ("sparsity", "sparsity_mode", "bits", "rank", "quant_mode", "lowrank_mode", "importance", "act_bits")
SPARSITY_MODES = ("unstructured", "channel")
# Knobs added after the first studies: switched off unless a space names them, and then left out
# of the space's stored form, so studies made before them resume.
OPTIONAL_KNOBS = ("quant_mode", "lowrank_mode", "importance", "act_bits")
SUPPORTED_BITS = (*range(2, 17), FULL_PRECISION_BITS)
MAX_SPARSITY = 0.99
_TOP_KEYS = ("layers", "exclude", "knobs", "overrides", "group_by", "groups")
GROUP_BY = ("layer", "block", "stage", "type")
SELECTORS = ("@first", "@last")


@dataclass(frozen=True)
class Knob:
    """One searchable (or fixed) value: exactly one of ``value``, ``choices`` or ``low``/``high``."""

    value: Any = None
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    @property
    def fixed(self) -> bool:
        return self.choices is None and self.low is None

    @property
    def off(self) -> bool:
        """Switched off: the technique does not apply."""
        return self.fixed and self.value is None

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.low is not None:
            assert self.high is not None
            return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        return self.value

    def snap(self, target: Any) -> Any:
        """The allowed value closest to ``target`` (for warm-start plans)."""
        if self.choices is not None:
            if isinstance(target, str):
                return target if target in self.choices else self.choices[0]
            return min(self.choices, key=lambda c: abs(c - target))
        if self.low is not None:
            assert self.high is not None
            v = min(max(target, self.low), self.high)
            if self.step:
                v = self.low + round((v - self.low) / self.step) * self.step
            return round(v, 10)
        return self.value

    def describe(self) -> str:
        if self.choices is not None:
            return ",".join(map(str, self.choices))
        if self.low is not None:
            step = f"/{self.step:g}" if self.step else ""
            return f"{self.low:g}..{self.high:g}{step}{' log' if self.log else ''}"
        return "off" if self.value is None else f"={self.value}"

    def to_dict(self) -> dict[str, Any]:
        # `is`, not `in (None, False)`: 0.0 == False would drop a range's low of 0.0
        return {k: v for k, v in self.__dict__.items() if v is not None and v is not False}


DEFAULT_KNOBS = {
    "sparsity": Knob(low=0.0, high=0.95, step=0.05),
    "sparsity_mode": Knob(choices=("unstructured", "channel")),
    "bits": Knob(choices=(2, 3, 4, 5, 6, 8, FULL_PRECISION_BITS)),
    "rank": Knob(low=0.1, high=1.0, step=0.1),
}


WORD_KNOBS = ("sparsity_mode", "quant_mode", "lowrank_mode", "importance")


def word_values(name: str) -> tuple[str, ...]:
    """The values a word knob takes (importance: the criteria registry)."""
    if name == "importance":
        from autocompress.compress.importance import IMPORTANCE

        return tuple(IMPORTANCE.names())
    return {"sparsity_mode": SPARSITY_MODES, "quant_mode": QUANT_MODES, "lowrank_mode": LOWRANK_MODES}[name]


def knob_values(knob: Knob) -> tuple[Any, ...]:
    """Every value a knob can take (one for a fixed knob, none when off)."""
    if knob.choices is not None:
        return knob.choices
    return () if knob.value is None else (knob.value,)


def allows_channel(knob: Knob) -> bool:
    return "channel" in knob_values(knob)


@dataclass
class SpaceFile:
    """A parsed, validated space file, not yet matched against a model (:class:`autocompress.space.SpaceSpec` matches it)."""

    layers: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    knobs: dict[str, Knob] = field(default_factory=dict)
    overrides: list[tuple[list[str], dict[str, Knob]]] = field(default_factory=list)
    group_by: str = "layer"
    groups: dict[str, list[str]] = field(default_factory=dict)  # explicit: name -> globs
    source: str = "the built-in default space"


S = TypeVar("S", bound=SpaceFile)


def _parse_knob(name: str, raw: Any, where: str, key: str) -> Knob:
    if raw is None:
        return Knob()
    if name in WORD_KNOBS:
        allowed = word_values(name)
        values = raw if isinstance(raw, list) else [raw]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            shown = bad[0] if bad else "[]"
            both = "unstructured, channel or a list of both" if name == "sparsity_mode" else f"one of {', '.join(allowed)} or a list of them"
            raise SpaceError(f"'{key}' has {shown!r}{did_you_mean(str(shown), allowed)} ({where}): use {both}")
        if len(set(values)) != len(values):
            raise SpaceError(f"'{key}' lists a value twice ({where}): remove the duplicate")
        return Knob(choices=tuple(values)) if isinstance(raw, list) else Knob(value=raw)
    if isinstance(raw, dict):
        unknown = set(raw) - {"low", "high", "step", "log"}
        if unknown:
            bad = sorted(unknown)[0]
            raise SpaceError(
                f"unknown key '{key}.{bad}'{did_you_mean(bad, ['low', 'high', 'step', 'log'])} ({where}): a range has low, high, step, log"
            )
        if "low" not in raw or "high" not in raw:
            raise SpaceError(f"range '{key}' needs both low and high ({where}): e.g. {{low: 0.0, high: 0.9}}")
        for part in ("low", "high", "step"):
            value = raw.get(part)
            if part in raw and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise SpaceError(f"'{key}.{part}' must be a finite number, got {value!r} ({where}): fix the value")
        if not isinstance(raw.get("log", False), bool):
            raise SpaceError(f"'{key}.log' must be true or false, got {raw['log']!r} ({where}): fix the value")
        if name in ("bits", "act_bits") or name in WORD_KNOBS:
            raise SpaceError(f"'{key}' must be a list, not a range ({where}): e.g. [2, 4, 8, 32]")
        knob = Knob(low=float(raw["low"]), high=float(raw["high"]), step=raw.get("step"), log=raw.get("log", False))
        assert knob.low is not None and knob.high is not None
        if knob.low > knob.high:
            raise SpaceError(f"'{key}' has low {knob.low} above high {knob.high} ({where}): swap them")
        if knob.step is not None and knob.step <= 0:
            raise SpaceError(f"'{key}.step' is {knob.step} ({where}): a step must be positive")
        if knob.step is not None and knob.step > knob.high - knob.low and knob.high > knob.low:
            raise SpaceError(f"'{key}.step' {knob.step} is wider than the range {knob.low}..{knob.high} ({where}): use a smaller step")
        if knob.log and (knob.low <= 0 or knob.step is not None):
            raise SpaceError(f"'{key}' is log-scaled, which needs low > 0 and no step ({where}): raise low or drop log")
        _check_values(name, [knob.low, knob.high], where, key)
        return knob
    if isinstance(raw, list):
        if not raw:
            raise SpaceError(f"'{key}' is an empty list ({where}): give at least one value or null to switch it off")
        if len(set(map(repr, raw))) != len(raw):
            raise SpaceError(f"'{key}' lists a value twice ({where}): remove the duplicate")
        _check_values(name, raw, where, key)
        return Knob(choices=tuple(raw))
    _check_values(name, [raw], where, key)
    return Knob(value=raw)


def _check_values(name: str, values: list[Any], where: str, key: str) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpaceError(f"'{key}' has {v!r}, not a number ({where}): fix the value")
        if name == "sparsity" and not 0.0 <= v <= MAX_SPARSITY:
            raise SpaceError(f"'{key}' has sparsity {v}, outside [0, {MAX_SPARSITY}] ({where}): use a share of weights to remove, e.g. 0.5")
        if name == "bits" and (not float(v).is_integer() or int(v) not in SUPPORTED_BITS):
            raise SpaceError(f"'{key}' has {v} bits ({where}): supported bit-widths are 2 to 16, or 32 for not quantized")
        if name == "act_bits" and v not in ACT_BITS:
            raise SpaceError(f"'{key}' has {v} activation bits ({where}): use {', '.join(map(str, ACT_BITS))}")
        if name == "rank" and not (0.0 < v <= 1.0 and math.isfinite(v)):
            raise SpaceError(f"'{key}' has rank {v} ({where}): a rank is a fraction of full rank in (0, 1]; 1.0 means not factorized")


def _parse_knobs(raw: Any, where: str, key: str) -> dict[str, Knob]:
    if not isinstance(raw, dict):
        raise SpaceError(f"'{key}' must be a mapping of knob names to values ({where}): knobs are {', '.join(KNOBS)}")
    knobs = {}
    for name, value in raw.items():
        if name not in KNOBS:
            raise SpaceError(f"unknown knob '{key}.{name}'{did_you_mean(str(name), KNOBS)} ({where}): knobs are {', '.join(KNOBS)}")
        knobs[name] = _parse_knob(name, value, where, f"{key}.{name}")
    _check_kmeans_bits(knobs, where, key)
    return knobs


def _check_kmeans_bits(knobs: dict[str, Knob], where: str, key: str) -> None:
    """Weight sharing with every bit-width at 32 shares nothing: a space that can only ask for
    that is a mistake, not a search."""
    modes, bits = knob_values(knobs.get("quant_mode", Knob())), knob_values(knobs.get("bits", Knob()))
    if modes and set(modes) == {"kmeans"} and bits and all(b == FULL_PRECISION_BITS for b in bits):
        raise SpaceError(
            f"'{key}' has quant_mode kmeans with bits 32 only ({where}): a codebook needs bits below 32, e.g. bits: [3, 4, 5]; or use quant_mode uniform"
        )


def _globs(raw: Any, where: str, key: str) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
        raise SpaceError(f'\'{key}\' must be a glob or a list of globs ({where}): e.g. ["fc*", "conv1"]')
    if not raw and key == "layers":
        raise SpaceError(f"'{key}' is empty ({where}): name at least one layer glob, e.g. [\"*\"]")
    return raw


def parse_space_data(data: Any, source: str, into: type[S]) -> S:
    """Validate a space mapping (as read from YAML); errors name ``source`` and the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpaceError(f"a search space must be a mapping with keys {', '.join(_TOP_KEYS)} ({source}): fix its layout")
    for key in data:
        if key not in _TOP_KEYS:
            raise SpaceError(f"unknown key '{key}'{did_you_mean(str(key), _TOP_KEYS)} ({source}): known keys are {', '.join(_TOP_KEYS)}")
    spec = into(source=source)
    spec.layers = _globs(data.get("layers", ["*"]), source, "layers")
    spec.exclude = _globs(data.get("exclude", []), source, "exclude")
    spec.knobs = _parse_knobs(data.get("knobs", {}), source, "knobs")
    overrides = data.get("overrides", []) or []
    if not isinstance(overrides, list):
        raise SpaceError(f"'overrides' must be a list ({source}): each entry has 'layers' and knobs")
    for i, entry in enumerate(overrides):
        key = f"overrides[{i}]"
        if not isinstance(entry, dict) or "layers" not in entry:
            raise SpaceError(f"'{key}' needs a 'layers' glob list and knobs ({source}): e.g. {{layers: [fc2], bits: [8, 32]}}")
        rest = {k: v for k, v in entry.items() if k != "layers"}
        spec.overrides.append((_globs(entry["layers"], source, f"{key}.layers"), _parse_knobs(rest, source, key)))
    group_by = data.get("group_by", "layer")
    if group_by not in GROUP_BY:
        raise SpaceError(f"'group_by' is {group_by!r}{did_you_mean(str(group_by), GROUP_BY)} ({source}): use one of {', '.join(GROUP_BY)}")
    spec.group_by = group_by
    groups = data.get("groups", {}) or {}
    if not isinstance(groups, dict):
        raise SpaceError(f"'groups' must map group names to layer globs ({source}): e.g. {{head: [\"fc*\"]}}")
    for name, globs in groups.items():
        if not isinstance(name, str) or not name or "." in name:
            raise SpaceError(f"group name {name!r} in 'groups' must be a non-empty name without dots ({source}): rename it")
        spec.groups[name] = _globs(globs, source, f"groups.{name}")
        if not spec.groups[name]:
            raise SpaceError(f"'groups.{name}' is empty ({source}): give it at least one layer glob")
    return spec


def read_space_file(path: str | Path | None, into: type[S]) -> S:
    """Read a space file; None gives the built-in default space."""
    if path is None:
        return into(knobs=dict(DEFAULT_KNOBS))
    path = Path(path)
    return parse_space_data(read_yaml(path), str(path), into)
