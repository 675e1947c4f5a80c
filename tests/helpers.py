"""Helpers shared by the tests: the repo path, a CLI runner, and a registered test model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _contract_plans(space) -> list[tuple[str, dict[str, Any]]]:
    """One plan per value the space offers for each knob (the extremes of a range): every group
    at that value where its layers offer it, every other knob neutral (no sparsity, 32 bits,
    full rank); a sparsity plan prunes channels wherever the space offers it."""
    from autocompress.space_file import knob_values

    def offered(knob) -> list[Any]:
        return list(knob_values(knob)) if knob.low is None else [knob.low, knob.high]

    def neutral(name: str, knob) -> Any:
        if knob.low is not None:
            return knob.high if name == "rank" else knob.low
        return 32 if name == "bits" and 32 in knob.choices else knob.choices[0]

    plans = []
    names = sorted({k for knobs in space.groups.values() for k, knob in knobs.items() if not knob.fixed})
    for name in names:
        for value in sorted({v for knobs in space.groups.values() if name in knobs and not knobs[name].fixed for v in offered(knobs[name])}, key=str):
            params = {}
            for group, knobs in space.groups.items():
                for k, knob in knobs.items():
                    if knob.fixed:
                        continue
                    params[f"{group}.{k}"] = value if k == name and value in offered(knob) else neutral(k, knob)
                    if name == "sparsity" and k == "sparsity_mode" and "channel" in offered(knob):
                        params[f"{group}.{k}"] = "channel"
            plans.append((f"{name}={value}", params))
    return plans


def check_zoo_contract(build: Callable[..., nn.Module], x: torch.Tensor, n_out: int) -> int:
    """The zoo contract: each value the default space offers (per knob, every group at it)
    applies, runs, packs, reloads bit-identically and exports to ONNX that ONNX Runtime runs
    with the model's outputs. No knob is offered that fails. Returns how many plans ran."""
    import copy

    import numpy as np
    import onnxruntime as ort

    from autocompress import compress
    from autocompress.artifact import loads, pack
    from autocompress.deploy.onnx_export import to_onnx
    from autocompress.space import load_space

    torch.manual_seed(0)
    base = build().eval()
    space = load_space(REPO / "search_spaces" / "default.yaml").resolve(base, x[:2])
    task = {
        "model": "mine:build",
        "num_classes": n_out,
        "input_shape": list(x.shape[1:]),
        "inputs": "float tensor" if x.is_floating_point() else "token ids",
    }
    plans = _contract_plans(space)
    for label, params in plans:
        plan = space.plan_from_params(params)
        model = copy.deepcopy(base)
        compress.apply(model, plan, example=x[:2])
        model.eval()
        with torch.no_grad():
            out = model(x)
        assert out.shape == (len(x), n_out) and torch.isfinite(out).all(), label
        packed = pack(model, plan, task, compress.structure(model))
        reloaded = loads(packed.data, build=build)  # removing channels again traces with autograd
        with torch.no_grad():
            assert torch.equal(reloaded(x), model(x)), label
        data, _ = to_onnx(model, plan, x)
        # As the fp32 target loads it: weights' DequantizeLinear folded to float constants (else
        # ONNX Runtime fuses 4-bit codes into MatMulNBits, which quantizes activations).
        options = ort.SessionOptions()
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        got = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-3, rtol=1e-3, err_msg=label)
    return len(plans)
