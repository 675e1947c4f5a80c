"""A token-input model scored by macro F1 (higher is better): sklearn's digits read as tokens.

Each 8x8 digit becomes a sequence of up to 64 integer tokens (its pixels' ink levels, 0-16, row
by row); the trailing blank pixels are cut and the sequence padded, with an attention mask
saying which positions are real. The model is an embedding, two transformer encoder blocks
(attention written with separate q/k/v/o projections) and a classifier over the masked mean.
Inputs are integers and a boolean mask, passed as keywords: batches are
``({"ids": LongTensor[B, 64], "mask": BoolTensor[B, 64]}, labels)``; the default loss
(cross-entropy) and the built-in ``macro_f1`` take them as they are.

``task.model: digit_tokens:make_task`` (see ``examples/tokens/study.yaml``); training takes about
25 s on 2 cores and reaches a validation macro F1 of about 0.81.
"""

from __future__ import annotations

import torch
from torch import nn

SEED = 0
VOCAB = 17  # ink levels 0..16
LENGTH = 64
CLASSES = 10


def _tokens(split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
    cut = {"train": order[:1078], "val": order[1078:1438], "test": order[1438:]}[split]
    ids = torch.tensor(x, dtype=torch.int64)[cut]
    ink = ids > 0
    last = LENGTH - torch.argmax(ink.flip(1).int(), dim=1)  # one past the last inked pixel
    mask = torch.arange(LENGTH)[None, :] < last[:, None]
    return ids * mask, mask, torch.tensor(y, dtype=torch.int64)[cut]


class Split:
    """A picklable split function: batches of ({"ids", "mask"}, labels) in a fixed order."""

    def __init__(self, name: str, batch_size: int = 64) -> None:
        self.name, self.batch_size = name, batch_size

    def __call__(self) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        ids, mask, y = _tokens(self.name)
        b = self.batch_size
        return [({"ids": ids[i : i + b], "mask": mask[i : i + b]}, y[i : i + b]) for i in range(0, len(y), b)]


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.norm1(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        attn = nn.functional.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)), attn_mask=mask[:, None, None, :])
        x = x + self.o(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.ff2(torch.relu(self.ff1(self.norm2(x))))


class TokenNet(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.position = nn.Parameter(0.02 * torch.randn(1, LENGTH, dim))
        self.blocks = nn.ModuleList([Block(dim, heads), Block(dim, heads)])
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.position
        for block in self.blocks:
            x = block(x, mask)
        weights = mask.unsqueeze(-1).float()
        return self.head((x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0))


def make_task(epochs: int = 24) -> dict[str, object]:
    torch.manual_seed(SEED)
    model = TokenNet()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    train = Split("train", 32)
    for _ in range(epochs):  # your own training (a real task would load its checkpoint)
        model.train()
        for inputs, y in train():
            opt.zero_grad()
            nn.functional.cross_entropy(model(**inputs), y).backward()
            opt.step()
    ids, mask, _ = _tokens("val")
    return {
        "model": model.eval(),
        "train": train,
        "val": Split("val"),
        "test": Split("test"),
        "metric": "macro_f1",
        "num_classes": CLASSES,
        "example_input": {"ids": ids[:16], "mask": mask[:16]},
    }


def make_quick_task() -> dict[str, object]:
    """The tests': 8 epochs of training instead of 24."""
    return make_task(epochs=8)
