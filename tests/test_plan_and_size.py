from __future__ import annotations

import json
import math

import torch
from torch import nn

from autocompress import compress
from autocompress.plan import CompressionPlan, LayerPlan, Result
from autocompress.size import HEADER_BYTES, encoded_bits, packed_size, weight_codes


def test_plan_json_round_trip() -> None:
    plan = CompressionPlan({"features.0": LayerPlan(0.35, False, 4, 12), "fc": LayerPlan(bits=32)})
    text = plan.to_json()
    assert CompressionPlan.from_json(text) == plan
    assert json.loads(text)["features.0"] == {"sparsity": 0.35, "structured": False, "bits": 4, "rank": 12}


def test_result_round_trip_and_validity() -> None:
    r = Result(accuracy=0.9, size_bytes=100, latency_ms=1.5, per_layer=[{"layer": "fc"}])
    assert Result.from_dict(json.loads(json.dumps(r.to_dict()))) == r
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


def test_baseline_size_counts_every_float32_tensor() -> None:
    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.Linear(20, 3))
    tensors = list(model.parameters()) + list(model.buffers())
    expected = sum(HEADER_BYTES + t.numel() * t.element_size() for t in tensors)
    assert packed_size(model).total_bytes == expected


def test_quantized_sparse_layer_is_counted_from_its_codes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 50))
    compress.apply(model, CompressionPlan({"0": LayerPlan(sparsity=0.5, bits=4)}))
    codes = weight_codes(model[0])
    assert codes.bits == 4 and codes.values.abs().max() <= 7
    nnz = int(torch.count_nonzero(codes.values))
    assert nnz <= 2500
    report = packed_size(model)
    (row,) = report.per_layer
    assert row["bits"] == 4 and row["encoding"] == "bitmask"
    weight_bytes = HEADER_BYTES + math.ceil((5000 + nnz * 4) / 8)  # bitmask + 4-bit codes
    scale_bytes = HEADER_BYTES + 50 * 2  # float16 per output channel
    bias_bytes = HEADER_BYTES + 50 * 4  # float32
    assert row["bytes"] == weight_bytes + scale_bytes + bias_bytes
    assert report.total_bytes == row["bytes"]
