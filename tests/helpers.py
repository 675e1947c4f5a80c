"""Helpers shared by the tests: the repo path, a CLI runner, and a registered test model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from autocompress.tasks import MODELS, ModelEntry

REPO = Path(__file__).resolve().parents[1]


class TinyResNet(nn.Module):
    """A residual block with BatchNorm and a depthwise conv: structure that channel pruning and
    the registry contracts must handle. Registered for every test as ``test-tiny-resnet``."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 8, 8)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(input_shape[0], 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.a(x)))
        y = self.bn2(self.b(torch.relu(self.dw(y))))
        x = torch.relu(x + y)
        return self.head(x.mean(dim=(2, 3)))


MODELS.register("test-tiny-resnet")(ModelEntry(TinyResNet, "digits", "residual test net"))


def run_cli(*args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m autocompress ARGS`` as a user would, in ``cwd``."""
    full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray unless asked
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "autocompress", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
    "--window-size=1400,1600",
]


def chromium(url: str, screenshot: Path | None = None) -> str:
    """Load ``url`` in headless Chromium, run its scripts, and return the rendered DOM.

    With ``screenshot``, also keep a PNG of the page (a test artifact to look at)."""
    import shutil
    import tempfile

    import pytest

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("CI"):
            raise AssertionError("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium); CI always runs this")
    with tempfile.TemporaryDirectory() as profile:
        args = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([*args, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
        proc = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return proc.stdout


ARTIFACTS = REPO / "test-artifacts"  # screenshots the browser tests keep (git-ignored)


def write_study_config(folder: Path, cache_dir: Path, search: dict[str, object], **sections: object) -> Path:
    """``folder/study.yaml`` for a small real search: the session's cached baselines, the repo's
    default space, the given ``search`` section and any other sections (storage, finetune...)."""
    import yaml

    config = {"cache_dir": str(cache_dir), "space": str(REPO / "search_spaces/default.yaml"), "search": search, **sections}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def small_mlp() -> nn.Module:
    """Three Linear layers (20 -> 40 -> 30 -> 5), seeded."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))


def small_cnn() -> nn.Module:
    """Two 3x3 convs and a Linear head on 3x8x8 inputs, seeded."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(24 * 8 * 8, 5)
    )
