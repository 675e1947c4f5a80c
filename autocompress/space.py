"""Search spaces: ``search_spaces/*.yaml`` x the model's layers -> Optuna distributions -> plans.

A space file says which layers to compress (globs on module names) and the knobs each gets::

    layers: ["*"]                 # globs on qualified module names (Linear and Conv2d only)
    exclude: []                   # globs taken out of the selection
    knobs:
      sparsity: {low: 0.0, high: 0.95, step: 0.05}
      sparsity_mode: unstructured         # or channel (removes output channels), or a list of both
      bits: [2, 3, 4, 5, 6, 8, 32]        # 32 = not quantized
      rank: {low: 0.1, high: 1.0, step: 0.1}   # fraction of full rank; 1.0 = not factorized
    overrides:                    # later entries win; each names layers by glob
      - layers: ["fc2"]
        bits: [4, 6, 8, 32]

A knob is a fixed value (``bits: 8``), a list of choices, or a range ``{low, high, step, log}``;
``null`` or leaving it out switches it off. Optuna parameters are named ``<group>.<knob>``.

Deep networks share knobs within groups, so a ResNet-50 space has tens of dimensions, not
hundreds::

    group_by: block               # layer (default: every layer its own group), block, stage or type
    groups:                       # explicit groups first: name -> globs
      head: ["classifier.*"]

``block`` is a layer's nearest enclosing module holding more than one compressible layer (a
ResNet BasicBlock, a MobileNet inverted residual), ``stage`` the nearest one above that holding
more than one block (``layer1``), ``type`` the layer kind (Linear, Conv2d-3x3, Conv2d-1x1,
Conv2d-depthwise...). Outside ``layer`` mode the first and the last layer are always groups of
their own. ``@first`` and ``@last`` in any glob list name those two layers. A layer whose knobs
differ from its group's (after overrides) becomes a group of its own; inside a group, a
depthwise conv ignores the rank and the output layer ignores channel pruning.

Without a space file the built-in default (:data:`DEFAULT_KNOBS` on every layer) is used; it is
the same as ``search_spaces/default.yaml``.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autocompress._schema import read_yaml
from autocompress.compress import compressible_layers, full_rank
from autocompress.compress.channel import channel_prunable, output_layers
from autocompress.errors import SpaceError, did_you_mean
from autocompress.plan import FULL_PRECISION_BITS, CompressionPlan, LayerPlan

KNOBS = ("sparsity", "sparsity_mode", "bits", "rank")
SPARSITY_MODES = ("unstructured", "channel")
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


@dataclass(frozen=True)
class LayerSpace:
    name: str
    type: str  # Linear or Conv2d
    weight_shape: tuple[int, ...]
    full_rank: int | None
    knobs: dict[str, Knob]  # this layer's own view: knobs that do not apply to it are off
    group: str = ""  # whose Optuna parameters it takes; its own name when not grouped
    notes: tuple[str, ...] = ()  # why a knob the space asks for is off here (shown by `layers`)

    def rank_from_fraction(self, fraction: float | None) -> int | None:
        if fraction is None or self.full_rank is None or fraction >= 1.0:
            return None
        return max(1, min(self.full_rank, round(fraction * self.full_rank)))


@dataclass
class SearchSpace:
    """A space resolved against one model: the knobs of every selected layer and the groups
    that share them (one group per layer unless the space groups them)."""

    layers: dict[str, LayerSpace]
    source: str = "the built-in default space"
    groups: dict[str, dict[str, Knob]] = field(default_factory=dict)  # group -> shared knobs

    def __post_init__(self) -> None:
        if not self.groups:  # ungrouped: every layer is its own group
            self.groups = {name: ls.knobs for name, ls in self.layers.items()}
            self.layers = {n: ls if ls.group else replace(ls, group=n) for n, ls in self.layers.items()}

    def sample(self, trial: optuna.Trial) -> CompressionPlan:
        """Draw a plan from ``trial`` (define-by-run: parameters ``<group>.<knob>``)."""
        drawn = {g: {k: knob.suggest(trial, f"{g}.{k}") for k, knob in knobs.items()} for g, knobs in self.groups.items()}
        return self.plan_from_values(self.layer_values(drawn))

    def plan_from_params(self, params: dict[str, Any]) -> CompressionPlan:
        """The plan of a finished trial's parameters (``<group>.<knob>``), fixed knobs filled in."""
        return self.plan_from_values(
            self.layer_values({g: {k: params.get(f"{g}.{k}", knob.value) for k, knob in knobs.items()} for g, knobs in self.groups.items()})
        )

    def layer_values(self, group_values: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each layer's knob values from its group's, leaving out knobs that are off for it."""
        return {name: {k: v for k, v in group_values[ls.group].items() if not ls.knobs[k].off} for name, ls in self.layers.items()}

    def plan_from_values(self, values: dict[str, dict[str, Any]]) -> CompressionPlan:
        plans = {}
        for name, ls in self.layers.items():
            v = values[name]
            plans[name] = LayerPlan(
                sparsity=round(float(v.get("sparsity") or 0.0), 6),  # 0.15, not 0.15000000000000002
                structured=v.get("sparsity_mode") == "channel",
                bits=int(v.get("bits") or FULL_PRECISION_BITS),
                rank=ls.rank_from_fraction(v.get("rank")),
            )
        return CompressionPlan(plans)

    def uniform_params(self, sparsity: float, bits: int, rank: float = 1.0, mode: str = "unstructured") -> dict[str, Any]:
        """Optuna params for one setting applied to every layer, snapped to each layer's knobs."""
        target = {"sparsity": sparsity, "sparsity_mode": mode, "bits": bits, "rank": rank}
        return {f"{group}.{k}": knob.snap(target[k]) for group, knobs in self.groups.items() for k, knob in knobs.items() if not knob.fixed}

    @property
    def dimensions(self) -> int:
        return sum(not k.fixed for knobs in self.groups.values() for k in knobs.values())

    @property
    def allows_channel(self) -> bool:
        return any(_allows_channel(knobs["sparsity_mode"]) for knobs in self.groups.values())

    @property
    def grouped(self) -> bool:
        return any(ls.group != name for name, ls in self.layers.items())

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (lists, not tuples): compares equal to the copy stored on the study."""
        data: dict[str, Any] = {name: {k: knob.to_dict() for k, knob in ls.knobs.items()} for name, ls in self.layers.items()}
        if self.grouped:
            data["_groups"] = {name: ls.group for name, ls in self.layers.items()}
        return json.loads(json.dumps(data))


@dataclass
class SpaceSpec:
    """A parsed, validated space file, not yet matched against a model."""

    layers: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    knobs: dict[str, Knob] = field(default_factory=dict)
    overrides: list[tuple[list[str], dict[str, Knob]]] = field(default_factory=list)
    group_by: str = "layer"
    groups: dict[str, list[str]] = field(default_factory=dict)  # explicit: name -> globs
    source: str = "the built-in default space"

    def resolve(self, model: nn.Module, example: torch.Tensor | None = None) -> SearchSpace:
        """Match the globs against ``model``'s Linear/Conv2d layers and give each its knobs.

        With an ``example`` input, the layer producing the model's output gets no channel
        pruning (removing its channels would remove classes).
        """
        available = compressible_layers(model)
        names = list(available)
        edges = {"@first": names[0], "@last": names[-1]} if names else {}

        def matches(name: str, globs: list[str]) -> bool:
            return any(edges.get(g) == name or fnmatch.fnmatchcase(name, g) for g in globs)

        selected = [n for n in names if matches(n, self.layers)]
        self._check_globs(self.layers, names, "layers", edges)
        self._check_globs(self.exclude, names, "exclude", edges)
        selected = [n for n in selected if not matches(n, self.exclude)]
        if not selected:
            raise SpaceError(f"no layer is selected ({self.source}): the model's layers are {', '.join(names)}")
        raw: dict[str, dict[str, Knob]] = {}
        result: dict[str, LayerSpace] = {}
        outputs = output_layers(model, example) if example is not None else set()
        for name in selected:
            module = available[name]
            knobs = {k: self.knobs.get(k, Knob()) for k in KNOBS}
            for globs, extra in self.overrides:
                if matches(name, globs):
                    knobs.update(extra)
            raw[name] = dict(knobs)
            notes: list[str] = []
            rank_limit = full_rank(module)
            if rank_limit is None:
                if not knobs["rank"].off:
                    notes.append("rank off: a depthwise or grouped conv")
                knobs["rank"] = Knob()
            if module in outputs and _allows_channel(knobs["sparsity_mode"]):
                notes.append("channels kept: the model's output (one per class)")
                knobs["sparsity_mode"] = Knob()
            result[name] = LayerSpace(name, type(module).__name__, tuple(module.weight.shape), rank_limit, knobs, notes=tuple(notes))
        if example is not None and any(_allows_channel(ls.knobs["sparsity_mode"]) for ls in result.values()):
            prunable = _channel_prunable(model, example, self.source)
            for name, ls in result.items():
                if name not in prunable:
                    kept = ("channels kept: they feed a grouped conv",) if _allows_channel(ls.knobs["sparsity_mode"]) else ()
                    result[name] = replace(ls, knobs={**ls.knobs, "sparsity_mode": Knob()}, notes=(*ls.notes, *kept))
        for i, (globs, _) in enumerate(self.overrides):
            self._check_globs(globs, selected, f"overrides[{i}].layers", edges)
        for group, globs in self.groups.items():
            self._check_globs(globs, selected, f"groups.{group}", edges)
        if self.group_by == "layer" and not self.groups:
            return SearchSpace(result, source=self.source)
        blocks = {n: _enclosing(n, set(available)) for n in available}
        assignment = {n: self._group_of(n, available, blocks, matches, edges) for n in selected}
        # A layer whose knobs differ from the rest of its group's (an override) is a group of its own.
        first_of: dict[str, str] = {}
        for name in selected:
            first = first_of.setdefault(assignment[name], name)
            if raw[name] != raw[first]:
                assignment[name] = name
        groups: dict[str, dict[str, Knob]] = {}
        for name in selected:
            g = assignment[name]
            members = [n for n in selected if assignment[n] == g]
            # A knob is searched for the group when it applies to at least one member.
            groups[g] = {k: raw[name][k] if any(not result[m].knobs[k].off for m in members) else Knob() for k in KNOBS}
            result[name] = replace(result[name], group=g)
        return SearchSpace(result, source=self.source, groups=groups)

    def _group_of(self, name: str, available: dict[str, nn.Linear | nn.Conv2d], blocks: dict[str, str], matches: Any, edges: dict[str, str]) -> str:
        for group, globs in self.groups.items():
            if matches(name, globs):
                return group
        if self.group_by == "layer" or name in edges.values():
            return name  # the first and last layers are sensitive: never share their knobs
        if self.group_by == "type":
            return _layer_kind(available[name])
        if self.group_by == "block":
            return blocks[name]
        return _enclosing(blocks[name], set(blocks.values()))  # stage: holds several blocks

    def _check_globs(self, globs: list[str], names: list[str], key: str, edges: dict[str, str] | None = None) -> None:
        for g in globs:
            if g.startswith("@"):
                if g not in SELECTORS:
                    raise SpaceError(
                        f"unknown selector '{g}' in '{key}'{did_you_mean(g, SELECTORS)} ({self.source}): selectors are {', '.join(SELECTORS)}"
                    )
                if edges is None or edges.get(g) in names:
                    continue
            if not any(fnmatch.fnmatchcase(n, g) for n in names):
                hint = did_you_mean(g, names)
                raise SpaceError(f"glob '{g}' in '{key}' matches no layer{hint} ({self.source}): the selectable layers are {', '.join(names)}")


def _enclosing(name: str, names: list[str] | set[str]) -> str:
    """The nearest ancestor of ``name`` (by dotted path) holding more than one of ``names``;
    ``name`` itself when none does below the root."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:depth])
        if sum(n == prefix or n.startswith(prefix + ".") for n in names) > 1:
            return prefix
    return name


def _layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "Conv2d-depthwise"
        kh, kw = module.kernel_size
        return f"Conv2d-{kh}x{kw}" + ("-grouped" if module.groups > 1 else "")
    return type(module).__name__


def _channel_prunable(model: nn.Module, example: torch.Tensor, source: str) -> set[str]:
    """Channel pruning follows Torch-Pruning's dependency graph; some structures (ShuffleNet's
    channel shuffle) defeat it, and every such trial would fail: say so once, up front."""
    try:
        return channel_prunable(model, example)
    except Exception as exc:  # noqa: BLE001
        raise SpaceError(
            f"channel pruning cannot follow this model's structure (Torch-Pruning: {type(exc).__name__}: {exc}) ({source}): "
            "set sparsity_mode: unstructured"
        ) from None


def _allows_channel(knob: Knob) -> bool:
    return knob.value == "channel" or "channel" in (knob.choices or ())


def _parse_knob(name: str, raw: Any, where: str, key: str) -> Knob:
    if raw is None:
        return Knob()
    if name == "sparsity_mode":
        values = raw if isinstance(raw, list) else [raw]
        bad = [v for v in values if v not in SPARSITY_MODES]
        if bad or not values:
            shown = bad[0] if bad else "[]"
            raise SpaceError(
                f"'{key}' has {shown!r}{did_you_mean(str(shown), SPARSITY_MODES)} ({where}): use unstructured, channel or a list of both"
            )
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
        if name in ("bits", "sparsity_mode"):
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
    return knobs


def _globs(raw: Any, where: str, key: str) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
        raise SpaceError(f'\'{key}\' must be a glob or a list of globs ({where}): e.g. ["fc*", "conv1"]')
    if not raw and key == "layers":
        raise SpaceError(f"'{key}' is empty ({where}): name at least one layer glob, e.g. [\"*\"]")
    return raw


def parse_space(data: Any, source: str) -> SpaceSpec:
    """Validate a space mapping (as read from YAML); errors name ``source`` and the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpaceError(f"a search space must be a mapping with keys {', '.join(_TOP_KEYS)} ({source}): fix its layout")
    for key in data:
        if key not in _TOP_KEYS:
            raise SpaceError(f"unknown key '{key}'{did_you_mean(str(key), _TOP_KEYS)} ({source}): known keys are {', '.join(_TOP_KEYS)}")
    spec = SpaceSpec(source=source)
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


def load_space(path: str | Path | None) -> SpaceSpec:
    """Read a space file; None gives the built-in default space."""
    if path is None:
        return SpaceSpec(knobs=dict(DEFAULT_KNOBS))
    path = Path(path)
    return parse_space(read_yaml(path), str(path))
