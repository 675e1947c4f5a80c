"""The embedded default: sklearn's bundled digits (8x8 images, 10 classes) and two small models."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from autocompress.tasks.spec import DATASETS, MODELS, DataSplits, ModelEntry, TaskSpec


def split_60_20_20(x: np.ndarray, y: np.ndarray, seed: int, num_classes: int) -> DataSplits:
    """Stratified 60/20/20 train/val/test with a fixed seed."""
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.25, stratify=y_rest, random_state=seed)
    t = torch.from_numpy
    return DataSplits(t(x_train), t(y_train), t(x_val), t(y_val), t(x_test), t(y_test), num_classes=num_classes)


@DATASETS.register("digits")
def digits(spec: TaskSpec) -> DataSplits:
    """sklearn's bundled 1,797 digits (8x8, 10 classes), split 60/20/20, stratified."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return split_60_20_20(x, bunch.target.astype(np.int64), spec.seed, num_classes=10)


class DigitsMLP(nn.Module):
    """64-300-100-10: the LeNet-300-100 shape on 8x8 inputs."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 8, 8)) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(int(np.prod(input_shape)), 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(self.flatten(x)))
        x = self.act(self.fc2(x))
        return self.fc3(x)


class DigitsCNN(nn.Module):
    """Two 3x3 convs, a pool, two linear layers: conv and linear layers to compress."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 8, 8)) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * (height // 2) * (width // 2), 64)
        self.fc2 = nn.Linear(64, num_classes)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.pool(self.act(self.conv2(x)))
        x = self.act(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


MODELS.register("digits-mlp")(ModelEntry(DigitsMLP, "digits", "64-300-100-10 MLP (LeNet-300-100 shape)"))
MODELS.register("digits-cnn")(ModelEntry(DigitsCNN, "digits", "2 conv + 2 linear layers"))
