"""A custom task for autocompress: a function returning your trained model and its data.

Use it from a study config (see examples/custom.yaml) as ``task.model: custom_task:make_task``;
the module is imported from the config's folder or the current folder.

The protocol: the function takes no arguments and returns a mapping (or an object with these
attributes):

* ``model``: the trained ``nn.Module`` (its weights are the baseline; it is never retrained);
* ``train``, ``val``, ``test``: each a ``DataLoader`` (or any iterable of ``(inputs, labels)``
  batches) or an ``(inputs, labels)`` pair of tensors; fine-tuning draws from ``train``, the
  search scores ``val``, reports re-check the front on ``test``;
* ``num_classes`` (optional): else the largest label + 1.

It may also return just the model; then ``task.dataset`` names the data. Splits are read once
into memory on the driver and sent to the workers. The function runs once per search, on the
driver; ``task.build: custom_task:WineNet`` tells workers, ``layers``, ``export`` and
``autocompress.load(FILE, build=WineNet)`` how to build the untrained architecture without
running it again.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class WineNet(nn.Module):
    """A small MLP for sklearn's bundled wine data (13 features, 3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(13, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make_task() -> dict[str, object]:
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    x, y = load_wine(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.25, stratify=y_rest, random_state=0)

    def tensors(a, b):  # type: ignore[no-untyped-def]
        return torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.int64)

    train = TensorDataset(*tensors(x_train, y_train))
    torch.manual_seed(0)
    model = WineNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):  # your own training; a real task would load a checkpoint instead
        for xb, yb in DataLoader(train, batch_size=16, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return {
        "model": model.eval(),
        "train": DataLoader(train, batch_size=64),
        "val": tensors(x_val, y_val),
        "test": tensors(x_test, y_test),
        "num_classes": 3,
    }
