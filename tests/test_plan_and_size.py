from __future__ import annotations

import json
import math

import torch
from torch import nn

from autocompress import compress
from autocompress.artifact import decode_tensors, pack, read_header
from autocompress.plan import CompressionPlan, LayerPlan, Result
from autocompress.size import encoded_bits, weight_codes


def test_plan_json_round_trip() -> None:
    plan = CompressionPlan({"features.0": LayerPlan(0.35, False, 4, 12), "fc": LayerPlan(bits=32)})
    text = plan.to_json()
    assert CompressionPlan.from_json(text) == plan
    assert json.loads(text)["features.0"] == {"sparsity": 0.35, "structured": False, "bits": 4, "rank": 12}


def test_result_round_trip_and_validity() -> None:
    r = Result(accuracy=0.9, size_bytes=100, latency_ms=1.5, per_layer=[{"layer": "fc"}])
    assert Result.from_dict(json.loads(json.dumps({**r.to_dict(), "artifact": "", "onnx": ""}))) == Result(
        **{**r.to_dict(), "artifact": "", "onnx": ""}
    )
    assert r.ok and r.values == [0.9, 100.0, 1.5]
    assert not Result.failure("boom").ok
    assert not Result(accuracy=math.nan, size_bytes=10, latency_ms=1.0).ok


def test_encodings_pick_the_cheapest() -> None:
    dense = torch.ones(1000)
    assert encoded_bits(dense, 4) == (4000, "dense")
    alternating = torch.zeros(1000)
    alternating[::2] = 1  # one zero before each value: a 1-bit skip field suffices
    assert encoded_bits(alternating, 8) == (500 * (8 + 1), "relative-index-1")
    random_half = (torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    nnz = int(random_half.sum())
    assert encoded_bits(random_half, 8) == (1000 + nnz * 8, "bitmask")
    sparse = torch.zeros(10000)
    sparse[::100] = 1  # 99 zeros between values
    bits, name = encoded_bits(sparse, 4)
    assert name.startswith("relative-index") and bits < 10000 + 100 * 4
    assert encoded_bits(torch.zeros(50), 4) == (0, "empty")


def test_baseline_artifact_stores_every_tensor_exactly() -> None:
    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.Linear(20, 3)).eval()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    header, payload = read_header(pack(model, CompressionPlan(), {"model": "x"}).data)
    decoded = dict(decode_tensors(header, payload))
    assert decoded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(decoded[key].to(tensor.dtype), tensor), key
    raw = sum(t.numel() * t.element_size() for t in expected.values())
    assert len(payload) == raw  # float32 weights dense, everything else raw


def test_quantized_sparse_layer_is_stored_as_codes_bitmask_and_fp16_scales() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 50))
    compress.apply(model, CompressionPlan({"0": LayerPlan(sparsity=0.5, bits=4)})).eval()
    codes = weight_codes(model[0])
    assert codes.bits == 4 and codes.values.abs().max() <= 7
    nnz = int(torch.count_nonzero(codes.values))
    assert nnz <= 2500
    header, _ = read_header(pack(model, CompressionPlan({"0": LayerPlan(sparsity=0.5, bits=4)}), {"model": "x"}).data)
    weight = next(t for t in header["tensors"] if t["name"] == "0.weight")
    assert weight["kind"] == "codes" and weight["enc"] == "bitmask" and weight["n"] == nnz
    assert weight["index"][1] == math.ceil(5000 / 8)  # one bit per position
    assert weight["values"][1] == nnz  # a byte-aligned symbol per nonzero: the codec entropy-codes them
    assert weight["scale"][1] == 50 * 2  # a float16 scale per output channel
