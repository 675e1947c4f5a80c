"""The packed artifact: the compressed model as it ships, and the size objective's bytes.

Layout (format 2)::

    b"ACZ2" | codec byte | codec( u32 header length | header JSON | payload )

The codec is zlib (0) or LZMA2 (1): both are in Python's standard library, and LZMA's adaptive
range coder is the entropy coder for the code and index streams (``benchmarks/techniques.py``
measures them against zstd and an order-0 ANS coder on real artifacts). Format 1 (``b"ACZ1" | zlib(...)``, bit-packed streams) is
still read.

The header holds the task spec (model name, classes, input shape), the plan, the structure
needed to rebuild the module (factorization ranks come from the plan; removed channels are
listed) and a table of tensors. Each tensor is stored as:

* ``codes``: integer codes of a uniformly quantized weight, offset to unsigned, in the cheapest
  of the dense / bitmask / relative-index encodings (see ``size.py``), plus one float16 scale per
  output channel;
* ``shared``: codebook indices of a weight-shared (k-means) weight in the same encodings, plus
  the float16 codebook (index i > 0 is ``codebook[i - 1]``; 0 is zero);
* ``sparse``: an unquantized weight's float32 nonzeros in the cheapest encoding;
* ``raw``: any other tensor (biases, norms, buffers) as little-endian bytes of its dtype; a
  quantized layer's bias is float16, the precision its model was evaluated at.

Code and relative-index streams are laid out as the header's ``packing`` says: ``bytes``, one
symbol per byte (two, little-endian, past 8 bits), which an entropy coder models well, or
``bits``, packed at their width as in format 1, which starts smaller. ``pack`` writes both
layouts under both codecs and keeps the smallest file (``benchmarks/techniques.py`` measures
what each choice wins); a body over 8 MiB is sealed with zlib alone (LZMA2 is slow there).

Loading never unpickles anything: the header is JSON, tensors are rebuilt from raw bytes, and
every offset and length is checked against the payload.
"""

from __future__ import annotations

import inspect
import io
import json
import lzma
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress import compress
from autocompress.errors import ArtifactError
from autocompress.plan import ACT_BITS, FULL_PRECISION_BITS, LOWRANK_MODES, QUANT_MODES, CompressionPlan, LayerPlan
from autocompress.size import WeightCodes, encoded_bits, weight_codes

MAGIC = b"ACZ2"
MAGIC_V1 = b"ACZ1"  # format 1: zlib, bit-packed streams; still read
FORMAT_VERSION = 2
READ_FORMATS = (1, 2)
CODECS = ("zlib", "lzma")  # the codec byte is the index
# Raw LZMA2 without literal context bits: the streams are symbols, not text.
# A 16 MiB dictionary: what the decoder allocates, whatever the file's size.
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 16 << 20, "lc": 0, "lp": 0, "pb": 0}]
MAX_UNPACKED_BYTES = 4 << 30  # refuse decompression bombs
MAX_HEADER_BYTES = 64 << 20  # a ResNet-152's header is under 1 MB
MAX_HEADER_DEPTH = 8  # the deepest real header nests 5 levels
MAX_TENSORS = 100_000
MAX_TENSOR_VALUES = 1 << 34
ZLIB_MAX_RATIO = 1100  # deflate expands a byte to at most ~1032: more declared is a lie
# LZMA2 runs at about 1 MB/s here: past this body size (a float ResNet's 45 MB took 48 s) zlib
# alone seals the file; LZMA2's gain on such bodies, mostly float32, is about 1%.
LZMA_MAX_BODY = 8 << 20
LZMA_MAX_RATIO = 1 << 16  # LZMA2 expands runs far further; max_length still bounds each read
MAX_FILE_BYTES = 4 << 30  # what load() reads of a file at most
ENCODINGS = ("dense", "empty", "bitmask")
KINDS = ("raw", "codes", "shared", "sparse", "float")
PLAN_KEYS = set(LayerPlan.__dataclass_fields__)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "bfloat16": torch.bfloat16}


@dataclass
class Packed:
    """A packed model: the artifact's bytes and the bytes each layer took before the codec."""

    data: bytes
    per_layer: dict[str, int] = field(default_factory=dict)


# ---- bit-level helpers ---------------------------------------------------------------------


