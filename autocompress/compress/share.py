"""Weight sharing (Deep Compression's trained quantization): k-means codebooks per layer, and
trained ternary weights.

The nonzero weights of each weight tensor are clustered into ``2^bits - 1`` shared values by
one-dimensional k-means (scikit-learn), the centroids initialised linearly between the smallest
and largest weight, which Han, Mao and Dally found best ("Deep Compression", ICLR 2016,
section 3.2). Code 0 is an exact zero, so pruned weights stay pruned. The assignment is fixed;
fine-tuning trains the centroids, each by the summed gradients of its members (the backward of
an index lookup). Centroids are rounded to float16, the precision the artifact stores them in,
so the evaluated model is the shipped one.

Ternary (``quant_mode: ternary``) is the two-value case: weights under 0.7 x their mean
magnitude become zero (the threshold of Li et al., "Ternary Weight Networks", 2016), the rest
share one negative and one positive value, each started at its members' mean and then learned
as in Zhu et al., "Trained Ternary Quantization" (ICLR 2017): 2-bit codes, about 1.58 bits of
information once entropy-coded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.compress._base import TECHNIQUES, ApplyContext, Technique, leaf_layers
from autocompress.compress.quantize import round_biases
from autocompress.plan import FULL_PRECISION_BITS, LayerPlan

TERNARY_THRESHOLD = 0.7  # x mean |w|: Ternary Weight Networks' approximately optimal threshold


def ternary_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [negative, positive], code per value: 0 zero, 1 negative, 2 positive)."""
    threshold = TERNARY_THRESHOLD * np.abs(values).mean() if values.size else 0.0
    codes = np.where(values > threshold, 2, np.where(values < -threshold, 1, 0))
    neg, pos = values[codes == 1], values[codes == 2]
    return np.array([neg.mean() if neg.size else -threshold, pos.mean() if pos.size else threshold]), codes


def kmeans_1d(values: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (ascending) and each value's centroid index; linear initialisation."""
    from sklearn.cluster import KMeans

    distinct = np.unique(values)
    if distinct.size <= k:  # as many clusters as values: every value is its own centroid
        return distinct, np.searchsorted(distinct, values)
    init = np.linspace(values.min(), values.max(), k).reshape(-1, 1)
    km = KMeans(n_clusters=k, init=init, n_init=1, max_iter=100, random_state=seed).fit(values.reshape(-1, 1))
    order = np.argsort(km.cluster_centers_[:, 0])
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return km.cluster_centers_[order, 0], rank[km.labels_]


class SharedWeights(nn.Module):
    """Parametrization ``w -> table[assign]`` with ``table = [0, centroids...]``.

    The input weight is read once, to cluster it; afterwards the weight is the codebook lookup,
    and only the centroids learn.
    """

    assign: torch.Tensor

    def __init__(self, weight: torch.Tensor, bits: int, ternary: bool = False) -> None:
        super().__init__()
        self.bits = bits
        flat = weight.detach().reshape(-1).double().cpu().numpy()
        nonzero = flat != 0
        centroids = np.zeros(0)
        assign = np.zeros(flat.size, dtype=np.int64)
        if ternary:
            centroids, codes = ternary_codes(flat[nonzero])
            assign[nonzero] = codes
        elif nonzero.any():
            centroids, labels = kmeans_1d(flat[nonzero], 2**bits - 1)
            assign[nonzero] = labels + 1
        table = torch.from_numpy(centroids).float().half().float()
        self.centroids = nn.Parameter(table.to(weight.device))
        self.register_buffer("assign", torch.from_numpy(assign).reshape(weight.shape).to(weight.device))

    def table(self) -> torch.Tensor:
        """Code -> value: zero, then the centroids rounded to float16 (gradients pass straight)."""
        c = self.centroids
        rounded = c + (c.detach().half().float() - c.detach())
        return torch.cat([rounded.new_zeros(1), rounded])

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.table()[self.assign]


@TECHNIQUES.register("kmeans")
class WeightSharing(Technique):
    order = 30

    def applies(self, plan: LayerPlan) -> bool:
        return plan.bits < FULL_PRECISION_BITS and plan.quant_mode in ("kmeans", "ternary")

    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        for leaf in leaf_layers(layer):
            parametrize.register_parametrization(leaf, "weight", SharedWeights(leaf.weight, plan.bits, ternary=plan.quant_mode == "ternary"))
        round_biases(layer)
        return layer
