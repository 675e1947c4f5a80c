"""The packed artifact: the compressed model as it ships, and the size objective's bytes.

Layout (format 1)::

    b"ACZ1" | zlib( u32 header length | header JSON | payload )

The header holds the task spec (model name, classes, input shape), the plan, the structure
needed to rebuild the module (factorization ranks come from the plan; removed channels are
listed) and a table of tensors. Each tensor is stored as:

* ``codes``: integer codes of a quantized weight, offset to unsigned and bit-packed at ``bits``
  bits, in the cheapest of the dense / bitmask / relative-index encodings (see ``size.py``),
  plus one float16 scale per output channel;
* ``sparse``: an unquantized weight's float32 nonzeros in the cheapest encoding;
* ``raw``: any other tensor (biases, norms, buffers) as little-endian bytes of its dtype.

Loading never unpickles anything: the header is JSON, tensors are rebuilt from raw bytes, and
every offset and length is checked against the payload.
"""

from __future__ import annotations

import inspect
import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress import compress
from autocompress.errors import ArtifactError
from autocompress.plan import FULL_PRECISION_BITS, CompressionPlan
from autocompress.size import WeightCodes, encoded_bits, weight_codes

MAGIC = b"ACZ1"
FORMAT_VERSION = 1
MAX_UNPACKED_BYTES = 4 << 30  # refuse decompression bombs
MAX_HEADER_BYTES = 64 << 20  # a ResNet-152's header is under 1 MB
MAX_HEADER_DEPTH = 8  # the deepest real header nests 5 levels
MAX_TENSORS = 100_000
MAX_TENSOR_VALUES = 1 << 34
ZLIB_MAX_RATIO = 1100  # deflate expands a byte to at most ~1032: more declared is a lie
MAX_FILE_BYTES = 4 << 30  # what load() reads of a file at most
ENCODINGS = ("dense", "empty", "bitmask")
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


def _encode_positions(flat_nonzero: np.ndarray, encoding: str) -> tuple[bytes, np.ndarray]:
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
    return pack_uint(skips, index_bits), entries


def _decode_positions(index: bytes, encoding: str, numel: int, entries: int) -> np.ndarray:
    if encoding == "bitmask":
        mask = np.unpackbits(np.frombuffer(index, dtype=np.uint8), bitorder="little")[:numel]
        return np.flatnonzero(mask)
    index_bits = int(encoding.rsplit("-", 1)[1])
    skips = unpack_uint(index, index_bits, entries)
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