def pack_uint(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers < 2**bits, little-endian bit order, ``bits`` bits each."""
    if values.size == 0:
        return b""
    shifts = np.arange(bits, dtype=np.uint64)
    planes = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_uint(data: bytes, bits: int, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * bits]
    if flat.size < count * bits:
        raise ArtifactError("artifact is truncated: a tensor's packed bits end early; re-export it")
    planes = flat.reshape(count, bits).astype(np.int64)
    return (planes << np.arange(bits, dtype=np.int64)).sum(axis=1)


def pack_symbols(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers < 2**bits, one byte each (two, little-endian, past 8 bits)."""
    return values.astype("<u2" if bits > 8 else np.uint8).tobytes()


def unpack_symbols(data: bytes, bits: int, count: int) -> np.ndarray:
    width = 2 if bits > 8 else 1
    if len(data) < count * width:
        raise ArtifactError("artifact is truncated: a tensor's symbols end early; re-export it")
    values = np.frombuffer(data[: count * width], dtype="<u2" if width == 2 else np.uint8).astype(np.int64)
    if values.size and int(values.max()) >> bits:
        raise ArtifactError(f"artifact is corrupt: a symbol is wider than its {bits} bits; re-export it")
    return values


PACKINGS = ("bytes", "bits")  # a symbol per byte (format 2's default), or bit-packed at its width


def _packer(packing: str):
    return pack_symbols if packing == "bytes" else pack_uint


def _encode_positions(flat_nonzero: np.ndarray, encoding: str, packing: str = "bytes") -> tuple[bytes, np.ndarray]:
    """Sparse index bytes and the positions of the entries to store (fillers included)."""
    positions = np.flatnonzero(flat_nonzero)
    if encoding == "bitmask":
        return np.packbits(flat_nonzero.astype(np.uint8), bitorder="little").tobytes(), positions
    index_bits = int(encoding.rsplit("-", 1)[1])
    cap = 2**index_bits - 1
    gaps = np.diff(positions, prepend=-1) - 1  # zeros before each nonzero
    fillers = gaps // (cap + 1)  # a filler entry stores a zero after `cap` skipped zeros
    group_end = np.cumsum(fillers + 1) - 1  # index of each real entry among all entries
    skips = np.full(int(group_end[-1]) + 1 if group_end.size else 0, cap, dtype=np.int64)
    skips[group_end] = gaps - fillers * (cap + 1)
    entries = np.cumsum(skips + 1) - 1
    return _packer(packing)(skips, index_bits), entries


def _decode_positions(index: bytes, encoding: str, numel: int, entries: int, symbols: bool = True) -> np.ndarray:
    if encoding == "bitmask":
        mask = np.unpackbits(np.frombuffer(index, dtype=np.uint8), bitorder="little")[:numel]
        return np.flatnonzero(mask)
    index_bits = int(encoding.rsplit("-", 1)[1])
    skips = (unpack_symbols if symbols else unpack_uint)(index, index_bits, entries)
    positions = np.cumsum(skips + 1) - 1
    if positions.size and positions[-1] >= numel:
        raise ArtifactError("artifact is corrupt: a sparse index points past its tensor; re-export it")
    return positions


# ---- pack ----------------------------------------------------------------------------------


class _Payload:
    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def add(self, data: bytes) -> list[int]:
        offset = self.buf.tell()
        self.buf.write(data)
        return [offset, len(data)]


def _pack_weight(
    values: torch.Tensor,
    bits: int,
    scale: torch.Tensor | None,
    payload: _Payload,
    codebook: torch.Tensor | None = None,
    packing: str = "bytes",
    encoding: str | None = None,
) -> dict[str, Any]:
    flat = values.detach().reshape(-1).cpu()
    encoding = encoding or encoded_bits(flat, bits)[1]
    entry: dict[str, Any] = {"enc": encoding, "bits": bits}
    nonzero = (flat != 0).numpy()
    if encoding in ("dense", "empty"):
        stored = flat.numpy() if encoding == "dense" else np.zeros(0)
        positions = None
    else:
        index, positions = _encode_positions(nonzero, encoding, packing)
        entry["index"] = payload.add(index)
        entry["n"] = int(positions.size)
        stored = flat.numpy()[positions]
    if codebook is not None:
        entry["kind"] = "shared"
        entry["values"] = payload.add(_packer(packing)(stored.astype(np.int64), bits))
        entry["codebook"] = payload.add(codebook.detach().cpu().numpy().astype("<f2").tobytes())
    elif scale is not None:
        qmax = 2 ** (bits - 1) - 1
        entry["kind"] = "codes"
        entry["values"] = payload.add(_packer(packing)(stored.astype(np.int64) + qmax, bits))
        entry["scale"] = payload.add(scale.numpy().astype("<f2").tobytes())
    else:
        entry["kind"] = "sparse" if positions is not None else "float"
        entry["values"] = payload.add(stored.astype("<f4").tobytes())
    return entry


def pack(model: nn.Module, plan: CompressionPlan, task: dict[str, Any], structure: dict[str, dict] | None = None) -> Packed:
    """Pack a (compressed, evaluated) model. Bakes its masks and quantizers in place.

    Args:
        model: the model as evaluated, parametrizations attached (or a plain baseline).
        plan: the plan it was compressed with (ranks rebuild the factorized layers).
        task: ``{"model", "num_classes", "input_shape", ...}``: what rebuilds the module.
        structure: ``compress.structure(model)``: removed channels and folded BatchNorms.
    """
    model.eval()
    codes: dict[int, WeightCodes] = {}
    for layer in compress.compressible_layers(model).values():
        wc = weight_codes(layer)
        codes[id(layer)] = wc
    half_bias = {id(m) for m in model.modules() if parametrize.is_parametrized(m, "bias")}  # quantized layers' biases
    compress.bake(model)
    owner = {}
    half = set()
    for name, module in model.named_modules():
        if isinstance(module, compress.COMPRESSIBLE_TYPES):
            owner[f"{name}.weight" if name else "weight"] = module
            if id(module) in half_bias:
                half.add(f"{name}.bias" if name else "bias")
    layer_of = _layer_names(model, plan)
    state = model.state_dict()
    encodings: dict[str, str] = {}  # chosen once: the same in every layout
    candidates = []
    # Which layout entropy-codes smaller depends on the tensors (bytes expose the symbols to the
    # coder's statistics; bits start smaller): every layout under every codec, the smallest kept.
    for packing in PACKINGS:
        payload = _Payload()
        tensors: list[dict[str, Any]] = []
        per_layer: dict[str, int] = {}
        for key, tensor in state.items():
            start = payload.buf.tell()
            module = owner.get(key)
            if module is not None:
                found = codes.get(id(module))
                quantized = found is not None and found.bits < FULL_PRECISION_BITS
                values, bits = (found.values, found.bits) if quantized and found is not None else (tensor, FULL_PRECISION_BITS)
                if key not in encodings:
                    encodings[key] = encoded_bits(values.detach().reshape(-1).cpu(), bits)[1]
                if quantized and found is not None:
                    entry = _pack_weight(found.values, found.bits, found.scale, payload, found.codebook, packing, encodings[key])
                else:
                    entry = _pack_weight(tensor, FULL_PRECISION_BITS, None, payload, packing=packing, encoding=encodings[key])
            else:
                if key in half:
                    tensor = tensor.half()  # exactly what the evaluated model used (compress.quantize.HalfBias)
                dtype = str(tensor.dtype).removeprefix("torch.")
                if dtype not in _DTYPES:
                    raise ArtifactError(f"tensor '{key}' has dtype {dtype}, which the artifact format does not store")
                entry = {"kind": "raw", "dtype": dtype, "values": payload.add(_raw_bytes(tensor))}
            entry["name"] = key
            entry["shape"] = list(tensor.shape)
            tensors.append(entry)
            layer = layer_of(key)
            if layer is not None:
                per_layer[layer] = per_layer.get(layer, 0) + payload.buf.tell() - start
        header = {
            "format": FORMAT_VERSION,
            "packing": packing,
            "task": task,
            "plan": plan.to_dict(),
            "channels_removed": {k: index_mask(v) for k, v in (structure or {}).get("channels_removed", {}).items()},
            "bn_folded": (structure or {}).get("bn_folded", {}),
            "tensors": tensors,
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        body = struct.pack("<I", len(head)) + head + payload.buf.getvalue()
        codecs = CODECS if len(body) <= LZMA_MAX_BODY else ("zlib",)
        candidates += [Packed(seal(body, codec), per_layer) for codec in codecs]
        if not any(t["kind"] in ("codes", "shared") or str(t.get("enc", "")).startswith("relative-index-") for t in tensors):
            break  # no code or index stream: every layout is the same file
    return min(candidates, key=lambda p: len(p.data))


def seal(body: bytes, codec: str = "zlib") -> bytes:
    """The file around an uncompressed body: magic, codec byte, the body through the codec."""
    squeezed = zlib.compress(body, 9) if codec == "zlib" else lzma.compress(body, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    return MAGIC + bytes([CODECS.index(codec)]) + squeezed


def codec_of(data: bytes) -> str:
    """The codec a file was sealed with (format 1 files are zlib)."""
    return CODECS[data[len(MAGIC)]] if data.startswith(MAGIC) else "zlib"


class _Inflater:
    """Bounded reads from a zlib or LZMA2 stream: ``read(n)`` never inflates more than n bytes,
    so a bomb costs what its header declares, not what it expands to."""

    def __init__(self, codec: str, data: bytes) -> None:
        self.codec = codec
        self.pending = data
        self.z = zlib.decompressobj() if codec == "zlib" else None
        self.x = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS) if codec == "lzma" else None

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            if self.z is not None:
                chunk = self.z.decompress(self.pending, n - len(out))
                self.pending = self.z.unconsumed_tail
            else:
                assert self.x is not None
                if self.x.eof:
                    break
                src, self.pending = (self.pending, b"") if self.x.needs_input else (b"", self.pending)
                chunk = self.x.decompress(src, n - len(out))
            out += chunk
            if not chunk and (not self.pending or self.eof):
                break
        return out

    @property
    def eof(self) -> bool:
        return self.z.eof if self.z is not None else bool(self.x and self.x.eof)

    @property
    def more(self) -> bool:
        """Whether input remains that could inflate to more output."""
        if self.z is not None:
            return bool(self.pending) or bool(self.z.unused_data)
        assert self.x is not None
        return bool(self.pending) or not self.x.needs_input or bool(self.x.unused_data)


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()


def _layer_names(model: nn.Module, plan: CompressionPlan):
    names = sorted(compress.layer_map(model), key=len, reverse=True)

    def layer_of(key: str) -> str | None:
        for n in names:
            if key.startswith(f"{n}."):
                return n
        return None

    return layer_of


# ---- unpack --------------------------------------------------------------------------------


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
    inflater = _Inflater(codec, stream)
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
            if t.get("dtype") not in _DTYPES:
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


def index_mask(indices: list[int]) -> str:
    """Removed channel indices as a hex bitmask: a few bytes where a list of numbers took hundreds."""
    if not indices:
        return ""
    bits = np.zeros(max(indices) + 1, dtype=np.uint8)
    bits[list(indices)] = 1
    return np.packbits(bits, bitorder="little").tobytes().hex()


def mask_indices(mask: str) -> list[int]:
    return np.flatnonzero(np.unpackbits(np.frombuffer(bytes.fromhex(mask), dtype=np.uint8), bitorder="little")).tolist()


def _segment(payload: bytes, span: Any, name: str) -> bytes:
    if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and v >= 0 for v in span)):
        raise ArtifactError(f"artifact is corrupt: tensor '{name}' has a bad offset")
    start, length = span
    if start + length > len(payload):
        raise ArtifactError(f"artifact is truncated: tensor '{name}' ends past the data; re-export it")
    return payload[start : start + length]


