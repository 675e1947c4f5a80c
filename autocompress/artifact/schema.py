"""Everything an artifact's header may hold, as one schema, and the one validator that walks it.

The schema is data: each node says what a value may be (its type, range, length, the keys of a
record and which are required), and ``validate`` walks a header against it. A header holds what
the schema names and nothing more: an unknown key, a missing or mistyped field, a list too long
or a value nested where the schema has none is one ``ArtifactError`` naming the field, never a
``KeyError`` deep in the loader. Nesting is bounded by the schema itself (the deepest path is
five levels), and the walk never recurses further than the schema does. No torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autocompress.artifact.format import (
    DTYPE_BYTES,
    DTYPE_NAMES,
    KINDS,
    MAX_CLASSES,
    MAX_INDEX_BITS,
    MAX_INPUT_VALUES,
    MAX_TENSOR_VALUES,
    MAX_TENSORS,
    PACKINGS,
    READ_FORMATS,
)
from autocompress.plan import ACT_BITS, FULL_PRECISION_BITS, LOWRANK_MODES, QUANT_MODES

MAX_NAME = 4096  # a module path; torchvision's longest is under 100 characters


class Invalid(Exception):
    """A value that does not fit its node; ``field`` is the dotted path to it."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


class Node:
    def check(self, value: Any, where: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Node):
    low: int = 0
    high: int = 1 << 62

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(where, f"must be an integer, got {type(value).__name__}")
        if not self.low <= value <= self.high:
            raise Invalid(where, f"{value} is outside {self.low}..{self.high}")


@dataclass(frozen=True)
class Fraction(Node):
    """A number in [0, 1)."""

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
            raise Invalid(where, f"must be a number from 0 up to 1, got {value!r}")


@dataclass(frozen=True)
class Flag(Node):
    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, bool):
            raise Invalid(where, f"must be true or false, got {value!r}")


@dataclass(frozen=True)
class Text(Node):
    pattern: str | None = None
    max_len: int = MAX_NAME

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, str) or len(value) > self.max_len:
            raise Invalid(where, f"must be text of at most {self.max_len} characters")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise Invalid(where, f"{value[:60]!r} is not a known value")


@dataclass(frozen=True)
class Choice(Node):
    values: tuple[Any, ...]

    def check(self, value: Any, where: str) -> None:
        # bool is an int in Python: True must not pass for 1
        if isinstance(value, (dict, list, bool)) or value not in self.values:
            raise Invalid(where, f"{value!r} is not one of {', '.join(map(str, self.values))}")


@dataclass(frozen=True)
class Maybe(Node):
    inner: Node

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.inner.check(value, where)


@dataclass(frozen=True)
class ListOf(Node):
    item: Node
    min_len: int = 0
    max_len: int = MAX_TENSORS

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list) or not self.min_len <= len(value) <= self.max_len:
            raise Invalid(where, f"must be a list of {self.min_len} to {self.max_len} items")
        for i, item in enumerate(value):
            self.item.check(item, f"{where}[{i}]")


@dataclass(frozen=True)
class MapOf(Node):
    """A mapping from names (layer or tensor names) to values of one node."""

    value: Node
    max_len: int = MAX_TENSORS

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict) or len(value) > self.max_len:
            raise Invalid(where, f"must be a mapping of at most {self.max_len} names")
        for key, item in value.items():
            Text().check(key, f"{where} key")
            self.value.check(item, f"{where}.{key}")


@dataclass(frozen=True)
class Record(Node):
    """A mapping with known keys: ``required`` must be there, ``optional`` may be; no others."""

    required: dict[str, Node]
    optional: dict[str, Node] = field(default_factory=dict)
    rule: Callable[[dict[str, Any], str], None] | None = None  # what spans fields (a kind's parts)

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise Invalid(where, "must be a mapping")
        for key in self.required:
            if key not in value:
                raise Invalid(f"{where}.{key}" if where else key, "is missing")
        for key, item in value.items():
            node = self.required.get(key) or self.optional.get(key)
            if node is None:
                raise Invalid(f"{where}.{key}" if where else str(key), "is not a field this version knows")
            node.check(item, f"{where}.{key}" if where else key)
        if self.rule is not None:
            self.rule(value, where)


SPAN = ListOf(Int(), 2, 2)  # [offset, length] in the payload
SPANS = ("values", "index", "scale", "codebook")
ENCODING = Text(rf"dense|empty|bitmask|relative-index-[1-{MAX_INDEX_BITS}]")


def _task_rule(task: dict[str, Any], where: str) -> None:
    values = math.prod(task.get("input_shape", []))
    if values > MAX_INPUT_VALUES:
        raise Invalid(f"{where}.input_shape", f"{values} values per input, over the {MAX_INPUT_VALUES} this version builds")


