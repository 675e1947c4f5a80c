"""Weight sharing (Deep Compression's trained quantization): k-means codebooks per layer.

The nonzero weights of each weight tensor are clustered into ``2^bits - 1`` shared values by
one-dimensional k-means (scikit-learn), the centroids initialised linearly between the smallest
and largest weight, which Han, Mao and Dally found best ("Deep Compression", ICLR 2016,
section 3.2). Code 0 is an exact zero, so pruned weights stay pruned. The assignment is fixed;
fine-tuning trains the centroids, each by the summed gradients of its members (the backward of
an index lookup). Centroids are rounded to float16, the precision the artifact stores them in,
so the evaluated model is the shipped one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.compress._base import TECHNIQUES, ApplyContext, Technique, leaf_layers
from autocompress.compress.quantize import round_biases
from autocompress.plan import FULL_PRECISION_BITS, LayerPlan


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

    def __init__(self, weight: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.bits = bits
        flat = weight.detach().reshape(-1).double().cpu().numpy()
        nonzero = flat != 0
        centroids = np.zeros(0)
        assign = np.zeros(flat.size, dtype=np.int64)
        if nonzero.any():
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
        return plan.bits < FULL_PRECISION_BITS and plan.quant_mode == "kmeans"

    def apply(self, layer: nn.Module, plan: LayerPlan, name: str, ctx: ApplyContext) -> nn.Module:
        for leaf in leaf_layers(layer):
            parametrize.register_parametrization(leaf, "weight", SharedWeights(leaf.weight, plan.bits))
        round_biases(layer)
        return layer
