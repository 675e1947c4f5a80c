"""A file's claims are checked before they cost anything: crafted headers, a schema-driven
validator under mutation, and the peak memory of reading crafted files in a child process."""

from __future__ import annotations

import copy
import json
import resource
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autocompress import artifact, compress
from autocompress.errors import ArtifactError, AutocompressError
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.tasks import TaskSpec, build_task

MEMORY_BUDGET_MB = 256  # over the interpreter's own footprint, plus the model a file really builds


@pytest.fixture(scope="module")
def genuine(cache_dir: Path) -> dict[str, Any]:
    """A real artifact of digits-cnn using most encodings: removed channels, 4-bit sparse codes
    (relative index or bitmask), k-means codes, a factorized layer, raw biases."""
    task = build_task(TaskSpec(model="digits-cnn"), cache_dir)
    model = task.build_model()
    plan = CompressionPlan(
        {
            "conv1": LayerPlan(sparsity=0.25, structured=True),
            "conv2": LayerPlan(sparsity=0.95, bits=4),
            "fc1": LayerPlan(sparsity=0.5, bits=3, quant_mode="kmeans"),
            "fc2": LayerPlan(rank=4),
        }
    )
    example = torch.zeros(2, 1, 8, 8)
    compress.apply(model, plan, example)
    data = artifact.pack(model, plan, task.artifact_task(), compress.structure(model)).data
    header, payload = artifact.read_header(data)
    raw = json.loads(_header_text(data))
    reference = artifact.loads(data)
    x = torch.randn(4, 1, 8, 8)
    assert header["channels_removed"] and any(t.get("kind") == "shared" for t in header["tensors"])
    return {"data": data, "header": raw, "payload": payload, "x": x, "out": reference(x)}


def _header_text(data: bytes) -> bytes:
    from autocompress.artifact.codec import Inflater

    inflater = Inflater(artifact.codec_of(data), data[len(artifact.MAGIC) + 1 :])
    (n,) = struct.unpack("<I", inflater.read(4))
    return inflater.read(n)