def _tensor_rule(t: dict[str, Any], where: str) -> None:
    numel = math.prod(t["shape"])
    if numel > MAX_TENSOR_VALUES:
        raise Invalid(f"{where}.shape", f"{numel} values, over the {MAX_TENSOR_VALUES} this version reads")
    kind = t["kind"]
    if kind == "raw":
        if "dtype" not in t:
            raise Invalid(f"{where}.dtype", "is missing")
        if t["values"][1] != numel * DTYPE_BYTES[t["dtype"]]:
            raise Invalid(f"{where}.values", f"{t['values'][1]} bytes for {numel} {t['dtype']} values")
        return
    for key in ("enc", "bits"):
        if key not in t:
            raise Invalid(f"{where}.{key}", f"is missing (a {kind} tensor has one)")
    if kind in ("codes", "shared") and not 2 <= t["bits"] <= 16:
        raise Invalid(f"{where}.bits", f"{t['bits']} is outside 2..16 for {kind} tensors")
    if t["enc"] not in ("dense", "empty"):
        if "index" not in t or "n" not in t:
            raise Invalid(f"{where}.index", f"is missing (the {t['enc']} encoding has one)")
        if t["n"] > numel:
            raise Invalid(f"{where}.n", f"{t['n']} entries for {numel} values")
    if kind == "codes" and ("scale" not in t or not t["shape"]):
        raise Invalid(f"{where}.scale", "is missing (codes have one per output channel)")
    if kind == "shared" and "codebook" not in t:
        raise Invalid(f"{where}.codebook", "is missing (shared codes index one)")
    # Each part is no longer than its values need: a payload is inflated only as far as the parts
    # reach, and a bitmask is unpacked eight-fold, so a claim is bounded by the tensor's own shape.
    count = numel if t["enc"] == "dense" else t.get("n", 0)
    _span_at_most(t, "values", count * (4 if kind in ("float", "sparse") else 2), where)
    _span_at_most(t, "index", numel // 8 + 1 if t["enc"] == "bitmask" else 2 * count, where)
    _span_at_most(t, "scale", 2 * (t["shape"][0] if t["shape"] else 1), where)
    _span_at_most(t, "codebook", 2 << t["bits"], where)


def _layout_rule(header: dict[str, Any], where: str) -> None:
    """The tensors' parts tile the payload as the packer writes them: one after another from
    offset 0, no gap, no overlap. A span moved onto another tensor's bytes is refused, not decoded."""
    spans = sorted((t[k][0], t[k][1], i, k) for i, t in enumerate(header["tensors"]) for k in SPANS if k in t)
    end = 0
    for start, length, i, key in spans:
        if start != end:
            raise Invalid(f"tensors[{i}].{key}", f"starts at byte {start} where the previous part ends at {end}")
        end = start + length


def _span_at_most(t: dict[str, Any], key: str, most: int, where: str) -> None:
    if key in t and t[key][1] > most:
        raise Invalid(f"{where}.{key}", f"{t[key][1]} bytes, more than the {most} a {t['kind']} tensor of shape {t['shape']} holds")


TASK = Record(
    required={"model": Text()},
    optional={
        "dataset": Maybe(Text()),
        "input_shape": ListOf(Int(1, 1 << 16), 0, 4),
        "num_classes": Maybe(Int(1, MAX_CLASSES)),
        "inputs": Choice(("float tensor", "token ids", "structured")),
    },
    rule=_task_rule,
)
LAYER_PLAN = Record(
    required={"sparsity": Fraction(), "structured": Flag(), "bits": Int(2, FULL_PRECISION_BITS), "rank": Maybe(Int(1, 1 << 20))},
    optional={
        "quant_mode": Choice(QUANT_MODES),
        "lowrank_mode": Choice(LOWRANK_MODES),
        "importance": Text(r"[a-z0-9_]{1,32}"),
        "rank_in": Maybe(Int(1, 1 << 20)),
        "act_bits": Maybe(Choice(ACT_BITS)),
    },
)
TENSOR = Record(
    required={"name": Text(), "shape": ListOf(Int(0, MAX_TENSOR_VALUES), 0, 8), "kind": Choice(KINDS), "values": SPAN},
    optional={
        "dtype": Choice(DTYPE_NAMES),
        "enc": ENCODING,
        "bits": Int(1, FULL_PRECISION_BITS),
        "n": Int(0, MAX_TENSOR_VALUES),
        "index": SPAN,
        "scale": SPAN,
        "codebook": SPAN,
    },
    rule=_tensor_rule,
)
HEADER = Record(
    required={"format": Choice(READ_FORMATS), "task": TASK, "plan": MapOf(LAYER_PLAN), "tensors": ListOf(TENSOR)},
    rule=_layout_rule,
    optional={
        "packing": Choice(PACKINGS),
        "channels_removed": MapOf(Text(r"([0-9a-f]{2})*", 1 << 16)),  # a hex bitmask of removed channels
        "bn_folded": MapOf(Text()),  # BatchNorm name -> the layer it was folded into
        "canonical": Flag(),  # the model was rewritten into its canonical form (compress.sites) before packing
    },
)


def validate(header: Any) -> None:
    """Raise ``Invalid`` for the first field of ``header`` that the schema does not allow."""
    HEADER.check(header, "")
