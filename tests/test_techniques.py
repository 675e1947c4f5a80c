"""Weight sharing, Tucker-2, pruning criteria and the format-2 artifact: what each promises."""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autocompress import artifact, compress
from autocompress.artifact import packer
from autocompress.artifact.packer import Payload
from autocompress.compress import SharedWeights, Tucker2
from autocompress.compress._base import ApplyContext
from autocompress.compress.importance import IMPORTANCE, channel_scores, weight_scores
from autocompress.compress.lowrank import tucker2
from autocompress.errors import SpaceError
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.report import plan_summary
from autocompress.space import parse_space


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(24 * 8 * 8, 5)
    )


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_kmeans_gives_at_most_2_pow_bits_values_zero_kept(bits: int) -> None:
    model = _mlp()
    plan = CompressionPlan({"0": LayerPlan(sparsity=0.6, bits=bits, quant_mode="kmeans")})
    compress.apply(model, plan)
    weight = model[0].weight.detach()
    values = torch.unique(weight)
    assert len(values) <= 2**bits  # 2^bits - 1 shared values and an exact zero
    assert int((weight == 0).sum()) >= round(0.6 * weight.numel())  # pruned weights stay pruned
    assert torch.equal(values, values.half().float())  # float16, as the artifact stores them


def test_kmeans_centroids_learn_by_their_members_summed_gradients() -> None:
    weight = torch.tensor([[0.0, 1.0, 1.1, -2.0], [2.1, -1.9, 0.0, 1.05]])
    share = SharedWeights(weight, bits=2)  # 3 centroids: about -1.95, 1.05, 2.1
    out = share(weight)
    upstream = torch.arange(8.0).reshape(2, 4)
    (out * upstream).sum().backward()
    assert share.centroids.grad is not None
    for k in range(3):
        members = share.assign == k + 1
        assert share.centroids.grad[k].item() == pytest.approx(upstream[members].sum().item())


def test_tucker2_reconstructs_a_conv_better_as_ranks_rise() -> None:
    conv = _cnn()[2]
    x = torch.randn(2, 16, 8, 8)
    ref = conv(x)
    errors = [(tucker2(conv, r, r_in)(x) - ref).norm().item() for r, r_in in ((4, 4), (12, 8), (24, 16))]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3 * ref.norm().item()  # full ranks: the same conv
    layer = tucker2(conv, 12, 8)
    assert isinstance(layer, Tucker2) and [m.kernel_size for m in layer.children()] == [(1, 1), (3, 3), (1, 1)]


def test_tucker2_refuses_ranks_out_of_range_and_linears() -> None:
    model = _cnn()
    with pytest.raises(SpaceError, match=re.escape("layer '2': Tucker input rank 17 is outside 1..16")):
        tucker2(model[2], 4, 17, "2")
    with pytest.raises(SpaceError, match="lowrank_mode svd"):
        tucker2(model[5], 4, 4, "5")


def test_every_importance_criterion_ranks_channels_and_gradients_come_from_labels() -> None:
    model = _cnn().eval()
    x = torch.randn(8, 3, 8, 8)
    ctx = ApplyContext(model=model, example=x[:2], calibration=(x, torch.randint(0, 5, (8,))))
    for name in IMPORTANCE.names():
        scores, graph = channel_scores(ctx, model[0], name, "0")
        assert scores.shape == (16,) and torch.isfinite(scores).all(), name
        assert (graph is None) == (name == "l1")  # a traced graph comes back for removing the channels
        if IMPORTANCE.get(name).unstructured:
            assert weight_scores(ctx, model[2], name, "2").shape == model[2].weight.shape
    ctx = ApplyContext(model=model, example=x[:2])  # no labelled batch
    with pytest.raises(SpaceError, match="'taylor' needs labelled batches"):
        channel_scores(ctx, model[0], "taylor", "0")


def test_criteria_choose_different_channels_and_fpgm_refuses_single_weights() -> None:
    x = torch.randn(8, 3, 8, 8)
    removed = {}
    for name in ("l1", "fpgm", "taylor"):
        model = _cnn()
        plan = CompressionPlan({"0": LayerPlan(sparsity=0.5, structured=True, importance=name)})
        compress.apply(model, plan, example=x[:2], calibration=(x, torch.arange(8) % 5))
        removed[name] = compress.structure(model)["channels_removed"]["0"]
        assert len(removed[name]) == 8
    assert len({tuple(v) for v in removed.values()}) > 1
    with pytest.raises(SpaceError, match="'fpgm' ranks whole channels only"):
        compress.apply(_cnn(), CompressionPlan({"0": LayerPlan(sparsity=0.5, importance="fpgm")}), example=x[:2])