def _pack_weight(values: torch.Tensor, bits: int, scale: torch.Tensor | None, payload: _Payload) -> dict[str, Any]:
    flat = values.detach().reshape(-1).cpu()
    _, encoding = encoded_bits(flat, bits)
    entry: dict[str, Any] = {"enc": encoding, "bits": bits}
    nonzero = (flat != 0).numpy()
    if encoding in ("dense", "empty"):
        stored = flat.numpy() if encoding == "dense" else np.zeros(0)
        positions = None
    else:
        index, positions = _encode_positions(nonzero, encoding)
        entry["index"] = payload.add(index)
        entry["n"] = int(positions.size)
        stored = flat.numpy()[positions]
    if scale is not None:
        qmax = 2 ** (bits - 1) - 1
        entry["kind"] = "codes"
        entry["values"] = payload.add(pack_uint(stored.astype(np.int64) + qmax, bits))
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
    compress.bake(model)
    owner = {}
    for name, module in model.named_modules():
        if isinstance(module, compress.COMPRESSIBLE_TYPES):
            owner[f"{name}.weight" if name else "weight"] = module
    layer_of = _layer_names(model, plan)
    payload = _Payload()
    tensors: list[dict[str, Any]] = []
    per_layer: dict[str, int] = {}
    for key, tensor in model.state_dict().items():
        start = payload.buf.tell()
        module = owner.get(key)
        if module is not None:
            found = codes.get(id(module))
            if found is not None and found.bits < FULL_PRECISION_BITS:
                entry = _pack_weight(found.values, found.bits, found.scale, payload)
            else:
                entry = _pack_weight(tensor, FULL_PRECISION_BITS, None, payload)
        else:
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
        "task": task,
        "plan": plan.to_dict(),
        "channels_removed": {k: index_mask(v) for k, v in (structure or {}).get("channels_removed", {}).items()},
        "bn_folded": (structure or {}).get("bn_folded", {}),
        "tensors": tensors,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    body = struct.pack("<I", len(head)) + head + payload.buf.getvalue()
    return Packed(MAGIC + zlib.compress(body, 9), per_layer)


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
    may not exceed what zlib can expand this file to. A bomb is refused after reading its
    header, not after inflating gigabytes.
    """
    if not data.startswith(MAGIC):
        raise ArtifactError(f"{source} is not an autocompress artifact (no ACZ1 signature): export one with 'autocompress export'")
    inflater = zlib.decompressobj()
    stream = data[len(MAGIC) :]
    try:
        head = inflater.decompress(stream, 4 + MAX_HEADER_BYTES)
        if len(head) < 4:
            raise ArtifactError(f"{source} is truncated or corrupt (the compressed stream ends early): re-export it")
        (head_len,) = struct.unpack("<I", head[:4])
        if head_len > MAX_HEADER_BYTES:
            raise ArtifactError(
                f"{source} declares a {head_len}-byte header, over the {MAX_HEADER_BYTES} this version reads: it is not a real artifact"
            )
        while len(head) < 4 + head_len and inflater.unconsumed_tail:
            head += inflater.decompress(inflater.unconsumed_tail, 4 + head_len - len(head))
    except zlib.error:
        raise ArtifactError(f"{source} is corrupt (bad compressed data): re-export it") from None
    if len(head) < 4 + head_len:
        raise ArtifactError(f"{source} is truncated or corrupt (the compressed stream ends early): re-export it")
    try:
        header = json.loads(head[4 : 4 + head_len])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ArtifactError(f"{source} has a corrupt header: re-export it") from None
    check_header(header, source)
    declared = max((span[0] + span[1] for t in header["tensors"] for k in ("values", "index", "scale") if (span := t.get(k))), default=0)
    if declared > min(MAX_UNPACKED_BYTES, ZLIB_MAX_RATIO * len(data)):
        raise ArtifactError(
            f"{source} declares {declared} bytes of tensors, more than its {len(data)} compressed bytes can hold: it is not a real artifact"
        )
    body = head[4 + head_len :]
    try:
        want = declared - len(body)
        rest = inflater.unconsumed_tail
        while want > 0 and rest:
            chunk = inflater.decompress(rest, want)
            body += chunk
            want -= len(chunk)
            rest = inflater.unconsumed_tail
        # A real file ends where its header says: one more byte of output means it does not.
        if rest and inflater.decompress(rest, 1):
            raise ArtifactError(f"{source} holds more data than its header declares: it is not a real artifact; re-export it")
    except zlib.error:
        raise ArtifactError(f"{source} is corrupt (bad compressed data): re-export it") from None
    if not inflater.eof:
        raise ArtifactError(f"{source} is truncated or corrupt (the compressed stream ends early): re-export it")
    if len(body) < declared:
        raise ArtifactError(f"{source} is truncated: its tensors end past the data; re-export it")
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
    if header.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{source} has format {header.get('format')!r}; this version reads format {FORMAT_VERSION}")
    if _json_depth(header) > MAX_HEADER_DEPTH:
        raise bad("nested too deeply")
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
        if not isinstance(lp, dict) or set(lp) - {"sparsity", "structured", "bits", "rank"}:
            raise bad(f"plan.{name}")
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
        if kind not in ("raw", "codes", "sparse", "float"):
            raise bad(f"tensor '{name}' kind")
        for span_key in ("values", "index", "scale"):
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
        if not _is_int(t.get("bits"), 1, FULL_PRECISION_BITS) or (kind == "codes" and not _is_int(t["bits"], 2, 16)):
            raise bad(f"tensor '{name}' bits")
        if t["enc"] not in ("dense", "empty") and not (_is_int(t.get("n"), 0, numel) and "index" in t):
            raise bad(f"tensor '{name}' index")
        if kind == "codes" and ("scale" not in t or not dims):
            raise bad(f"tensor '{name}' scale")


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
            stored = torch.from_numpy(unpack_uint(values, bits, count) - qmax).float()
        else:
            arr = np.frombuffer(values, dtype="<f4")
            if arr.size != count:
                raise ArtifactError(f"artifact is truncated: tensor '{name}' has {arr.size} of {count} values")
            stored = torch.from_numpy(arr.astype(np.float32))
        flat = torch.zeros(numel, dtype=torch.float32)
        if enc == "dense":
            flat = stored
        elif enc != "empty":
            positions = _decode_positions(_segment(payload, entry["index"], name), enc, numel, count)
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
        model = factory(num_classes=task["num_classes"], input_shape=tuple(task["input_shape"]))
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
            if magic != MAGIC:
                return magic
            data = magic + f.read(MAX_FILE_BYTES)
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact ({path}): {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ArtifactError(
            f"{path} is larger than {MAX_FILE_BYTES >> 30} GiB, far beyond any packed model: pass an artifact from 'autocompress export'"
        )
    return data
