"""What ranks the weights and channels that pruning removes (``LayerPlan.importance``).

* ``l1``: magnitude (the layer's own weights; the default, and what plans before this knob used);
* ``l2``: channels by the L2 norm of every weight in their dependency group (Torch-Pruning's
  ``MagnitudeImportance(p=2)``: the consumers' input weights count too);
* ``taylor``: first-order Taylor estimate of the loss change, |w * dL/dw| (Molchanov et al.,
  CVPR 2019), from a few labelled training batches; Torch-Pruning's ``TaylorImportance`` for
  channels;
* ``fpgm``: channels nearest the geometric median of their layer's filters are the most
  replaceable (He et al., CVPR 2019; Torch-Pruning's ``FPGMImportance``); channels only.

Scores are higher for what to keep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from autocompress.compress._base import ApplyContext, Site
from autocompress.compress.dependency import dependency_graph, pruning_group
from autocompress.compress.sites import Attention, in_linear, out_linear
from autocompress.errors import SpaceError
from autocompress.registry import Registry


@dataclass(frozen=True)
class Criterion:
    """One importance criterion.

    Args:
        torch_pruning: the Torch-Pruning importance that scores a channel group; None scores a
            channel by the L1 norm of the layer's own weights.
        unstructured: whether it also ranks single weights.
        gradients: whether it needs the loss's gradients on the weights (labelled batches).
        units: one score per row of (units x weights), given their gradients when ``gradients``:
            what ranks an attention's whole heads, whose weights no Torch-Pruning group holds.
    """

    torch_pruning: Callable[[], Any] | None
    unstructured: bool
    gradients: bool
    units: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def _tp(name: str, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        import torch_pruning as tp

        return getattr(tp.importance, name)(**kwargs)

    return make


IMPORTANCE: Registry[Criterion] = Registry("importance criterion")


def _taylor_units(w: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    assert g is not None
    return (w * g).abs().sum(dim=1)


IMPORTANCE.register("l1")(Criterion(None, unstructured=True, gradients=False, units=lambda w, g: w.abs().sum(dim=1)))
IMPORTANCE.register("l2")(Criterion(_tp("MagnitudeImportance", p=2), unstructured=False, gradients=False, units=lambda w, g: w.norm(dim=1)))
IMPORTANCE.register("taylor")(Criterion(_tp("TaylorImportance"), unstructured=True, gradients=True, units=_taylor_units))
# FPGM: a unit near the geometric median of its peers is the most replaceable (least summed distance).
IMPORTANCE.register("fpgm")(
    Criterion(_tp("FPGMImportance", p=2), unstructured=False, gradients=False, units=lambda w, g: torch.cdist(w, w).sum(dim=1))
)


def criterion(name: str, layer: str, structured: bool) -> Criterion:
    """The registered criterion, refused where it cannot rank what the plan removes."""
    found = IMPORTANCE.get(name)
    if not structured and not found.unstructured:
        usable = ", ".join(n for n in IMPORTANCE.names() if IMPORTANCE.get(n).unstructured)
        raise SpaceError(f"layer '{layer}': importance '{name}' ranks whole channels only; for single weights use {usable}")
    return found


def compute_gradients(ctx: ApplyContext, layer: str) -> None:
    """Leave the loss's gradients on the model's weights, from the context's labelled batches."""
    if ctx.calibration is None:
        raise SpaceError(f"layer '{layer}': importance 'taylor' needs labelled batches to take gradients from; use importance l1 here")
    model = ctx.model
    was_training = model.training
    model.eval()  # BatchNorm statistics stay as trained
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        if callable(ctx.calibration):  # a task's own loss over its calibration batches
            ctx.calibration(model).backward()
        else:
            x, y = ctx.calibration
            nn.functional.cross_entropy(model(x), y).backward()
    model.train(was_training)


def weight_gradient(leaf: Site, layer: str) -> torch.Tensor:
    """The gradient of the leaf's stored weight (the original under a parametrization)."""
    from torch.nn.utils import parametrize

    param: Any = cast(Any, leaf).parametrizations.weight.original if parametrize.is_parametrized(leaf, "weight") else leaf.weight
    if param.grad is None:
        raise SpaceError(
            f"layer '{layer}': importance 'taylor' found no gradient on its weights (frozen, or not on the loss's path); use importance l1 for it"
        )
    return param.grad.detach()


def channel_scores(ctx: ApplyContext, target: Site, name: str, layer: str) -> tuple[torch.Tensor, Any]:
    """One score per output channel of ``target`` under criterion ``name``, and the dependency
    graph traced to score them (None when the layer's own weights did): removing the channels
    reuses it."""
    found = criterion(name, layer, structured=True)
    if found.torch_pruning is None:
        return target.weight.detach().abs().flatten(1).sum(dim=1), None
    if found.gradients:
        ensure_gradients(ctx, layer)  # once per apply: Torch-Pruning prunes the gradients with their weights
        weight_gradient(target, layer)
    assert ctx.example is not None  # channel pruning refuses a context without one first
    graph = dependency_graph(ctx.model, ctx.example)  # traced once: removing the channels reuses it
    return group_scores(found, name, pruning_group(graph, target, list(range(target.weight.shape[0]))), target, layer), graph


def group_scores(found: Criterion, name: str, group: Any, target: Site, layer: str) -> torch.Tensor:
    """One score per output channel of ``target`` from the pruning group it is handed (every
    layer that removing the channels drags along), under criterion ``name`` (Torch-Pruning's)."""
    assert found.torch_pruning is not None
    scores = found.torch_pruning()(group)
    if scores is None:  # Torch-Pruning found nothing to score in the group
        raise SpaceError(f"layer '{layer}': importance '{name}' cannot score its channels; use importance l1 for it")
    return scores.detach().to(target.weight.device)


def head_scores(ctx: ApplyContext, attention: Attention, name: str, layer: str) -> torch.Tensor:
    """One score per head of ``attention`` under criterion ``name``, from each head's rows of q,
    k and v and its columns of the output projection."""
    found = criterion(name, layer, structured=True)
    leaves = [
        (out_linear(attention.q_proj), 0),
        (out_linear(attention.k_proj), 0),
        (out_linear(attention.v_proj), 0),
        (in_linear(attention.out_proj), 1),
    ]
    if found.gradients:
        ensure_gradients(ctx, layer)

    def per_head(tensors: list[torch.Tensor]) -> torch.Tensor:
        parts = [(t if axis == 0 else t.t()).reshape(attention.num_heads, -1) for t, (_, axis) in zip(tensors, leaves, strict=True)]
        return torch.cat(parts, dim=1)

    weights = per_head([leaf.weight.detach() for leaf, _ in leaves])
    gradients = per_head([weight_gradient(leaf, layer) for leaf, _ in leaves]) if found.gradients else None
    return found.units(weights, gradients)


def weight_scores(ctx: ApplyContext, leaf: Site, name: str, layer: str) -> torch.Tensor:
    """One score per weight of ``leaf`` under criterion ``name`` (unstructured pruning)."""
    found = criterion(name, layer, structured=False)
    weight = leaf.weight.detach()
    if not found.gradients:
        return weight.abs()
    ensure_gradients(ctx, layer)
    return (weight * weight_gradient(leaf, layer)).abs()


def ensure_gradients(ctx: ApplyContext, layer: str) -> None:
    """The loss's gradients on the weights, taken once per ``compress.apply`` (one forward and
    backward pass over the labelled batch, however many layers ask)."""
    if not ctx.gradients_ready:
        compute_gradients(ctx, layer)
        ctx.gradients_ready = True