def test_a_frozen_layer_cannot_take_taylor_importance() -> None:
    model = _mlp()
    model[2].weight.requires_grad_(False)
    spec = parse_space({"knobs": {"sparsity": 0.5, "importance": ["l1", "taylor"]}}, "space.yaml")
    with pytest.raises(SpaceError, match="layer '2' has importance taylor, but its weights are frozen"):
        spec.resolve(model)


def test_unknown_modes_in_a_plan_fail_before_compressing() -> None:
    with pytest.raises(SpaceError, match=r"layer '0': quant_mode 'kmean' is unknown \(did you mean 'kmeans'\?\)"):
        compress.apply(_mlp(), CompressionPlan({"0": LayerPlan(bits=4, quant_mode="kmean")}))


def test_space_maps_word_knobs_onto_each_layer() -> None:
    spec = parse_space(
        {"knobs": {"sparsity": 0.5, "bits": 4, "rank": 0.5, "quant_mode": "kmeans", "lowrank_mode": "tucker", "importance": "fpgm"}}, "s.yaml"
    )
    space = spec.resolve(_cnn(), torch.randn(2, 3, 8, 8))
    plan = space.plan_from_params({})
    conv, linear = plan.layers["2"], plan.layers["5"]
    assert (conv.lowrank_mode, conv.rank, conv.rank_in, conv.quant_mode) == ("tucker", 12, 8, "kmeans")
    assert (linear.lowrank_mode == "svd" and "lowrank_mode" not in space.groups["5"]) or space.groups["5"]["lowrank_mode"].off
    assert conv.importance == "l1"  # unstructured: fpgm ranks only channels
    assert "t12x8" in plan_summary(plan.to_dict()) and "/4k" in plan_summary(plan.to_dict())
    # Spaces that do not name the new knobs store exactly what they stored before them.
    old = parse_space({"knobs": {"bits": [4, 8]}}, "s.yaml").resolve(_mlp())
    assert all(set(v) == {"sparsity", "sparsity_mode", "bits", "rank"} for v in old.to_dict().values())
    assert "quant_mode" not in CompressionPlan({"a": LayerPlan(bits=4)}).to_dict()["a"]


@pytest.mark.parametrize(
    "knobs, needle",
    [
        ({"quant_mode": "kmeens"}, "'knobs.quant_mode' has 'kmeens' (did you mean 'kmeans'?)"),
        ({"lowrank_mode": ["svd", "cp"]}, "'knobs.lowrank_mode' has 'cp'"),
        ({"importance": "hessian"}, "'knobs.importance' has 'hessian'"),
        ({"quant_mode": "kmeans", "bits": 32}, "quant_mode kmeans with bits 32 only"),
        ({"quant_mode": {"low": 0, "high": 1}}, "use one of uniform, kmeans, ternary or a list of them"),
    ],
)
def test_bad_word_knobs_name_the_key_and_the_fix(knobs: dict, needle: str) -> None:
    with pytest.raises(SpaceError, match=re.escape(needle)):
        parse_space({"knobs": knobs}, "space.yaml")


def test_format_1_artifacts_still_load(tmp_path: Path) -> None:
    """A format-1 file (bit-packed streams, zlib, no packing key) made from a format-2 one reloads the same."""
    model = _mlp()
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
    assert torch.equal(artifact.load(old_file, build=_mlp)(x), artifact.loads(data, build=_mlp)(x))


def test_the_smaller_codec_is_kept_and_both_read() -> None:
    model = _mlp()
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
        assert torch.equal(artifact.loads(data, build=_mlp)(x), model(x))


def test_int8_targets_run_only_uniform_codes_as_integers() -> None:
    """A codebook's values are not on an integer grid: its layer stays float on an int8 target."""
    from autocompress.deploy.runtimes import runtime

    model = _mlp()
    plan = CompressionPlan({"0": LayerPlan(bits=4), "2": LayerPlan(bits=4, quant_mode="kmeans"), "4": LayerPlan(bits=8)})
    compress.apply(model, plan)
    deployed = runtime("torch").deploy(compress.bake(model), plan, torch.randn(4, 20), "int8", "cpu")
    assert deployed.backend == "torch int8-dynamic[0,4]+fp32 cpu"


def test_quantized_layers_ship_float16_biases_as_evaluated() -> None:
    model = _mlp()
    plan = CompressionPlan({"0": LayerPlan(bits=4, quant_mode="kmeans"), "2": LayerPlan(bits=6)})
    compress.apply(model, plan)
    model.eval()
    x = torch.randn(5, 20)
    expected = model(x)
    data = artifact.pack(model, plan, {"model": "x", "input_shape": [20]}).data
    header, _ = artifact.read_header(data)
    dtypes = {t["name"]: t.get("dtype") for t in header["tensors"] if t["name"].endswith("bias")}
    assert dtypes == {"0.bias": "float16", "2.bias": "float16", "4.bias": "float32"}  # layer 4 is not quantized
    assert torch.equal(artifact.loads(data, build=_mlp)(x), expected)


