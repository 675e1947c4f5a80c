"""Reading a file's header: the signature, the codec, the JSON header checked against its
schema, and the payload inflated only as far as the header declares. No torch: ``inspect``
and every reader start here, and the ``Artifact`` it returns is handed on, read once."""

from __future__ import annotations

import json
import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from autocompress.artifact.codec import Inflater
from autocompress.artifact.format import (
    CODECS,
    DTYPE_NAMES,
    ENCODINGS,
    KINDS,
    LZMA_MAX_RATIO,
    MAGIC,
    MAGIC_V1,
    MAX_HEADER_BYTES,
    MAX_HEADER_DEPTH,
    MAX_TENSOR_VALUES,
    MAX_TENSORS,
    MAX_UNPACKED_BYTES,
    PACKINGS,
    PLAN_KEYS,
    READ_FORMATS,
    ZLIB_MAX_RATIO,
)
from autocompress.artifact.streams import mask_indices
from autocompress.errors import ArtifactError
from autocompress.plan import ACT_BITS, FULL_PRECISION_BITS, LOWRANK_MODES, QUANT_MODES


@dataclass(frozen=True)
class Artifact:
    """A file read once: its checked header and payload, and what to call it in messages."""

    header: dict[str, Any]
    payload: bytes
    source: str = "artifact"

    @classmethod
    def read(cls, data: bytes, source: str = "artifact") -> Artifact:
        header, payload = read_header(data, source)
        return cls(header, payload, source)


def read_header(data: bytes, source: str = "artifact") -> tuple[dict[str, Any], bytes]:
    """Check the magic, decompress with a size cap, parse and check the JSON header.

    Decompression is bounded twice: the header comes first (at most MAX_HEADER_BYTES), and the
    payload is then inflated only up to the size the header's own tensor table declares, which
    may not exceed what the codec can expand this file to. A bomb is refused after reading its
    header, not after inflating gigabytes.
    """
    if data.startswith(MAGIC) and len(data) > len(MAGIC) and data[len(MAGIC)] < len(CODECS):
        codec, stream, version = CODECS[data[len(MAGIC)]], data[len(MAGIC) + 1 :], 2
    elif data.startswith(MAGIC_V1):
        codec, stream, version = "zlib", data[len(MAGIC_V1) :], 1
    else:
        raise ArtifactError(f"{source} is not an autocompress artifact (no ACZ signature): export one with 'autocompress export'")
    corrupt = (zlib.error, lzma.LZMAError, EOFError)
    inflater = Inflater(codec, stream)
    ends_early = ArtifactError(f"{source} is truncated or corrupt (the compressed stream ends early): re-export it")
    try:
        head = inflater.read(4)
        if len(head) < 4:
            raise ends_early
        (head_len,) = struct.unpack("<I", head)
        if head_len > MAX_HEADER_BYTES:
            raise ArtifactError(
                f"{source} declares a {head_len}-byte header, over the {MAX_HEADER_BYTES} this version reads: it is not a real artifact"
            )
        text = inflater.read(head_len)
    except corrupt:
        raise ArtifactError(f"{source} is corrupt (bad compressed data): re-export it") from None
    if len(text) < head_len:
        raise ends_early
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ArtifactError(f"{source} has a corrupt header: re-export it") from None
    check_header(header, source)
    if header["format"] != version:
        raise ArtifactError(f"{source} has a corrupt header (format {header['format']} in a format {version} file): re-export it")
    spans = ("values", "index", "scale", "codebook")
    declared = max((span[0] + span[1] for t in header["tensors"] for k in spans if (span := t.get(k))), default=0)
    ratio = ZLIB_MAX_RATIO if codec == "zlib" else LZMA_MAX_RATIO
    if declared > min(MAX_UNPACKED_BYTES, ratio * len(data)):
        raise ArtifactError(
            f"{source} declares {declared} bytes of tensors, more than its {len(data)} compressed bytes can hold: it is not a real artifact"
        )
    try:
        body = inflater.read(declared)
        # A real file ends where its header says: one more byte of output means it does not.
        if inflater.more and inflater.read(1):
            raise ArtifactError(f"{source} holds more data than its header declares: it is not a real artifact; re-export it")
    except corrupt:
        raise ArtifactError(f"{source} is corrupt (bad compressed data): re-export it") from None
    if len(body) < declared or not inflater.eof:
        raise ArtifactError(f"{source} is truncated or corrupt (the compressed stream ends early): re-export it")
    try:
        removed = header["channels_removed"]
        header["channels_removed"] = {k: mask_indices(v) if isinstance(v, str) else v for k, v in removed.items()}
    except ValueError:
        raise ArtifactError(f"{source} has a corrupt header (channels_removed): re-export it") from None
    return header, body


def _json_depth(value: Any, depth: int = 0) -> int:
    if isinstance(value, dict):
        return max((_json_depth(v, depth + 1) for v in value.values()), default=depth + 1)
    if isinstance(value, list):
        return max((_json_depth(v, depth + 1) for v in value), default=depth + 1)
    return depth