def decode_tensors(header: dict[str, Any], payload: bytes) -> Iterator[tuple[str, torch.Tensor]]:
    symbols = header.get("packing", "bytes" if header["format"] >= 2 else "bits") == "bytes"  # format 1 bit-packed its streams
    unpack = unpack_symbols if symbols else unpack_uint
    for entry in header["tensors"]:
        name, shape = entry["name"], tuple(entry["shape"])
        numel = int(np.prod(shape)) if shape else 1
        values = _segment(payload, entry["values"], name)
        if entry["kind"] == "raw":
            dtype = entry["dtype"]
            if dtype not in _DTYPES:
                raise ArtifactError(f"artifact is corrupt: tensor '{name}' has unknown dtype {dtype}")
            if dtype == "bfloat16":
                t = torch.from_numpy(np.frombuffer(values, dtype="<i2").copy()).view(torch.bfloat16)
            else:
                t = torch.from_numpy(np.frombuffer(values, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype))
            if t.numel() != numel:
                raise ArtifactError(f"artifact is corrupt: tensor '{name}' has {t.numel()} values for shape {list(shape)}")
            yield name, t.reshape(shape)
            continue
        enc, bits = entry["enc"], int(entry["bits"])
        count = numel if enc == "dense" else (0 if enc == "empty" else int(entry["n"]))
        if entry["kind"] == "codes":
            qmax = 2 ** (bits - 1) - 1
            stored = torch.from_numpy(unpack(values, bits, count) - qmax).float()
        elif entry["kind"] == "shared":
            book = np.frombuffer(_segment(payload, entry["codebook"], name), dtype="<f2").astype(np.float32)
            table = torch.from_numpy(np.concatenate([np.zeros(1, np.float32), book]))
            codes = torch.from_numpy(unpack(values, bits, count))
            if codes.numel() and int(codes.max()) >= table.numel():
                raise ArtifactError(f"artifact is corrupt: tensor '{name}' has a code past its {book.size}-entry codebook")
            stored = table[codes]
        else:
            arr = np.frombuffer(values, dtype="<f4")
            if arr.size != count:
                raise ArtifactError(f"artifact is truncated: tensor '{name}' has {arr.size} of {count} values")
            stored = torch.from_numpy(arr.astype(np.float32))
        flat = torch.zeros(numel, dtype=torch.float32)
        if enc == "dense":
            flat = stored
        elif enc != "empty":
            positions = _decode_positions(_segment(payload, entry["index"], name), enc, numel, count, symbols)
            if positions.size != count:
                raise ArtifactError(f"artifact is corrupt: tensor '{name}' index and values disagree")
            flat[torch.from_numpy(positions)] = stored
        weight = flat.reshape(shape)
        if entry["kind"] == "codes":
            scale = torch.from_numpy(np.frombuffer(_segment(payload, entry["scale"], name), dtype="<f2").astype(np.float16))
            if scale.numel() != shape[0]:
                raise ArtifactError(f"artifact is corrupt: tensor '{name}' has {scale.numel()} scales for {shape[0]} channels")
            weight = weight * scale.float().reshape(-1, *([1] * (len(shape) - 1)))
        yield name, weight