def test_ternary_weights_take_two_learned_values_and_zero() -> None:
    model = _mlp()
    plan = CompressionPlan({"0": LayerPlan(sparsity=0.3, bits=2, quant_mode="ternary")})
    compress.apply(model, plan)
    share = model[0].parametrizations.weight[1]
    assert isinstance(share, SharedWeights) and share.centroids.shape == (2,)
    assert share.centroids[0] < 0 < share.centroids[1]
    values = torch.unique(model[0].weight.detach())
    assert len(values) == 3 and 0.0 in values
    model.eval()
    x = torch.randn(4, 20)
    expected = model(x)
    data = artifact.pack(model, plan, {"model": "x", "input_shape": [20]}).data
    assert torch.equal(artifact.loads(data, build=_mlp)(x), expected)
    with pytest.raises(SpaceError, match="quant_mode ternary stores 2-bit codes, not 4-bit"):
        compress.apply(_mlp(), CompressionPlan({"0": LayerPlan(bits=4, quant_mode="ternary")}))
    space = parse_space({"knobs": {"bits": [4, 8], "quant_mode": "ternary"}}, "s.yaml").resolve(_mlp())
    assert {lp.bits for lp in space.plan_from_params({"0.bits": 8}).layers.values()} == {2}
    assert "/tern" in plan_summary(space.plan_from_params({}).to_dict())


def test_act_bits_decide_which_layers_run_integer_kernels() -> None:
    from autocompress.deploy.runtimes import runtime

    spec = parse_space({"knobs": {"bits": [4, 32], "quant_mode": ["uniform", "kmeans"], "act_bits": [8, 32]}}, "s.yaml")
    space = spec.resolve(_mlp())
    plan = space.plan_from_params(
        {"0.bits": 4, "0.act_bits": 32, "2.bits": 4, "2.act_bits": 8, "4.bits": 4, "4.quant_mode": "kmeans", "4.act_bits": 8}
    )
    assert [plan.layers[n].act_bits for n in ("0", "2", "4")] == [32, 8, None]  # a codebook runs float anyway
    model = _mlp()
    compress.apply(model, plan)
    deployed = runtime("torch").deploy(compress.bake(model), plan, torch.randn(4, 20), "int8", "cpu")
    assert deployed.backend == "torch int8-dynamic[2]+fp32 cpu"
    space.check_act_bits("int8", "torch", "s.yaml")
    with pytest.raises(SpaceError, match=re.escape("layer '0' has act_bits 8 (s.yaml), but the deploy target runs fp32")):
        space.check_act_bits("fp32", "torch", "s.yaml")
    assert "/a32" in plan_summary(plan.to_dict())


def test_a_study_sized_by_the_older_packer_is_not_continued_with_this_one() -> None:
    import optuna
    from optuna.trial import create_trial

    from autocompress.driver.setup import check_existing
    from autocompress.errors import StorageError

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.add_trial(create_trial(values=[0.9, 5000.0, 1.0]))  # made before the attribute: format 1
    with pytest.raises(StorageError, match="sized its trials with artifact format 1; this version packs format 2"):
        check_existing(study, None, None, "sqlite:///x.db")  # type: ignore[arg-type]


def test_an_lzma_stream_longer_than_its_header_declares_is_refused() -> None:
    model = _mlp()
    data = artifact.pack(model, CompressionPlan(), {"model": "x", "input_shape": [20]}).data
    header, payload = artifact.read_header(data)
    head = json.dumps({**header, "channels_removed": {}}).encode()
    bomb = artifact.seal(struct.pack("<I", len(head)) + head + payload + bytes(8 << 20), "lzma")
    assert len(bomb) < len(data) + (64 << 10)  # 8 MiB of zeros cost a few KB
    with pytest.raises(artifact.ArtifactError, match="more data than its header declares"):
        artifact.loads(bomb, build=_mlp)


def test_a_large_body_is_sealed_with_zlib_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mlp()
    plan = CompressionPlan({"0": LayerPlan(sparsity=0.9, bits=4)})
    compress.apply(model, plan)
    monkeypatch.setattr(packer, "LZMA_MAX_BODY", 100)  # every body is "large"
    data = artifact.pack(model, plan, {"model": "x", "input_shape": [20]}).data
    assert artifact.codec_of(data) == "zlib"
    assert torch.equal(artifact.loads(data, build=_mlp)(torch.ones(2, 20)), model(torch.ones(2, 20)))
