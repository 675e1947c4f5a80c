"""Weight sharing (k-means), ternary weights, Tucker-2 and a plan's modes: what each technique promises."""

from __future__ import annotations

import re

import pytest
import torch

from autocompress import artifact, compress
from autocompress.compress import SharedWeights, Tucker2
from autocompress.compress.lowrank import tucker2
from autocompress.errors import SpaceError
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.report import plan_summary
from autocompress.space import parse_space
from tests.helpers import small_cnn, small_mlp


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_kmeans_gives_at_most_2_pow_bits_values_zero_kept(bits: int) -> None:
    model = small_mlp()
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
    conv = small_cnn()[2]
    x = torch.randn(2, 16, 8, 8)
    ref = conv(x)
    errors = [(tucker2(conv, r, r_in)(x) - ref).norm().item() for r, r_in in ((4, 4), (12, 8), (24, 16))]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3 * ref.norm().item()  # full ranks: the same conv
    layer = tucker2(conv, 12, 8)
    assert isinstance(layer, Tucker2) and [m.kernel_size for m in layer.children()] == [(1, 1), (3, 3), (1, 1)]


def test_tucker2_refuses_ranks_out_of_range_and_linears() -> None:
    model = small_cnn()
    with pytest.raises(SpaceError, match=re.escape("layer '2': Tucker input rank 17 is outside 1..16")):
        tucker2(model[2], 4, 17, "2")
    with pytest.raises(SpaceError, match="lowrank_mode svd"):
        tucker2(model[5], 4, 4, "5")


def test_ternary_weights_take_two_learned_values_and_zero() -> None:
    model = small_mlp()
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
    assert torch.equal(artifact.loads(data, build=small_mlp)(x), expected)
    with pytest.raises(SpaceError, match="quant_mode ternary stores 2-bit codes, not 4-bit"):
        compress.apply(small_mlp(), CompressionPlan({"0": LayerPlan(bits=4, quant_mode="ternary")}))
    space = parse_space({"knobs": {"bits": [4, 8], "quant_mode": "ternary"}}, "s.yaml").resolve(small_mlp())
    assert {lp.bits for lp in space.plan_from_params({"0.bits": 8}).layers.values()} == {2}
    assert "/tern" in plan_summary(space.plan_from_params({}).to_dict())


def test_unknown_modes_in_a_plan_fail_before_compressing() -> None:
    with pytest.raises(SpaceError, match=r"layer '0': quant_mode 'kmean' is unknown \(did you mean 'kmeans'\?\)"):
        compress.apply(small_mlp(), CompressionPlan({"0": LayerPlan(bits=4, quant_mode="kmean")}))
