"""Pruning criteria: each ranks channels or weights, from gradients where it needs them."""

from __future__ import annotations

import pytest
import torch

from autocompress import compress
from autocompress.compress._base import ApplyContext
from autocompress.compress.importance import IMPORTANCE, channel_scores, weight_scores
from autocompress.errors import SpaceError
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.space import parse_space
from tests.helpers import small_cnn, small_mlp


def test_every_importance_criterion_ranks_channels_and_gradients_come_from_labels() -> None:
    model = small_cnn().eval()
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
        model = small_cnn()
        plan = CompressionPlan({"0": LayerPlan(sparsity=0.5, structured=True, importance=name)})
        compress.apply(model, plan, example=x[:2], calibration=(x, torch.arange(8) % 5))
        removed[name] = compress.structure(model)["channels_removed"]["0"]
        assert len(removed[name]) == 8
    assert len({tuple(v) for v in removed.values()}) > 1
    with pytest.raises(SpaceError, match="'fpgm' ranks whole channels only"):
        compress.apply(small_cnn(), CompressionPlan({"0": LayerPlan(sparsity=0.5, importance="fpgm")}), example=x[:2])


def test_a_frozen_layer_cannot_take_taylor_importance() -> None:
    model = small_mlp()
    model[2].weight.requires_grad_(False)
    spec = parse_space({"knobs": {"sparsity": 0.5, "importance": ["l1", "taylor"]}}, "space.yaml")
    with pytest.raises(SpaceError, match="layer '2' has importance taylor, but its weights are frozen"):
        spec.resolve(model)