def craft(header: Any, payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return artifact.seal(struct.pack("<I", len(head)) + head + payload)


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


def _set(h: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    h = copy.deepcopy(h)
    target = h
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return h


_DELETE = object()

# Each crafted header the trust review found to end in a traceback, now one ArtifactError.
CRAFTED = {
    "task without num_classes": lambda h: _set(h, ("task", "num_classes"), _DELETE),
    "task without input_shape": lambda h: _set(h, ("task", "input_shape"), _DELETE),
    "empty input_shape": lambda h: _set(h, ("task", "input_shape"), []),
    "plan entry without bits": lambda h: _set(h, ("plan", "conv2", "bits"), _DELETE),
    "plan names a missing layer": lambda h: _set(h, ("plan", "nope"), {"sparsity": 0.0, "structured": False, "bits": 4, "rank": None}),
    "fold names a missing layer": lambda h: _set(h, ("bn_folded",), {"bn9": "conv1"}),
    "channels removed from a missing layer": lambda h: _set(h, ("channels_removed", "nope"), "01"),
    "index encoding with a malformed suffix": lambda h: {
        **h,
        "tensors": [{**t, "enc": "relative-index-x"} if t.get("enc", "dense") != "dense" and "enc" in t else t for t in h["tensors"]],
    },
    "a built-in model with 2^20 classes": lambda h: _set(h, ("task", "num_classes"), 1 << 20),
    "a tensor of 2^34 values": lambda h: {**h, "tensors": [{**h["tensors"][0], "shape": [1 << 17, 1 << 17], "enc": "empty"}, *h["tensors"][1:]]},
    "nested 300 levels": lambda h: _set(h, ("bn_folded",), {"a": _nested(300)}),
    "nested 100000 levels": lambda h: _set(h, ("task", "dataset"), _nested(100_000)),
    "a rank past the layer's width": lambda h: _set(h, ("plan", "fc2", "rank"), 1 << 19),
    "a removed channel past the layer's width": lambda h: _set(h, ("channels_removed", "conv1"), "ff" * 64),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_headers_end_in_one_artifact_error(case: str, genuine: dict[str, Any], tmp_path: Path) -> None:
    from tests.helpers import run_cli

    path = tmp_path / "crafted.acz"
    try:
        path.write_bytes(craft(CRAFTED[case](genuine["header"]), genuine["payload"]))
    except RecursionError:  # json.dumps itself cannot write 100000 levels: write the text by hand
        head = json.dumps({**genuine["header"], "task": {**genuine["header"]["task"], "dataset": "@"}}).replace('"@"', "[" * 100_000 + "]" * 100_000)
        path.write_bytes(artifact.seal(struct.pack("<I", len(head)) + head.encode() + genuine["payload"]))
    with pytest.raises(ArtifactError):
        artifact.load(path)
    if case in ("a built-in model with 2^20 classes", "nested 300 levels", "plan entry without bits"):  # the CLI's line, for a few
        proc = run_cli("inspect", str(path), cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr


def test_the_schema_knows_every_plan_field_and_encoding() -> None:
    """The header's schema names each LayerPlan field (a new field must be added there too) and
    each encoding the packer chooses among."""
    import dataclasses

    from autocompress.artifact.schema import ENCODING, LAYER_PLAN
    from autocompress.plan import LayerPlan
    from autocompress.size import MAX_INDEX_BITS

    assert set(LAYER_PLAN.required) | set(LAYER_PLAN.optional) == {f.name for f in dataclasses.fields(LayerPlan)}
    for encoding in ("dense", "empty", "bitmask", *(f"relative-index-{b}" for b in range(1, MAX_INDEX_BITS + 1))):
        ENCODING.check(encoding, "enc")


# --- the validator under mutation: ArtifactError or the same model, never another exception ---

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 40), max_value=1 << 40),
    st.sampled_from([0, 1, 2, 3, 4, 8, 16, 31, 32, 33, 255, 1 << 16, 1 << 20, 1 << 34, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["dense", "empty", "bitmask", "relative-index-4", "codes", "raw", "shared", "sparse", "float", "float16", "", "ff"]),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=6
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutations(draw: st.DrawFn, header: dict[str, Any]) -> dict[str, Any]:
    h = copy.deepcopy(header)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(h)
        path = draw(st.sampled_from(paths))
        parent = h
        for key in path[:-1]:
            parent = parent[key]
        how = draw(st.sampled_from(["replace", "delete", "nest", "add", "tweak", "tweak", "swap"]))
        old = parent[path[-1]]
        if how == "tweak" and isinstance(old, int) and not isinstance(old, bool):  # plausible: near the real value
            parent[path[-1]] = max(0, old + draw(st.sampled_from([-2, -1, 1, 2, old, -old // 2])))
        elif how == "swap":  # a value from elsewhere in the same header: well-typed, wrong place
            source = h
            for key in draw(st.sampled_from(paths)):
                source = source[key]
            parent[path[-1]] = copy.deepcopy(source)
        elif how == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif how == "nest":
            parent[path[-1]] = draw(st.sampled_from([[parent[path[-1]]], {"x": parent[path[-1]]}, _nested(draw(st.integers(2, 60)))]))
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(JSON_VALUES)
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return h


def test_mutated_headers_are_refused_or_load_the_same_model(genuine: dict[str, Any]) -> None:
    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        header = data.draw(mutations(genuine["header"]))
        try:
            blob = craft(header, genuine["payload"])
        except (ValueError, RecursionError):  # not JSON-writable (nan is, as NaN): nothing to read
            return
        try:
            model = artifact.loads(blob)
        except ArtifactError:
            return
        except AutocompressError as exc:  # any other of ours would be wrong too: load speaks ArtifactError
            raise AssertionError(f"{type(exc).__name__} for {header}") from exc
        assert torch.equal(model(genuine["x"]), genuine["out"]), f"a mutated header loaded a different model: {json.dumps(header)[:400]}"

    check()


# --- memory: a file's claims cost nothing until checked ---------------------------------------

CHILD = """
import gc, resource, sys, torch
import autocompress
from autocompress.artifact import ArtifactError
from autocompress.export import describe
gc.collect()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
what, path = sys.argv[1], sys.argv[2]
try:
    (describe if what == "inspect" else autocompress.load)(path)
    print("loaded")
except ArtifactError as exc:
    print("refused:", exc)
print("over_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def _over_mb(what: str, path: Path, limit_gb: int | None = None) -> tuple[str, int]:
    def cap() -> None:  # the MemoryError came from reserving the whole cap under ulimit -v 4G
        if limit_gb is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_gb << 30, limit_gb << 30))

    proc = subprocess.run([sys.executable, "-c", CHILD, what, str(path)], capture_output=True, text=True, timeout=300, preexec_fn=cap)
    assert "over_mb" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout, int(proc.stdout.split("over_mb")[1])


def test_reading_crafted_files_stays_within_the_memory_budget(genuine: dict[str, Any], tmp_path: Path) -> None:
    import zlib

    header, payload = genuine["header"], genuine["payload"]
    # A header that honestly declares a 2 GiB payload, with the payload behind it (zeros,
    # deflated at zlib's ~1000:1): its tensor is shaped to match the span, so every claim is
    # consistent with the file's length; only the model it names cannot hold such a tensor.
    big = copy.deepcopy(header)
    big["tensors"] = [{"name": "conv1.weight", "shape": [1 << 15, 1 << 14], "kind": "float", "enc": "dense", "bits": 32, "values": [0, 2 << 30]}]
    head = json.dumps(big).encode()
    squeezer = zlib.compressobj(1)
    parts = [artifact.MAGIC, b"\x00", squeezer.compress(struct.pack("<I", len(head)) + head)]
    zeros = bytes(64 << 20)
    parts += [squeezer.compress(zeros) for _ in range(32)]
    parts.append(squeezer.flush())
    honest = tmp_path / "honest-2gib.acz"
    honest.write_bytes(b"".join(parts))
    files = {
        "honest-2gib": honest,
        "tensor-2^34": tmp_path / "t34.acz",
        "classes-2^20": tmp_path / "c20.acz",
        "genuine": tmp_path / "genuine.acz",
    }
    files["tensor-2^34"].write_bytes(craft(CRAFTED["a tensor of 2^34 values"](header), payload))
    files["classes-2^20"].write_bytes(craft(_set(header, ("task", "num_classes"), 1 << 16), payload))  # within the schema: refused by size
    files["genuine"].write_bytes(genuine["data"])
    for name, path in files.items():
        for what in ("inspect", "load"):
            out, over = _over_mb(what, path)
            assert over < MEMORY_BUDGET_MB, f"{what} {name}: {over} MB over the interpreter ({out})"
            # inspect describes a header whose claims fit its file; loading refuses what the model cannot hold
            assert ("loaded" in out) == (name == "genuine" or (what == "inspect" and name in ("classes-2^20", "honest-2gib"))), (what, name, out)
    # Under an address-space limit, a small file is read without reserving the 4 GiB cap.
    out, _ = _over_mb("load", files["genuine"], limit_gb=6)
    assert "loaded" in out, out
