"""Word knobs of a space (quant_mode, lowrank_mode, importance, act_bits) mapped onto layers and checked."""

from __future__ import annotations

import re

import pytest
import torch

from autocompress import compress
from autocompress.errors import SpaceError
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.report import plan_summary
from autocompress.space import parse_space
from tests.helpers import small_cnn, small_mlp


def test_space_maps_word_knobs_onto_each_layer() -> None:
    spec = parse_space(
        {"knobs": {"sparsity": 0.5, "bits": 4, "rank": 0.5, "quant_mode": "kmeans", "lowrank_mode": "tucker", "importance": "fpgm"}}, "s.yaml"
    )
    space = spec.resolve(small_cnn(), torch.randn(2, 3, 8, 8))
    plan = space.plan_from_params({})
    conv, linear = plan.layers["2"], plan.layers["5"]
    assert (conv.lowrank_mode, conv.rank, conv.rank_in, conv.quant_mode) == ("tucker", 12, 8, "kmeans")
    assert (linear.lowrank_mode == "svd" and "lowrank_mode" not in space.groups["5"]) or space.groups["5"]["lowrank_mode"].off
    assert conv.importance == "l1"  # unstructured: fpgm ranks only channels
    assert "t12x8" in plan_summary(plan.to_dict()) and "/4k" in plan_summary(plan.to_dict())
    # Spaces that do not name the new knobs store exactly what they stored before them.
    old = parse_space({"knobs": {"bits": [4, 8]}}, "s.yaml").resolve(small_mlp())
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


def test_act_bits_decide_which_layers_run_integer_kernels() -> None:
    from autocompress.deploy.runtimes import runtime

    spec = parse_space({"knobs": {"bits": [4, 32], "quant_mode": ["uniform", "kmeans"], "act_bits": [8, 32]}}, "s.yaml")
    space = spec.resolve(small_mlp())
    plan = space.plan_from_params(
        {"0.bits": 4, "0.act_bits": 32, "2.bits": 4, "2.act_bits": 8, "4.bits": 4, "4.quant_mode": "kmeans", "4.act_bits": 8}
    )
    assert [plan.layers[n].act_bits for n in ("0", "2", "4")] == [32, 8, None]  # a codebook runs float anyway
    model = small_mlp()
    compress.apply(model, plan)
    deployed = runtime("torch").deploy(compress.bake(model), plan, torch.randn(4, 20), "int8", "cpu")
    assert deployed.backend == "torch int8-dynamic[2]+fp32 cpu"
    space.check_act_bits("int8", "torch", "s.yaml")
    with pytest.raises(SpaceError, match=re.escape("layer '0' has act_bits 8 (s.yaml), but the deploy target runs fp32")):
        space.check_act_bits("fp32", "torch", "s.yaml")
    assert "/a32" in plan_summary(plan.to_dict())


def test_int8_targets_run_only_uniform_codes_as_integers() -> None:
    """A codebook's values are not on an integer grid: its layer stays float on an int8 target."""
    from autocompress.deploy.runtimes import runtime

    model = small_mlp()
    plan = CompressionPlan({"0": LayerPlan(bits=4), "2": LayerPlan(bits=4, quant_mode="kmeans"), "4": LayerPlan(bits=8)})
    compress.apply(model, plan)
    deployed = runtime("torch").deploy(compress.bake(model), plan, torch.randn(4, 20), "int8", "cpu")
    assert deployed.backend == "torch int8-dynamic[0,4]+fp32 cpu"