Build = Callable[..., nn.Module]  # (num_classes=, input_shape=) -> the untrained architecture


def rebuild(header: dict[str, Any], build: Build | None = None, source: str = "artifact") -> nn.Module:
    """The module skeleton the header describes: the model factory, then the plan's structure.

    A file is data: its header may name a built-in model or a ``torchvision:NAME`` classifier,
    and nothing else is ever imported because a file says so. A model of the user's own
    (``module:function``) is rebuilt only through ``build``, which the caller passes.
    """
    from autocompress.tasks import MODELS
    from autocompress.tasks.custom import is_custom

    task = header["task"]
    name = str(task["model"])
    if build is None and is_custom(name):
        raise ArtifactError(
            f"{source} names user code '{name}' as its model; a file never makes autocompress import code: "
            "pass the architecture yourself, autocompress.load(FILE, build=your_model_function)"
        )
    if build is not None and not inspect.signature(build).parameters:
        model = build()  # a build hook or a model class of no arguments: the shapes are its own
    else:
        factory = build or MODELS.get(name).factory
        # A task of the user's own may have no classes (a regression): its build takes none anyway.
        model = factory(num_classes=task.get("num_classes"), input_shape=tuple(task.get("input_shape", [])))
    plan = CompressionPlan.from_dict(header["plan"])
    example = torch.zeros(1, *task["input_shape"])
    compress.apply_structure(model, plan, header, example)
    return model.eval()


