"""Loading: a checked header's tensors decoded and the module rebuilt. A file is data: nothing
is unpickled, and nothing is imported because a file names it."""

from __future__ import annotations

import inspect
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress import compress
from autocompress.artifact.format import MAGIC, MAGIC_V1, MAX_FILE_BYTES, READ_CHUNK, skeleton_cap
from autocompress.artifact.header import Artifact, open_file
from autocompress.artifact.streams import decode_positions, unpack_symbols, unpack_uint
from autocompress.errors import ArtifactError, AutocompressError
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


def rebuild(header: dict[str, Any], build: Build | None = None, source: str = "artifact", values_cap: int | None = None) -> nn.Module:
    """The module skeleton the header describes: the model factory, then the plan's structure.

    A file is data: its header may name a built-in model or a ``torchvision:NAME`` classifier,
    and nothing else is ever imported because a file says so. A model of the user's own
    (``module:function``) is rebuilt only through ``build``, which the caller passes. A built-in
    model is first built on the meta device (no memory): past ``values_cap`` values, or naming
    layers it lacks, the header is refused before the real one is allocated.
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
        make: Callable[[], nn.Module] = build  # a build hook or a model class of no arguments: the shapes are its own
    else:
        factory = build or MODELS.get(name).factory
        # A task of the user's own may have no classes (a regression): its build takes none anyway.
        shape = tuple(task.get("input_shape", []))

        def make() -> nn.Module:
            return factory(num_classes=task.get("num_classes"), input_shape=shape)

    skeleton: nn.Module | None = None
    if build is None:
        for key in ("input_shape", "num_classes"):
            if not task.get(key):
                raise ArtifactError(f"{source} has a corrupt header (task.{key} is missing; model '{name}' is built for one): re-export it")
        try:
            with torch.device("meta"):
                skeleton = make()
        except Exception:  # noqa: BLE001 - a few initialisers copy data (regnet): such models are checked once built
            skeleton = None
        if skeleton is not None:
            _check_model(header, skeleton, source, values_cap)
    model = make()
    if build is not None or skeleton is None:
        _check_model(header, model, source, values_cap)
    plan = CompressionPlan.from_dict(header["plan"])
    example = task_example(task)
    if header.get("canonical"):  # the plan names layers of the canonical form
        compress.canonical(model)
    compress.apply_structure(model, plan, header, example)
    return model.eval()


def task_example(task: dict[str, Any], batch: int = 1) -> torch.Tensor:
    """An input batch of zeros the header's model takes: token ids, or floats."""
    dtype = torch.int64 if task.get("inputs") == "token ids" else torch.float32
    return torch.zeros(batch, *task.get("input_shape", []), dtype=dtype)


def _check_model(header: dict[str, Any], model: nn.Module, source: str, values_cap: int | None) -> None:
    """The model is no larger than the file may make a reader build, and has every layer the
    plan, the folds and the removed channels name."""
    values = sum(t.numel() for t in model.state_dict().values())
    if values_cap is not None and values > values_cap:
        raise ArtifactError(
            f"{source} describes a {header['task']['model']} of {values} values, more than a file of its size packs: it is not a real artifact"
        )
    if header.get("canonical"):
        compress.canonical(model)
    layers = compress.compressible_layers(model)
    modules = dict(model.named_modules())
    named = [("plan", n, n in layers) for n in header["plan"]]
    named += [("channels_removed", n, n in layers) for n in header["channels_removed"]]
    named += [
        ("bn_folded", bn, isinstance(modules.get(bn), nn.modules.batchnorm._BatchNorm) and layer in layers)
        for bn, layer in header["bn_folded"].items()
    ]
    for field, layer, found in named:
        if not found:
            raise ArtifactError(
                f"{source}: its {field} names '{layer}', which model '{header['task']['model']}' does not have as such: it was made for another model; re-export it"
            )


def _check_table(header: dict[str, Any], expected: dict[str, torch.Tensor], source: str) -> None:
    """The tensor table against the rebuilt model, names and shapes, before a byte is decoded."""
    seen = set()
    for t in header["tensors"]:
        key = t["name"]
        if key not in expected or tuple(expected[key].shape) != tuple(t["shape"]):
            raise ArtifactError(f"{source}: tensor '{key}' does not fit the rebuilt model; it was made by another version")
        seen.add(key)
    missing = set(expected) - seen
    if missing:
        raise ArtifactError(f"{source}: tensor '{sorted(missing)[0]}' is missing; re-export it")


# What a header that passed its schema may still make torch or NumPy raise while it is rebuilt (a
# rank past a layer's width, a channel index past its count): refused as a bad file, in one line.
_REBUILD_ERRORS = (KeyError, ValueError, TypeError, IndexError, RuntimeError, RecursionError, AttributeError, AutocompressError)


def loads(data: bytes | Artifact, source: str = "artifact", build: Build | None = None) -> nn.Module:
    """Rebuild a packed model (its bytes, or the ``Artifact`` they were read into once);
    ``build`` makes the architecture of a model of your own.

    From bytes, the payload is inflated only after the model is rebuilt and the header's tensor
    table matched against it: what a file's payload may cost is then bounded by the model it
    really builds, not by what its header claims."""
    if isinstance(data, Artifact):
        header, source, cap = data.header, data.source, data.skeleton_cap
        rest = lambda: data.payload  # noqa: E731  (read already)
    else:
        header, rest = open_file(data, source)
        cap = skeleton_cap(len(data))
    try:
        model = rebuild(header, build, source, cap)
        _check_table(header, model.state_dict(), source)
        model.load_state_dict(dict(decode_tensors(header, rest())))
    except ArtifactError:
        raise
    except _REBUILD_ERRORS as exc:
        raise ArtifactError(
            f"{source} does not rebuild ({type(exc).__name__}: {str(exc)[:200]}): it was made for another model or version; re-export it"
        ) from None
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
    """A file's bytes, refused past MAX_FILE_BYTES (``/dev/zero`` is not read forever).

    A regular file is read at its own size; anything else in chunks: nothing reserves the cap."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(MAGIC))  # a foreign file or device is refused before reading on
            if magic not in (MAGIC, MAGIC_V1):
                return magic
            info = os.fstat(f.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > MAX_FILE_BYTES:
                raise _too_large(path)
            chunks, total = [magic], len(magic)
            while chunk := f.read(READ_CHUNK):
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_FILE_BYTES:
                    raise _too_large(path)
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact ({path}): {exc.strerror}") from None
    return b"".join(chunks)


def _too_large(path: Path) -> ArtifactError:
    return ArtifactError(
        f"{path} is larger than {MAX_FILE_BYTES >> 30} GiB, far beyond any packed model: pass an artifact from 'autocompress export'"
    )
