"""The artifact format: format 1 still read, the smaller codec kept, float16 biases, bounded streams, and a study sized by another packer not continued."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress import artifact, compress
from autocompress.artifact import packer
from autocompress.artifact.packer import Payload
from autocompress.plan import CompressionPlan, LayerPlan
from tests.helpers import small_mlp


def test_format_1_artifacts_still_load(tmp_path: Path) -> None:
    """A format-1 file (bit-packed streams, zlib, no packing key) made from a format-2 one reloads the same."""
    model = small_mlp()
    plan = CompressionPlan({"0": LayerPlan(sparsity=0.9, bits=4), "2": LayerPlan(bits=3), "4": LayerPlan(sparsity=0.5)})
    compress.apply(model, plan)
    data = artifact.pack(model, plan, {"model": "x", "input_shape": [20]}).data
    header, payload = artifact.read_header(data)
    old = Payload()
    for t in header["tensors"]:
        for key in ("values", "index", "scale"):
            if key not in t:
                continue
            chunk = payload[t[key][0] : sum(t[key])]
            width = {"values": t.get("bits"), "index": int(t["enc"].rsplit("-", 1)[1]) if "relative" in t.get("enc", "") else None}.get(key)
            if t["kind"] == "codes" and width and key != "scale" and header["packing"] == "bytes":
                chunk = artifact.pack_uint(np.frombuffer(chunk, np.uint8).astype(np.int64), width)
            t[key] = old.add(chunk)
    header["format"] = 1
    del header["packing"]
    header["channels_removed"] = {}
    head = json.dumps(header).encode()
    v1 = artifact.MAGIC_V1 + zlib.compress(struct.pack("<I", len(head)) + head + old.buf.getvalue())
    x = torch.randn(4, 20)
    old_file = tmp_path / "old.acz"
    old_file.write_bytes(v1)  # read from disk: the file reader knows both signatures
    assert torch.equal(artifact.load(old_file, build=small_mlp)(x), artifact.loads(data, build=small_mlp)(x))


def test_the_smaller_codec_is_kept_and_both_read() -> None:
    model = small_mlp()
    plan = CompressionPlan({n: LayerPlan(sparsity=0.9, bits=4, quant_mode="kmeans") for n in ("0", "2", "4")})
    compress.apply(model, plan)
    packed = artifact.pack(model, plan, {"model": "x", "input_shape": [20]}).data
    header, payload = artifact.read_header(packed)
    head = json.dumps({**header, "channels_removed": {}}, separators=(",", ":")).encode()
    body = struct.pack("<I", len(head)) + head + payload
    sealed = {codec: artifact.seal(body, codec) for codec in artifact.CODECS}
    assert len(packed) <= min(len(v) for v in sealed.values())
    x = torch.randn(3, 20)
    for codec, data in sealed.items():
        assert artifact.codec_of(data) == codec
        assert torch.equal(artifact.loads(data, build=small_mlp)(x), model(x))


def test_quantized_layers_ship_float16_biases_as_evaluated() -> None:
    model = small_mlp()
    plan = CompressionPlan({"0": LayerPlan(bits=4, quant_mode="kmeans"), "2": LayerPlan(bits=6)})
    compress.apply(model, plan)
    model.eval()
    x = torch.randn(5, 20)
    expected = model(x)
    data = artifact.pack(model, plan, {"model": "x", "input_shape": [20]}).data
    header, _ = artifact.read_header(data)
    dtypes = {t["name"]: t.get("dtype") for t in header["tensors"] if t["name"].endswith("bias")}
    assert dtypes == {"0.bias": "float16", "2.bias": "float16", "4.bias": "float32"}  # layer 4 is not quantized
    assert torch.equal(artifact.loads(data, build=small_mlp)(x), expected)


def test_an_lzma_stream_longer_than_its_header_declares_is_refused() -> None:
    model = small_mlp()
    data = artifact.pack(model, CompressionPlan(), {"model": "x", "input_shape": [20]}).data
    header, payload = artifact.read_header(data)
    head = json.dumps({**header, "channels_removed": {}}).encode()
    bomb = artifact.seal(struct.pack("<I", len(head)) + head + payload + bytes(8 << 20), "lzma")
    assert len(bomb) < len(data) + (64 << 10)  # 8 MiB of zeros cost a few KB
    with pytest.raises(artifact.ArtifactError, match="more data than its header declares"):
        artifact.loads(bomb, build=small_mlp)


def test_a_large_body_is_sealed_with_zlib_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_mlp()
    plan = CompressionPlan({"0": LayerPlan(sparsity=0.9, bits=4)})
    compress.apply(model, plan)
    monkeypatch.setattr(packer, "LZMA_MAX_BODY", 100)  # every body is "large"
    data = artifact.pack(model, plan, {"model": "x", "input_shape": [20]}).data
    assert artifact.codec_of(data) == "zlib"
    assert torch.equal(artifact.loads(data, build=small_mlp)(torch.ones(2, 20)), model(torch.ones(2, 20)))


def test_a_study_sized_by_the_older_packer_is_not_continued_with_this_one() -> None:
    import optuna
    from optuna.trial import create_trial

    from autocompress.driver.setup import check_existing
    from autocompress.errors import StorageError

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.add_trial(create_trial(values=[0.9, 5000.0, 1.0]))  # made before the attribute: format 1
    with pytest.raises(StorageError, match="sized its trials with artifact format 1; this version packs format 2"):
        check_existing(study, None, None, "sqlite:///x.db")  # type: ignore[arg-type]
