"""Search spaces matched against a model: a space file's globs and knobs x the model's layers ->
Optuna distributions -> plans. The file's grammar is :mod:`autocompress.space_file`.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autocompress import space_file
from autocompress.compress.importance import IMPORTANCE
from autocompress.errors import SpaceError, did_you_mean
from autocompress.plan import FULL_PRECISION_BITS, TERNARY_BITS, CompressionPlan, LayerPlan
from autocompress.space_file import DEFAULT_KNOBS, GROUP_BY, KNOBS, OPTIONAL_KNOBS, SELECTORS, Knob, SpaceFile, knob_values
from autocompress.space_file import allows_channel as _allows_channel
from autocompress.survey import LayerFacts, ModelSurvey, survey

# A layer the model never calls reads its weight directly: a factorized replacement would not run.
UNCALLED = "the model reads its weight without calling it (as nn.MultiheadAttention does its output projection), so a factorized layer would not run"
WORD_DEFAULTS = {"quant_mode": "uniform", "lowrank_mode": "svd", "importance": "l1", "act_bits": 8}  # what a plan does without them

__all__ = ["DEFAULT_KNOBS", "GROUP_BY", "KNOBS", "Knob", "LayerSpace", "SearchSpace", "SpaceSpec", "load_space", "parse_space"]


@dataclass(frozen=True)
class LayerSpace:
    name: str
    type: str  # Linear or Conv2d
    weight_shape: tuple[int, ...]
    full_rank: int | None
    knobs: dict[str, Knob]  # this layer's own view: knobs that do not apply to it are off
    group: str = ""  # whose Optuna parameters it takes; its own name when not grouped
    notes: tuple[str, ...] = ()  # why a knob the space asks for is off here (shown by `layers`)
    tucker_limits: tuple[int, int] | None = None  # largest (output, input) Tucker-2 ranks; None: no Tucker

    def rank_from_fraction(self, fraction: float | None) -> int | None:
        if fraction is None or self.full_rank is None or fraction >= 1.0:
            return None
        return max(1, min(self.full_rank, round(fraction * self.full_rank)))

    def layer_plan(self, v: dict[str, Any]) -> LayerPlan:
        """This layer's plan from its knob values (off knobs absent)."""
        structured = v.get("sparsity_mode") == "channel"
        importance = str(v.get("importance") or "l1")
        if not structured and importance in IMPORTANCE and not IMPORTANCE.get(importance).unstructured:
            importance = "l1"  # l2 and fpgm rank channels: single weights go by magnitude
        fraction = v.get("rank")
        rank, rank_in, lowrank_mode = self.rank_from_fraction(fraction), None, "svd"
        if rank is not None and fraction is not None and v.get("lowrank_mode") == "tucker" and self.tucker_limits is not None:
            out_ch, in_ch = self.weight_shape[0], self.weight_shape[1]
            lowrank_mode = "tucker"
            rank = max(1, min(self.tucker_limits[0], round(fraction * out_ch)))
            rank_in = max(1, min(self.tucker_limits[1], round(fraction * in_ch)))
        bits = int(v.get("bits") or FULL_PRECISION_BITS)
        if v.get("quant_mode") == "ternary":
            bits = TERNARY_BITS  # its own width, whatever the bits knob drew
        quant_mode = str(v.get("quant_mode") or "uniform") if bits < FULL_PRECISION_BITS else "uniform"
        act_bits = v.get("act_bits")
        if act_bits is not None and not LayerPlan(bits=bits, quant_mode=quant_mode).integer_codes:
            act_bits = None  # float weights (or a codebook's) run float kernels: nothing to choose
        return LayerPlan(
            sparsity=round(float(v.get("sparsity") or 0.0), 6),  # 0.15, not 0.15000000000000002
            structured=structured,
            bits=bits,
            rank=rank,
            quant_mode=quant_mode,
            lowrank_mode=lowrank_mode,
            importance=importance if float(v.get("sparsity") or 0.0) > 0 else "l1",
            rank_in=rank_in,
            act_bits=None if act_bits is None else int(act_bits),
        )


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
        return CompressionPlan({name: ls.layer_plan(values[name]) for name, ls in self.layers.items()})

    def uniform_params(
        self, sparsity: float, bits: int, rank: float = 1.0, mode: str = "unstructured", quant_mode: str = "uniform"
    ) -> dict[str, Any]:
        """Optuna params for one setting applied to every layer, snapped to each layer's knobs."""
        target = {"sparsity": sparsity, "sparsity_mode": mode, "bits": bits, "rank": rank, **WORD_DEFAULTS, "quant_mode": quant_mode}
        return {f"{group}.{k}": knob.snap(target[k]) for group, knobs in self.groups.items() for k, knob in knobs.items() if not knob.fixed}

    @property
    def dimensions(self) -> int:
        return sum(not k.fixed for knobs in self.groups.values() for k in knobs.values())

    @property
    def allows_channel(self) -> bool:
        return any(_allows_channel(knobs["sparsity_mode"]) for knobs in self.groups.values())

    def check_act_bits(self, precision: str, runtime: str, source: str) -> None:
        """Refuse activation widths the deploy target cannot run, naming the first layer."""
        for name, ls in self.layers.items():
            for bits in knob_values(ls.knobs["act_bits"]):
                if bits == 16:
                    raise SpaceError(
                        f"layer '{name}' has act_bits 16 ({source}): no deploy runtime here runs 16-bit activation kernels "
                        f"({runtime} int8 runs 8-bit or float activations): use 8 or 32"
                    )
                if bits == 8 and precision != "int8":
                    raise SpaceError(
                        f"layer '{name}' has act_bits 8 ({source}), but the deploy target runs {precision} kernels, so nothing "
                        "would run 8-bit activations: set deploy.precision: int8, or drop act_bits"
                    )

    @property
    def allows_sharing(self) -> bool:
        return any("kmeans" in knob_values(knobs["quant_mode"]) for knobs in self.groups.values())

    @property
    def grouped(self) -> bool:
        return any(ls.group != name for name, ls in self.layers.items())

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (lists, not tuples): compares equal to the copy stored on the study."""
        data: dict[str, Any] = {
            name: {k: knob.to_dict() for k, knob in ls.knobs.items() if not (k in OPTIONAL_KNOBS and knob.off)} for name, ls in self.layers.items()
        }
        if self.grouped:
            data["_groups"] = {name: ls.group for name, ls in self.layers.items()}
        return json.loads(json.dumps(data))


@dataclass
class SpaceSpec(SpaceFile):
    """A space file ready to be matched against a model."""

    def resolve(self, model: nn.Module, example: torch.Tensor | None = None) -> SearchSpace:
        """Match the globs against ``model``'s Linear/Conv2d layers and give each its knobs.

        With an ``example`` input, the layer producing the model's output gets no channel
        pruning (removing its channels would remove classes). The model is surveyed once;
        the rest is :meth:`resolve_survey`, plain data.
        """
        return self.resolve_survey(survey(model, example, trace_channels=self.mentions_channel))

    @property
    def mentions_channel(self) -> bool:
        """Whether any knob of the space (overrides included) may remove channels."""
        return _allows_channel(self.knobs.get("sparsity_mode", Knob())) or any(
            _allows_channel(extra["sparsity_mode"]) for _, extra in self.overrides if "sparsity_mode" in extra
        )

    def resolve_survey(self, model: ModelSurvey) -> SearchSpace:
        """:meth:`resolve` over a model's survey."""
        available = model.layers
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
        for name in selected:
            facts = available[name]
            knobs = {k: self.knobs.get(k, Knob()) for k in KNOBS}
            for globs, extra in self.overrides:
                if matches(name, globs):
                    knobs.update(extra)
            raw[name] = dict(knobs)
            notes: list[str] = []
            rank_limit = facts.full_rank
            if rank_limit is None or not facts.called:
                if not knobs["rank"].off:
                    notes.append("rank off: " + ("a depthwise or grouped conv" if facts.called else UNCALLED))
                knobs["rank"] = Knob()
                rank_limit = None
            if "tucker" in knob_values(knobs["lowrank_mode"]) and facts.tucker_limits is None:
                if not knobs["rank"].off:
                    notes.append("tucker: convs only, svd here")
                knobs["lowrank_mode"] = Knob()
            if "taylor" in knob_values(knobs["importance"]) and facts.frozen:
                raise SpaceError(
                    f"layer '{name}' has importance taylor, but its weights are frozen (requires_grad False), so no gradient ranks them "
                    f"({self.source}): use importance l1 for it (an override), or unfreeze it"
                )
            if facts.output and _allows_channel(knobs["sparsity_mode"]):
                notes.append("channels kept: the model's output (one per class)")
                knobs["sparsity_mode"] = Knob()
            if facts.channel_unit and _allows_channel(knobs["sparsity_mode"]):
                notes.append(facts.channel_unit)
            result[name] = LayerSpace(name, facts.type, facts.weight_shape, rank_limit, knobs, notes=tuple(notes), tucker_limits=facts.tucker_limits)
        traced = model.channel_prunable is not None or model.channel_error is not None
        if traced and any(_allows_channel(ls.knobs["sparsity_mode"]) for ls in result.values()):
            if model.channel_error is not None:  # ShuffleNet's channel shuffle defeats the graph: every such trial would fail
                raise SpaceError(
                    f"channel pruning cannot follow this model's structure (Torch-Pruning: {model.channel_error}) ({self.source}): "
                    "set sparsity_mode: unstructured"
                )
            prunable = model.channel_prunable or frozenset()
            for name, ls in result.items():
                if name not in prunable:
                    why = model.channel_refused.get(name, "channels kept: they feed a grouped conv")
                    kept = (why,) if _allows_channel(ls.knobs["sparsity_mode"]) else ()
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

    def _group_of(self, name: str, available: dict[str, LayerFacts], blocks: dict[str, str], matches: Any, edges: dict[str, str]) -> str:
        for group, globs in self.groups.items():
            if matches(name, globs):
                return group
        if self.group_by == "layer" or name in edges.values():
            return name  # the first and last layers are sensitive: never share their knobs
        if self.group_by == "type":
            return available[name].kind
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


def parse_space(data: Any, source: str) -> SpaceSpec:
    """Validate a space mapping (as read from YAML); errors name ``source`` and the key."""
    return space_file.parse_space_data(data, source, SpaceSpec)


def load_space(path: str | Path | None) -> SpaceSpec:
    """Read a space file; None gives the built-in default space."""
    return space_file.read_space_file(path, SpaceSpec)
