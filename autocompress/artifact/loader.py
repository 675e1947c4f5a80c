"""Loading: a checked header's tensors decoded and the module rebuilt. A file is data: nothing
is unpickled, and nothing is imported because a file names it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress import compress
from autocompress.artifact.format import MAGIC, MAGIC_V1, MAX_FILE_BYTES
from autocompress.artifact.header import Artifact, read_header
from autocompress.artifact.streams import decode_positions, unpack_symbols, unpack_uint
from autocompress.errors import ArtifactError
from autocompress.plan import CompressionPlan

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "bfloat16": torch.bfloat16}


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
            positions = decode_positions(_segment(payload, entry["index"], name), enc, numel, count, symbols)
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


def loads(data: bytes | Artifact, source: str = "artifact", build: Build | None = None) -> nn.Module:
    """Rebuild a packed model (its bytes, or the ``Artifact`` they were read into once);
    ``build`` makes the architecture of a model of your own."""
    if isinstance(data, Artifact):
        header, payload, source = data.header, data.payload, data.source
    else:
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
