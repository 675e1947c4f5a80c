"""Each technique alone, then the contract every registered technique and model must meet."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from autocompress import compress
from autocompress.artifact import loads, pack
from autocompress.compress import TECHNIQUES, FakeQuant, factorize, full_rank
from autocompress.compress.dependency import output_layers
from autocompress.compress.importance import IMPORTANCE
from autocompress.compress.lowrank import tucker_applies
from autocompress.compress.prune import magnitude_mask
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.tasks import MODELS

TASK = {name: {"model": name, "num_classes": 10, "input_shape": list(MODELS.get(name).input_shape)} for name in MODELS.names()}


def fresh(model_name: str) -> nn.Module:
    """A randomly initialised registered model at the input shape it declares (no data needed)."""
    entry = MODELS.get(model_name)
    return entry.factory(num_classes=10, input_shape=entry.input_shape)


def _relative_error(layer: nn.Module, factorized: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = layer(x)
        return float((factorized(x) - ref).norm() / ref.norm())


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Linear(40, 30), torch.randn(16, 40)),
        (nn.Conv2d(6, 12, 3, padding=1), torch.randn(4, 6, 8, 8)),
        (nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=1), torch.randn(2, 4, 9, 9)),
    ],
)
def test_svd_error_falls_as_rank_rises_and_vanishes_at_full_rank(layer: nn.Module, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    limit = full_rank(layer)
    assert limit is not None
    errors = [_relative_error(layer, factorize(layer, r), x) for r in range(1, limit + 1)]
    assert all(later <= earlier + 1e-6 for earlier, later in itertools.pairwise(errors))
    assert errors[0] > 0.05
    assert errors[-1] < 1e-5
    assert factorize(layer, 1)(x).shape == layer(x).shape


def test_grouped_conv_has_no_rank() -> None:
    assert full_rank(nn.Conv2d(8, 8, 3, groups=8)) is None


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 0.99])
def test_pruning_hits_the_requested_sparsity(sparsity: float) -> None:
    weight = torch.randn(64, 50)
    mask = magnitude_mask(weight, sparsity)
    assert float((mask == 0).float().mean()) == pytest.approx(sparsity, abs=1 / weight.numel())
    kept = weight.abs()[mask.bool()]
    dropped = weight.abs()[~mask.bool()]
    if dropped.numel() and kept.numel():
        assert dropped.max() <= kept.min()  # magnitude: only the smallest go


def test_pruned_weights_stay_zero_through_finetuning() -> None:
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    compress.apply(model, CompressionPlan({"0": LayerPlan(sparsity=0.6)}))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(8, 10)).sum().backward()
        opt.step()
    assert float((model[0].weight == 0).float().mean()) == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_quantization_leaves_at_most_2_pow_k_levels_per_channel(bits: int) -> None:
    weight = torch.randn(16, 3, 3, 3)
    quantized = FakeQuant(bits)(weight)
    for channel in quantized:
        assert channel.unique().numel() <= 2**bits
    assert (quantized - weight).abs().max() <= FakeQuant(bits).scale(weight).max() / 2 + 1e-6


def test_quantization_passes_gradients_straight_through() -> None:
    weight = torch.randn(4, 5, requires_grad=True)
    FakeQuant(3)(weight).sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))


def test_bake_keeps_outputs_and_leaves_plain_modules(cnn_task) -> None:
    model = cnn_task.build_model()
    plan = CompressionPlan({"conv2": LayerPlan(0.5, False, 4, 8), "fc1": LayerPlan(0.8, False, 3, 20)})
    compress.apply(model, plan)
    x = cnn_task.data.x_val[:20]
    before = model(x).detach()
    baked = compress.bake(model)
    assert torch.equal(baked(x), before)
    assert not any("parametrizations" in name for name, _ in baked.named_parameters())


def test_unknown_layer_in_plan_is_a_clear_error(cnn_task) -> None:
    from autocompress.errors import SpaceError

    with pytest.raises(SpaceError, match="'fc9'"):
        compress.apply(cnn_task.build_model(), CompressionPlan({"fc9": LayerPlan(bits=4)}))


# ---- contracts over the registries -------------------------------------------------------

PLAN_FOR_TECHNIQUE = {
    "lowrank": lambda full: LayerPlan(rank=max(1, full // 4)),
    "channel": lambda full: LayerPlan(sparsity=0.5, structured=True),
    "prune": lambda full: LayerPlan(sparsity=0.7),
    "quantize": lambda full: LayerPlan(bits=4),
    "kmeans": lambda full: LayerPlan(bits=3, quant_mode="kmeans"),
    "tucker": lambda full: LayerPlan(rank=2, rank_in=1, lowrank_mode="tucker"),  # convs only (below)
    "fold_bn": lambda full: LayerPlan(bits=8),
}


def test_every_technique_has_a_contract_plan() -> None:
    assert set(TECHNIQUES) == set(PLAN_FOR_TECHNIQUE)


@pytest.mark.parametrize("model_name", MODELS.names())
@pytest.mark.parametrize("technique", TECHNIQUES.names())
def test_technique_contract(model_name: str, technique: str) -> None:
    """Every technique on every model: it applies, the forward pass works, the size shrinks."""
    torch.manual_seed(0)
    model = fresh(model_name).eval()
    x = torch.rand(4, *MODELS.get(model_name).input_shape)
    before = len(pack(copy.deepcopy(model), CompressionPlan(), TASK[model_name]).data)
    layers = compress.compressible_layers(model)
    outputs = output_layers(model, x)
    plan = CompressionPlan(
        {
            n: PLAN_FOR_TECHNIQUE[technique](full_rank(m) or 1)
            for n, m in layers.items()
            if (technique != "channel" or m not in outputs)  # classes stay
            and (technique != "lowrank" or full_rank(m) is not None)  # depthwise convs have no rank
            and (technique != "tucker" or tucker_applies(m))
        }
    )
    if technique == "tucker" and not plan.layers:
        pytest.skip(f"{model_name} has no convolution for Tucker-2")
    assert plan.layers and all(TECHNIQUES.get(technique)().applies(lp) for lp in plan.layers.values())
    compress.apply(model, plan, example=x)
    _holds_contract(model, plan, model_name, x, before)


def _holds_contract(model: nn.Module, plan: CompressionPlan, model_name: str, x: torch.Tensor, before: int) -> None:
    """The compressed model runs, packs smaller than ``before`` bytes, and its artifact reloads
    to the same outputs (the artifact is the evaluated model)."""
    out = model(x)
    assert out.shape == (len(x), 10) and torch.isfinite(out).all()
    packed = pack(model, plan, TASK[model_name], compress.structure(model))
    assert len(packed.data) < before
    assert torch.equal(loads(packed.data)(x), model(x))


@pytest.mark.parametrize("model_name", MODELS.names())
def test_model_contract(model_name: str) -> None:
    """Every registered model has compressible layers and a default dataset that exists."""
    from autocompress.tasks import DATASETS

    entry = MODELS.get(model_name)
    assert entry.default_dataset in DATASETS
    assert compress.compressible_layers(fresh(model_name))


@pytest.mark.parametrize("model_name", MODELS.names())
@pytest.mark.parametrize("criterion", IMPORTANCE.names())
def test_importance_contract(model_name: str, criterion: str) -> None:
    """Every pruning criterion on every model: channels (and single weights where it ranks them)
    are removed, the forward pass works, the size shrinks, the artifact reloads to the same outputs."""
    torch.manual_seed(0)
    model = fresh(model_name).eval()
    x = torch.rand(8, *MODELS.get(model_name).input_shape)
    before = len(pack(copy.deepcopy(model), CompressionPlan(), TASK[model_name]).data)
    layers = compress.compressible_layers(model)
    outputs = output_layers(model, x)
    unstructured = IMPORTANCE.get(criterion).unstructured
    plan = CompressionPlan(
        {
            n: LayerPlan(sparsity=0.5, structured=m not in outputs and (i % 2 == 0 or not unstructured), importance=criterion)
            for i, (n, m) in enumerate(layers.items())
            if m not in outputs or unstructured
        }
    )
    compress.apply(model, plan, example=x[:2], calibration=(x, torch.arange(8) % 10))
    assert compress.structure(model)["channels_removed"]
    _holds_contract(model, plan, model_name, x, before)