def loads(data: bytes, source: str = "artifact", build: Build | None = None) -> nn.Module:
    """Rebuild a packed model; ``build`` makes the architecture of a model of your own."""
    header, payload = read_header(data, source)
    model = rebuild(header, build, source)
    state = dict(decode_tensors(header, payload))
    expected = model.state_dict()
    for key, tensor in state.items():
        if key not in expected or expected[key].shape != tensor.shape:
            raise ArtifactError(f"{source}: tensor '{key}' does not fit the rebuilt model; it was made by another version")
    missing = set(expected) - set(state)
    if missing:
        raise ArtifactError(f"{source}: tensor '{sorted(missing)[0]}' is missing; re-export it")
    model.load_state_dict(state)
    return model.eval()


def load(path: str | Path, build: Build | None = None) -> nn.Module:
    """Rebuild the compressed ``nn.Module`` stored in an artifact file.

    Args:
        build: for a model of your own (a ``module:function`` task), a callable returning its
            untrained architecture: the study's ``task.build`` hook (no arguments), or one taking
            ``num_classes=`` and ``input_shape=``.
            Built-in and torchvision models need none; a file never names code to import.
    """
    return loads(read_file(path), str(path), build)


def read_file(path: str | Path) -> bytes:
    """A file's bytes, refused past MAX_FILE_BYTES (``/dev/zero`` is not read forever)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(MAGIC))  # a foreign file or device is refused before reading on
            if magic not in (MAGIC, MAGIC_V1):
                return magic
            data = magic + f.read(MAX_FILE_BYTES)
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact ({path}): {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ArtifactError(
            f"{path} is larger than {MAX_FILE_BYTES >> 30} GiB, far beyond any packed model: pass an artifact from 'autocompress export'"
        )
    return data