def _is_int(value: Any, low: int = 0, high: int = 1 << 62) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_header(header: Any, source: str = "artifact") -> None:
    """The header's schema, checked before anything is built from it: types, known kinds,
    bounded counts, shapes and nesting. Every failure is one ArtifactError naming the field."""

    def bad(field: str) -> ArtifactError:
        return ArtifactError(f"{source} has a corrupt header ({field}): it is not a file autocompress wrote; re-export it")

    if not isinstance(header, dict):
        raise bad("not a mapping")
    if header.get("format") not in READ_FORMATS:
        raise ArtifactError(f"{source} has format {header.get('format')!r}; this version reads formats {', '.join(map(str, READ_FORMATS))}")
    if _json_depth(header) > MAX_HEADER_DEPTH:
        raise bad("nested too deeply")
    if header.get("packing", "bytes") not in PACKINGS:
        raise bad("packing")
    task = header.get("task")
    if not isinstance(task, dict) or not isinstance(task.get("model", ""), str):
        raise bad("task")
    if "num_classes" in task and not _is_int(task["num_classes"], 1, 1 << 20):
        raise bad("task.num_classes")
    shape = task.get("input_shape", [])
    if not isinstance(shape, list) or len(shape) > 4 or not all(_is_int(d, 1, 1 << 16) for d in shape):
        raise bad("task.input_shape")
    plan = header.get("plan")
    if not isinstance(plan, dict) or len(plan) > MAX_TENSORS:
        raise bad("plan")
    for name, lp in plan.items():
        if not isinstance(lp, dict) or set(lp) - PLAN_KEYS:
            raise bad(f"plan.{name}")
        if lp.get("quant_mode", "uniform") not in QUANT_MODES or lp.get("lowrank_mode", "svd") not in LOWRANK_MODES:
            raise bad(f"plan.{name}")
        if not isinstance(lp.get("importance", "l1"), str) or (lp.get("rank_in") is not None and not _is_int(lp["rank_in"], 1, 1 << 20)):
            raise bad(f"plan.{name}")
        if lp.get("act_bits") is not None and lp["act_bits"] not in ACT_BITS:
            raise bad(f"plan.{name}.act_bits")
        if not (isinstance(lp.get("sparsity", 0.0), (int, float)) and 0 <= lp.get("sparsity", 0.0) < 1):
            raise bad(f"plan.{name}.sparsity")
        if not _is_int(lp.get("bits", FULL_PRECISION_BITS), 2, FULL_PRECISION_BITS) or not isinstance(lp.get("structured", False), bool):
            raise bad(f"plan.{name}")
        if lp.get("rank") is not None and not _is_int(lp["rank"], 1, 1 << 20):
            raise bad(f"plan.{name}.rank")
    for key in ("channels_removed", "bn_folded"):
        value = header.setdefault(key, {})
        if not isinstance(value, dict) or len(value) > MAX_TENSORS or not all(isinstance(k, str) for k in value):
            raise bad(key)
    if not all(isinstance(v, str) and len(v) <= 1 << 16 for v in header["channels_removed"].values()):
        raise bad("channels_removed")
    if not all(isinstance(v, str) for v in header["bn_folded"].values()):
        raise bad("bn_folded")
    tensors = header.get("tensors")
    if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
        raise bad("tensors")
    for t in tensors:
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise bad("tensors: an entry")
        name = t["name"]
        dims = t.get("shape")
        if not isinstance(dims, list) or len(dims) > 8 or not all(_is_int(d, 0, MAX_TENSOR_VALUES) for d in dims):
            raise bad(f"tensor '{name}' shape")
        numel = 1
        for d in dims:
            numel *= d
        if numel > MAX_TENSOR_VALUES:
            raise bad(f"tensor '{name}' shape")
        kind = t.get("kind")
        if kind not in KINDS:
            raise bad(f"tensor '{name}' kind")
        for span_key in ("values", "index", "scale", "codebook"):
            span = t.get(span_key)
            if span is not None and not (isinstance(span, list) and len(span) == 2 and all(_is_int(v) for v in span)):
                raise bad(f"tensor '{name}' {span_key}")
        if "values" not in t:
            raise bad(f"tensor '{name}' values")
        if kind == "raw":
            if t.get("dtype") not in DTYPE_NAMES:
                raise bad(f"tensor '{name}' dtype")
            continue
        if t.get("enc") not in ENCODINGS and not str(t.get("enc", "")).startswith("relative-index-"):
            raise bad(f"tensor '{name}' encoding")
        if not _is_int(t.get("bits"), 1, FULL_PRECISION_BITS) or (kind in ("codes", "shared") and not _is_int(t["bits"], 2, 16)):
            raise bad(f"tensor '{name}' bits")
        if t["enc"] not in ("dense", "empty") and not (_is_int(t.get("n"), 0, numel) and "index" in t):
            raise bad(f"tensor '{name}' index")
        if kind == "codes" and ("scale" not in t or not dims):
            raise bad(f"tensor '{name}' scale")
        if kind == "shared" and "codebook" not in t:
            raise bad(f"tensor '{name}' codebook")
