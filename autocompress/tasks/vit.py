"""A Vision Transformer for small images as a built-in model (``vit-small``): the transformer
yardstick on Debian's Fashion-MNIST (``studies/fashion-vit.yaml``).

Dosovitskiy et al. 2021's layout at a size two CPU cores train: 4x4 patches (49 tokens at 28x28)
and a class token, learned positions, pre-norm encoder layers of torch's own
``nn.TransformerEncoderLayer`` (so its ``nn.MultiheadAttention`` is what autocompress rewrites
into q/k/v/out Linears, heads its structured unit), the class token's final norm to the classes.
"""

from __future__ import annotations

import torch
from torch import nn

from autocompress.tasks.spec import MODELS, ModelEntry


class SmallViT(nn.Module):
    """ViT for small images: ``patch`` x ``patch`` patches of ``width``, ``depth`` pre-norm
    layers of ``heads`` heads and an MLP of ``mlp`` (GELU)."""

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 28, 28),
        patch: int = 4,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp: int = 256,
    ) -> None:
        super().__init__()
        channels, height, wide = input_shape
        if height % patch or wide % patch:
            raise ValueError(f"a {height}x{wide} image does not split into {patch}x{patch} patches")
        self.patches = nn.Conv2d(channels, width, patch, patch)
        tokens = (height // patch) * (wide // patch) + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.positions = nn.Parameter(0.02 * torch.randn(1, tokens, width))
        layer = nn.TransformerEncoderLayer(width, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patches(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.positions
        return self.head(self.norm(self.encoder(x)[:, 0]))


MODELS.register("vit-small")(
    ModelEntry(SmallViT, "fashion-mnist", "ViT for small images (4x4 patches, width 128, 4 layers of 4 heads)", input_shape=(1, 28, 28))
)
