"""Regression scored by mean squared error (lower is better): sklearn's bundled diabetes data.

``task.model: diabetes:make_task`` (see ``examples/regression/study.yaml``). The function
returns the trained model and the task protocol's parts (``autocompress.tasks.protocol``):

* ``train``, ``val``, ``test``: zero-argument functions returning batches; autocompress opens
  them on the workers, never on the driver, so the data may live on the workers' disks;
* ``metric``: the built-in ``mse`` (its direction, lower is better, comes with it);
* ``loss``: the same error as a training loss, on the same ``(inputs, targets)`` batches;
* ``example_input``: one batch of inputs, for tracing and timing.

Set ``AUTOCOMPRESS_OPEN_LOG`` to a file and every split opened appends ``SPLIT PID`` to it:
the tests read it to prove which processes opened the data.
"""

from __future__ import annotations

import os

import torch
from torch import nn

SEED = 0


class DiabetesNet(nn.Module):
    """A small MLP: 10 clinical features -> disease progression one year on (standardised)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.head = nn.Linear(128, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).squeeze(-1)


def _arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of the 442 patients (60/20/20, seeded), features and targets standardised with
    the training split's statistics."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED)).numpy()
    cut = {"train": order[:265], "val": order[265:353], "test": order[353:]}
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    mx, sx = xt[cut["train"]].mean(0), xt[cut["train"]].std(0)
    my, sy = yt[cut["train"]].mean(), yt[cut["train"]].std()
    idx = torch.as_tensor(cut[split])
    return (xt[idx] - mx) / sx, (yt[idx] - my) / sy


class Split:
    """A split as the protocol wants it: a picklable zero-argument function returning batches,
    in a fixed order (``train`` shuffled by a seeded generator, the same every time)."""

    def __init__(self, name: str, batch_size: int = 32) -> None:
        self.name, self.batch_size = name, batch_size

    def __call__(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        log = os.environ.get("AUTOCOMPRESS_OPEN_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{self.name} {os.getpid()}\n")
        x, y = _arrays(self.name)
        if self.name == "train":
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
            x, y = x[order], y[order]
        return [(x[i : i + self.batch_size], y[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]


def mse_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def make_task() -> dict[str, object]:
    torch.manual_seed(SEED)
    model = DiabetesNet()
    # Your own training, with your own reader (a real task would load its checkpoint instead).
    x, y = _arrays("train")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(30):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
            opt.step()
    return {
        "model": model.eval(),
        "train": Split("train"),
        "val": Split("val"),
        "test": Split("test"),
        "loss": mse_loss,
        "metric": "mse",
        "example_input": torch.zeros(32, 10),
    }
