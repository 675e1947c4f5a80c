"""BatchNorm folding: a conv followed by BatchNorm becomes one conv before it is quantized.

At deployment a BatchNorm after a conv is folded into it (``w * gamma / std``, a new bias), so
quantizing the unfolded weight would measure codes that never ship. For every planned layer that
is quantized and whose conv output feeds exactly one BatchNorm2d, the running statistics are
folded into the conv, the BatchNorm becomes ``nn.Identity`` and fine-tuning continues on the
folded weights. The folded BatchNorms are recorded so an artifact can rebuild the same structure.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from autocompress.compress._base import TECHNIQUES, ApplyContext, Technique, set_submodule
from autocompress.compress.dependency import out_layer
from autocompress.plan import FULL_PRECISION_BITS, LayerPlan

log = logging.getLogger(__name__)


def following_batchnorms(model: nn.Module) -> dict[nn.Conv2d, str]:
    """Each Conv2d whose only consumer is a BatchNorm2d -> that BatchNorm's qualified name.

    Read from a ``torch.fx`` trace (torchvision's models are traceable); a model that cannot
    be traced keeps its BatchNorms, which is correct, only not folded.
    """
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001  (fx fails in many ways on dynamic code)
        log.info("BatchNorm folding skipped: the model cannot be traced (%s)", exc)
        return {}
    found: dict[nn.Conv2d, str] = {}
    for node in graph.nodes:
        conv = model.get_submodule(str(node.target)) if node.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            after = model.get_submodule(str(users[0].target))
            if isinstance(after, nn.BatchNorm2d) and after.track_running_stats:
                found[conv] = str(users[0].target)
    return found


def ensure_bias(conv: nn.Conv2d) -> None:
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype))


@torch.no_grad()
def fold(model: nn.Module, conv: nn.Conv2d, bn_name: str) -> None:
    """Fold the BatchNorm ``bn_name`` (which follows ``conv``) into ``conv``; it becomes Identity."""
    bn = model.get_submodule(bn_name)
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None and bn.running_mean is not None
    scale = (bn.running_var + bn.eps).rsqrt()
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    ensure_bias(conv)
    assert conv.bias is not None
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias.mul_(scale).add_(shift)
    set_submodule(model, bn_name, nn.Identity())


def replay(model: nn.Module, conv: nn.Module, bn_name: str) -> None:
    """The structure of a fold without its values: what an artifact's loader needs."""
    assert isinstance(conv, nn.Conv2d)
    ensure_bias(conv)
    set_submodule(model, bn_name, nn.Identity())


@TECHNIQUES.register("fold_bn")
class FoldBatchNorm(Technique):
    order = 12  # after factorization (the BatchNorm follows the second factor), before pruning

    def applies(self, plan: LayerPlan) -> bool:
        return plan.bits < FULL_PRECISION_BITS

    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        conv = out_layer(layer)
        if not isinstance(conv, nn.Conv2d):
            return layer
        if ctx.batchnorms is None:  # one trace for all layers
            ctx.batchnorms = following_batchnorms(ctx.model)
        bn_name = ctx.batchnorms.get(conv)
        if bn_name is not None:
            fold(ctx.model, conv, bn_name)
            ctx.bn_folded[bn_name] = name
        return layer
