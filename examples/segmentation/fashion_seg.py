"""Semantic segmentation scored by mean IoU (higher is better), on Debian's Fashion-MNIST.

Each image's garment pixels (brighter than a threshold) are labelled with its class + 1, the
background 0: 11 classes per pixel. ``task.model: fashion_seg:make_task`` (see
``examples/segmentation/study.yaml``). The splits are functions that read the idx files where
they run (the workers); the model is a small encoder-decoder with a skip connection; the metric
is the built-in ``miou`` (a corpus-level metric: intersections and unions are pooled over the
whole split, and the paired bootstrap recomputes it on every resample); the loss is the default
pixel-wise cross-entropy on ``(image, mask)`` batches.

``make_task`` trains on 4,000 images for 2 epochs (about 20 s on 2 cores); ``make_quick_task``
(the tests') on 2,000 for 2 epochs, scoring 200 validation and 200 test images.

Data: ``apt-get install dataset-fashion-mnist`` (or set FASHION_MNIST_ROOT to a folder holding
the four idx files).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(os.environ.get("FASHION_MNIST_ROOT", "/usr/share/datasets/fashion-mnist"))
CLASSES = 11  # background + the 10 garments
THRESHOLD = 50  # of 255: brighter pixels belong to the garment
SEED = 0


def _idx(name: str) -> np.ndarray:
    path = ROOT / f"{name}.gz"
    with gzip.open(path, "rb") if path.exists() else open(ROOT / name, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_split(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images and masks of a split: train and val from the official training set
    (val: its last 10,000), test from the official test set."""
    prefix = "t10k" if split == "test" else "train"
    images, labels = _idx(f"{prefix}-images-idx3-ubyte"), _idx(f"{prefix}-labels-idx1-ubyte")
    start = 50_000 if split == "val" else 0
    images, labels = images[start : start + count], labels[start : start + count]
    masks = np.where(images > THRESHOLD, labels[:, None, None].astype(np.int64) + 1, 0)
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
    return (x - 0.286) / 0.353, torch.tensor(masks)


class Split:
    """A picklable split function: batches of (image (B,1,28,28), mask (B,28,28) int64), in a
    fixed order."""

    def __init__(self, name: str, count: int, batch_size: int = 50) -> None:
        self.name, self.count, self.batch_size = name, count, batch_size

    def __call__(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = read_split(self.name, self.count)
        if self.name == "train":
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
            x, y = x[order], y[order]
        return [(x[i : i + self.batch_size], y[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]


class SegNet(nn.Module):
    """A small encoder-decoder: full resolution, half resolution, back up with a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Sequential(nn.Conv2d(48, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.context = nn.Linear(32, 16)  # the whole image's gist: which garment every pixel belongs to
        self.head = nn.Conv2d(16, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc1(x)
        mid = self.mid(self.enc2(skip))
        y = self.dec(torch.cat([self.up(mid), skip], dim=1))
        return self.head(torch.relu(y + self.context(mid.mean(dim=(2, 3)))[:, :, None, None]))


def _make(train_count: int, eval_count: int, epochs: int) -> dict[str, object]:
    torch.manual_seed(SEED)
    model = SegNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train = Split("train", train_count)
    for _ in range(epochs):  # your own training (a real task would load its checkpoint)
        model.train()
        for x, y in train():
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return {
        "model": model.eval(),
        "train": train,
        "val": Split("val", eval_count),
        "test": Split("test", eval_count),
        "metric": "miou",
        "num_classes": CLASSES,
        "example_input": torch.zeros(8, 1, 28, 28),
    }


def make_task() -> dict[str, object]:
    return _make(train_count=4000, eval_count=1000, epochs=2)


def make_quick_task() -> dict[str, object]:
    return _make(train_count=2000, eval_count=200, epochs=2)
