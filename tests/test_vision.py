"""Real models and data: torchvision classifiers, datasets from local files, custom tasks,
layer groups, BatchNorm folding and devices. Nothing is downloaded: FakeData, generated images,
generated MNIST files and randomly initialised models."""

from __future__ import annotations

import copy
import gzip
import os
import re
import struct
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from torch import nn

from autocompress import compress
from autocompress.artifact import ArtifactError, loads, pack
from autocompress.cli import main
from autocompress.compress.fold import fold, following_batchnorms
from autocompress.config import load_config
from autocompress.driver import run_search
from autocompress.errors import SpaceError, TaskError
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.space import load_space, parse_space
from autocompress.tasks import MODELS, TaskSpec, build_task, layer_skeleton, load_data
from tests.helpers import REPO, TinyResNet, check_zoo_contract, write_study_config

DEEP = REPO / "search_spaces/deep.yaml"
# A list of torchvision classifiers with different structure: residual, inverted residual with
# depthwise convs, squeeze-excitation, channel shuffle, grouped convs.
TORCHVISION_MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "regnet_x_400mf", "efficientnet_b0"]
# Every knob on in every trial: channel pruning, quantization and low-rank factorization.
ALL_KNOBS = """
layers: ["*"]
group_by: block
knobs:
  sparsity: {low: 0.2, high: 0.5, step: 0.1}
  sparsity_mode: channel
  bits: [4, 6, 8]
  rank: {low: 0.5, high: 0.75, step: 0.25}
overrides:
  - layers: ["@last"]
    sparsity_mode: unstructured
"""


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_model_contract(name: str) -> None:
    """A random plan from the deep space applies, the forward pass works, the artifact is
    smaller than the baseline's and reloads to the same outputs."""
    torch.manual_seed(0)
    task = {"model": f"torchvision:{name}", "num_classes": 10, "input_shape": [3, 32, 32]}
    model = MODELS.get(task["model"]).factory(num_classes=10, input_shape=(3, 32, 32)).eval()
    x = torch.randn(4, 3, 32, 32)
    before = len(pack(copy.deepcopy(model), CompressionPlan(), task).data)
    if name.startswith("shufflenet"):  # its channel shuffle defeats Torch-Pruning's graph: said up front
        with pytest.raises(SpaceError, match="set sparsity_mode: unstructured"):
            load_space(DEEP).resolve(model, x[:2])
        space = parse_space(yaml.safe_load(DEEP.read_text().replace("[unstructured, channel]", "unstructured")), "t").resolve(model, x[:2])
    else:
        space = load_space(DEEP).resolve(model, x[:2])
    assert space.dimensions < 4 * len(space.layers)  # groups keep deep nets tractable
    plan = space.sample(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask())
    compress.apply(model, plan, example=x[:2])
    model.eval()
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    packed = pack(model, plan, task, compress.structure(model))
    assert len(packed.data) < before
    assert torch.equal(loads(packed.data)(x), model(x))


def test_groups_share_knobs_and_edges_stay_alone() -> None:
    model, x = layer_skeleton(TaskSpec(model="torchvision:resnet18"))
    space = load_space(DEEP).resolve(model, x)
    assert len(space.layers) == 21 and len(space.groups) == 10
    assert space.layers["layer2.0.downsample.0"].group == "layer2.0"
    assert space.layers["conv1"].group == "conv1" and space.layers["fc"].group == "fc"
    assert space.groups["conv1"]["bits"].choices == (6, 8, 32)  # the conservative edge override
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    plan = space.sample(trial)
    assert {n.rpartition(".")[0] for n in trial.params} == set(space.groups)
    block = [plan.layers[n] for n in ("layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0")]
    assert len({(p.sparsity, p.structured, p.bits) for p in block}) == 1
    by_type = parse_space({"group_by": "type", "knobs": {"bits": [4, 8]}}, "t").resolve(*layer_skeleton(TaskSpec(model="torchvision:mobilenet_v2")))
    assert set(by_type.groups) == {"features.0.0", "Conv2d-depthwise", "Conv2d-1x1", "classifier.1"}
    stages = parse_space({"group_by": "stage", "knobs": {"bits": [4, 8]}}, "t").resolve(model, x)
    assert list(stages.groups) == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]


def test_depthwise_convs_in_a_group_get_no_rank() -> None:
    model, x = layer_skeleton(TaskSpec(model="torchvision:mobilenet_v2"))
    space = parse_space({"group_by": "block", "knobs": {"rank": {"low": 0.5, "high": 1.0, "step": 0.25}}}, "t").resolve(model, x)
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(space.layers[n].full_rank is None for n in depthwise)
    plan = space.plan_from_values(space.layer_values({g: {"rank": 0.5} for g in space.groups}))
    assert all(plan.layers[n].rank is None for n in depthwise)
    assert all(plan.layers[n].rank is not None for n in space.layers if n not in depthwise)


def test_batchnorm_folds_exactly_into_the_conv_before_quantizing() -> None:
    torch.manual_seed(0)
    model = TinyResNet(input_shape=(1, 8, 8)).eval()
    for bn in (model.bn0, model.bn1, model.bn2):  # trained-looking statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)
    found = following_batchnorms(model)
    assert found == {model.stem: "bn0", model.a: "bn1", model.b: "bn2"}  # not the depthwise conv
    folded = copy.deepcopy(model)
    for conv_name, bn_name in (("stem", "bn0"), ("a", "bn1"), ("b", "bn2")):
        fold(folded, folded.get_submodule(conv_name), bn_name)
    assert isinstance(folded.bn1, nn.Identity)
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
    # Through a plan: 8-bit convs fold their BatchNorms; the artifact records and replays it.
    plan = CompressionPlan({"stem": LayerPlan(bits=8), "a": LayerPlan(bits=8), "b": LayerPlan(bits=16)})
    compress.apply(model, plan, example=x[:2])
    model.eval()
    assert compress.structure(model)["bn_folded"] == {"bn0": "stem", "bn1": "a", "bn2": "b"}
    torch.testing.assert_close(model(x), expected, atol=0.05, rtol=0.05)
    packed = pack(model, plan, {"model": "test-tiny-resnet", "num_classes": 10, "input_shape": [1, 8, 8]}, compress.structure(model))
    assert torch.equal(loads(packed.data)(x), model(x))


def _config(folder: Path, task: dict, space: str | None, cache_dir: Path, workers: int = 0, trials: int = 2, chance: bool = False) -> Path:
    """A two-trial search of ``task``: the repo's default space unless ``space`` (YAML) is given;
    ``chance``: its baseline cannot learn the data (FakeData is noise), searched on purpose."""
    sections: dict[str, object] = {}
    if space is not None:
        (folder / "space.yaml").write_text(space)
        sections["space"] = "space.yaml"
    return write_study_config(
        folder,
        cache_dir,
        {"trials": trials, "workers": workers, "warm_start": False, "seed": 0, "sampler": "random", "allow_chance_baseline": chance},
        name="vision",
        storage=f"sqlite:///{folder / 'v.db'}",
        artifact_dir=str(folder / "artifacts"),
        task=task,
        finetune={"steps": 2, "batch_size": 8},
        deploy={"batch_size": 2, "max_seconds": 0.05},
        **sections,
    )


FAKE = {"dataset": "fakedata", "max_train_samples": 32, "max_eval_samples": 16, "train_epochs": 1, "batch_size": 16}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_two_trial_search_on_fakedata_uses_every_knob(name: str, tmp_path: Path, cache_dir: Path, ray_local) -> None:
    path = _config(tmp_path, {"model": f"torchvision:{name}", **FAKE}, ALL_KNOBS, cache_dir, workers=2, chance=True)
    study = run_search(load_config(path), progress=False)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    baseline = study.user_attrs["baseline"]["size_bytes"]
    for t in trials:
        plan = CompressionPlan.from_dict(t.user_attrs["plan"])
        assert any(lp.structured and lp.sparsity > 0 for lp in plan.layers.values())  # channels removed
        assert all(lp.bits <= 8 for lp in plan.layers.values())
        assert any(lp.rank is not None for lp in plan.layers.values())
        assert t.values[1] < baseline / 4  # packed bytes: 4-8 bit codes of fewer, smaller weights
        assert t.user_attrs["worker"]["device"] == "cpu"


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0801 if array.ndim == 1 else 0x0803  # MNIST's idx format: ubyte labels / images
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, folder: str = "MNIST", debian: bool = False) -> None:
    """MNIST's files with a learnable bar per class: under FOLDER/raw/ as torchvision keeps
    them, or with ``debian`` gzipped side by side in ``root`` as Debian's packages install them."""
    raw = root if debian else root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 120), ("t10k", 40)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, label in enumerate(labels):  # a learnable bright bar per class
            images[i, 2 * label : 2 * label + 3, :] = 255
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    if debian:
        for path in list(raw.iterdir()):
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()


def test_mnist_from_a_local_root(tmp_path: Path, cache_dir: Path) -> None:
    _fake_mnist(tmp_path / "data")
    spec = TaskSpec(model="lenet5", dataset="mnist", data_root=str(tmp_path / "data"), train_epochs=15)
    data = load_data(spec)
    assert data.x_train.shape == (108, 1, 28, 28) and len(data.x_val) == 12 and len(data.x_test) == 40
    assert abs(float(data.x_train.mean())) < 1e-4  # standardised with the training split's statistics
    task = build_task(spec, cache_dir)
    from autocompress.tasks import evaluate_accuracy

    assert evaluate_accuracy(task.build_model(), data.x_test, data.y_test) > 0.5  # learnable, learned


def test_debian_layout_gzipped_idx_files_in_one_folder(tmp_path: Path) -> None:
    _fake_mnist(tmp_path / "fashion-mnist", debian=True)
    spec = TaskSpec(model="lenet5", dataset="fashion-mnist", data_root=str(tmp_path / "fashion-mnist"))
    data = load_data(spec)
    assert data.x_train.shape == (108, 1, 28, 28) and len(data.x_val) == 12 and len(data.x_test) == 40
    assert sorted(set(data.y_test.tolist())) == list(range(10))
    # A folder with neither layout names both, so a user knows which files to put where.
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match=r"FashionMNIST/raw, or the four files train-images-idx3-ubyte\[\.gz\]"):
        load_data(TaskSpec(model="lenet5", dataset="fashion-mnist", data_root=str(tmp_path / "empty")))
    # A damaged file is one clear error naming it.
    cut = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(cut.read_bytes())[:-5]))
    with pytest.raises(TaskError, match=re.escape("t10k-images-idx3-ubyte.gz' holds 31355 bytes for a 40x28x28 array")):
        load_data(TaskSpec(model="lenet5", dataset="fashion-mnist", data_root=str(tmp_path / "fashion-mnist"), seed=1))


def test_real_fashion_mnist_from_debian_needs_no_data_root() -> None:
    """The real dataset as `apt-get install dataset-fashion-mnist` installs it (.ci/run does)."""
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        if os.environ.get("CI"):
            raise AssertionError(".ci/run installs dataset-fashion-mnist")
        pytest.skip("apt-get install dataset-fashion-mnist to run this; CI always does")
    data = load_data(TaskSpec(model="lenet5", dataset="fashion-mnist", max_eval_samples=500))
    assert data.x_train.shape == (54000, 1, 28, 28) and len(data.x_val) == 500 and len(data.x_test) == 500
    assert data.num_classes == 10 and sorted(set(data.y_train.tolist())) == list(range(10))


def test_imagefolder_search_with_resize_and_gray(tmp_path: Path, cache_dir: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, color in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        folder = tmp_path / "images" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(10):
            pixels = (rng.random((20, 20, 3)) * 60 + np.array(color) * 0.7).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    task = {"model": "lenet5", "dataset": "imagefolder", "data_root": str(tmp_path / "images"), "image_size": 28, "channels": 1, "train_epochs": 2}
    data = load_data(TaskSpec(**task))
    assert data.num_classes == 3 and data.x_train.shape[1:] == (1, 28, 28)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (18, 6, 6)
    # Six validation images cannot show a two-epoch model above chance: reading the folder is the point.
    study = run_search(load_config(_config(tmp_path, task, None, cache_dir, chance=True)), progress=False)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2


CUSTOM_TASK = """
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def build():
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))


def make_task():
    with open(os.path.join(os.path.dirname(__file__), "calls.txt"), "a") as f:
        f.write(f"{os.getpid()}\\n")  # one line per call of the task function, in any process
    torch.manual_seed(0)
    x = torch.randn(90, 12)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:60]), y[:60]).backward()
        opt.step()
    return {
        "model": model.eval(),
        "train": DataLoader(TensorDataset(x[:60], y[:60]), batch_size=16),
        "val": (x[60:75], y[60:75]),
        "test": DataLoader(TensorDataset(x[75:], y[75:]), batch_size=8),
    }
"""


def test_custom_module_function_task(tmp_path: Path, cache_dir: Path, ray_local) -> None:
    (tmp_path / "my_custom_task.py").write_text(textwrap.dedent(CUSTOM_TASK))
    # 15 validation samples cannot show a model above chance: the function's own weights are the point here.
    path = _config(tmp_path, {"model": "my_custom_task:make_task"}, None, cache_dir, workers=1, chance=True)
    study = run_search(load_config(path), progress=False)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    from autocompress.export import trial_artifact
    from autocompress.tasks import evaluate_accuracy
    from autocompress.tasks.custom import call_task_function

    data = load_data(TaskSpec(model="my_custom_task:make_task"))
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (60, 15, 15)
    own = evaluate_accuracy(call_task_function("my_custom_task:make_task")[0], data.x_val, data.y_val)
    assert study.user_attrs["baseline"]["accuracy"] == own > 0.5  # the function's own weights, not retrained
    t = study.get_trials(states=(TrialState.COMPLETE,))[0]
    with pytest.raises(ArtifactError, match="never makes autocompress import code"):
        loads(trial_artifact(study, t.number))  # the file alone names user code: refused
    model = loads(trial_artifact(study, t.number), build=MODELS.get("my_custom_task:make_task").factory)  # the user passes it
    assert evaluate_accuracy(model, data.x_val, data.y_val) == t.values[0]


def test_a_build_hook_runs_the_task_function_once_per_search(tmp_path: Path, cache_dir: Path, ray_local, capsys: pytest.CaptureFixture[str]) -> None:
    """The task function trains; with ``task.build`` it runs once, in the driver: never in the
    workers, nor for ``layers``, ``inspect``, ``export`` or ``load``."""
    import subprocess
    import sys

    (tmp_path / "hooked_task.py").write_text(textwrap.dedent(CUSTOM_TASK))
    calls = tmp_path / "calls.txt"
    task = {"model": "hooked_task:make_task", "build": "hooked_task:build", "input_shape": [12]}
    path = _config(tmp_path, task, None, cache_dir, workers=1, chance=True)  # 15 validation samples: see above
    # In a child process: this one may have imported and called the function before.
    search = [sys.executable, "-m", "autocompress", "search", str(path), "--quiet"]
    subprocess.run(search, check=True, cwd=tmp_path, capture_output=True, timeout=600)
    assert len(calls.read_text().splitlines()) == 1  # the driver's one call; the worker built from the hook
    lines = {}
    for args in (
        ["layers", str(path)],
        ["export", "vision", "--trial", "1", "-o", str(tmp_path / "t1.acz"), "--storage", f"sqlite:///{tmp_path / 'v.db'}"],
        ["inspect", str(tmp_path / "t1.acz")],
    ):
        done = subprocess.run([sys.executable, "-m", "autocompress", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        lines[args[0]] = done.stdout
    assert "2 layers" in lines["layers"] and "the model's output" in lines["layers"]
    loaded = subprocess.run(
        [sys.executable, "-c", "import autocompress, hooked_task; print(type(autocompress.load('t1.acz', build=hooked_task.build)).__name__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.stdout.strip() == "Sequential", loaded.stderr
    assert len(calls.read_text().splitlines()) == 1  # still one: nothing after the search ran it


def test_checkpoint_weights_are_the_baseline(tmp_path: Path, cache_dir: Path, mlp_task) -> None:
    model = mlp_task.build_model()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ckpt.pt")
    task = build_task(TaskSpec(model="digits-mlp", weights=str(tmp_path / "ckpt.pt"), train_epochs=1), cache_dir)
    assert all(torch.equal(task.state_dict[k], v) for k, v in model.state_dict().items())
    wrong = {k: v for k, v in model.state_dict().items()}
    wrong["fc2.weight"] = torch.zeros(50, 300)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(TaskError, match=r"'fc2.weight' has shape \(50, 300\), the model expects \(100, 300\)"):
        build_task(TaskSpec(model="digits-mlp", weights=str(tmp_path / "wrong.pt")), cache_dir)
    del wrong["fc2.weight"]
    torch.save(wrong, tmp_path / "missing.pt")
    with pytest.raises(TaskError, match=re.escape("missing 1 keys (first 'fc2.weight')")):
        build_task(TaskSpec(model="digits-mlp", weights=str(tmp_path / "missing.pt")), cache_dir)


def test_checkpoint_mismatch_is_a_one_line_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"fc1.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    (tmp_path / "c.yaml").write_text(f"storage: sqlite:///{tmp_path / 'x.db'}\ntask: {{model: digits-mlp, weights: {tmp_path / 'other.pt'}}}\n")
    assert main(["search", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'fc1.weight' has shape (3, 3)" in err[0]
    assert not (tmp_path / "x.db").exists()  # refused before any storage was created


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_asked_for_but_absent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["search", "--device", "cuda", "--workers", "0", "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "device cuda was asked for" in err[0]
    code = main(["search", "--device", "cuda", "--workers", "2", "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    assert code == 2 and "--gpus-per-worker" in capsys.readouterr().err


def test_example_configs_validate() -> None:
    """The shipped examples parse and name real models; their data roots are the user's."""
    for name in ("cifar10-resnet18.yaml", "mnist-lenet5.yaml", "fashion-resnet8.yaml"):
        config = load_config(REPO / "studies" / name)
        assert config.task.model in ("torchvision:resnet18", "lenet5", "resnet8")
        space = load_space(config.space).resolve(*layer_skeleton(TaskSpec(model=config.task.model)))
        assert space.dimensions > 0


def test_layers_lists_a_model_at_its_own_size_and_names_what_it_leaves_out(tmp_path) -> None:
    """`layers --json`: every listed layer with its knobs, and the weights left uncompressed by
    type with the reason; a ViT is built at its own 224x224 with no config (it was a traceback)."""
    import json

    from tests.helpers import run_cli

    proc = run_cli("layers", "digits-cnn", "--json", cwd=tmp_path)
    found = json.loads(proc.stdout)
    assert [layer["name"] for layer in found["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert found["coverage"]["share"] > 0.99 and found["layers"][0]["knobs"]["bits"]["choices"]
    text = run_cli("layers", "digits-cnn", cwd=tmp_path).stdout
    assert "4 layers hold 99.7% of the model's weights; not compressed: bias x4" in text
    proc = run_cli("layers", "torchvision:vit_b_16", "--json", cwd=tmp_path)  # the default space, no config
    assert proc.returncode == 0, proc.stderr
    vit = json.loads(proc.stdout)
    left = {e["type"]: e for e in vit["coverage"]["not_compressed"]}
    # The fused q/k/v projection is three Linears of the canonical form: 99.7% of ViT-B's weights listed.
    assert vit["coverage"]["share"] > 0.99 and "MultiheadAttention" not in left and len(vit["layers"]) == 74
    query = {layer["name"]: layer for layer in vit["layers"]}["encoder.layers.encoder_layer_0.self_attention.q_proj"]
    assert "channel" in query["knobs"]["sparsity_mode"]["choices"] and "channels go in whole heads (12 of 64)" in query["notes"]
    assert abs(vit["coverage"]["covered"] + sum(e["params"] for e in left.values()) - vit["coverage"]["params"]) == 0
    assert run_cli("layers", "torchvision:inception_v3", cwd=tmp_path).returncode == 0  # 75x75, its smallest


def _tiny_vit() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ).eval()


def test_a_vit_takes_the_default_space_with_each_knob_off_only_where_it_cannot_apply() -> None:
    """The attention's q, k, v and output projections are Linears of the canonical form, each
    with rank; its structured unit is the head, planned on q_proj (k_proj and v_proj follow it).
    Channel pruning is refused per layer with the reason: the embedding width (torchvision's ViT
    reshapes by its hidden_dim: pruned once on a copy, it fails); the MLP's hidden channels keep
    it. Every sampled plan then applies, and a head plan leaves the attention consistent."""
    x = torch.randn(4, 3, 32, 32)
    space = load_space(REPO / "search_spaces" / "default.yaml").resolve(_tiny_vit(), x[:2])
    block = "encoder.layers.encoder_layer_0"
    layers = {role: space.layers[f"{block}.self_attention.{role}"] for role in ("q_proj", "k_proj", "v_proj", "out_proj")}
    hidden, width = space.layers[f"{block}.mlp.0"], space.layers[f"{block}.mlp.3"]
    assert all(not ls.knobs["rank"].off for ls in layers.values())
    assert "channel" in layers["q_proj"].knobs["sparsity_mode"].choices and "channels go in whole heads (2 of 16)" in layers["q_proj"].notes
    assert layers["k_proj"].knobs["sparsity_mode"].off and any("whole heads with its attention's q_proj" in n for n in layers["k_proj"].notes)
    assert width.knobs["sparsity_mode"].off and any("breaks the model's forward pass" in n for n in width.notes)
    assert "channel" in hidden.knobs["sparsity_mode"].choices and not hidden.knobs["rank"].off
    for seed in range(4):
        model = _tiny_vit()
        plan = space.sample(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask())
        compress.apply(model, plan, example=x[:2])
        assert model.eval()(x).shape == (4, 10)
    model = _tiny_vit()
    plan = CompressionPlan({f"{block}.self_attention.q_proj": LayerPlan(sparsity=0.5, structured=True, bits=32, rank=None)})
    compress.apply(model, plan, example=x[:2])
    attention = model.encoder.layers[0].self_attention
    assert attention.num_heads == 1 and attention.v_proj.weight.shape == (16, 32) and attention.out_proj.weight.shape == (32, 16)
    assert compress.structure(model)["channels_removed"][f"{block}.self_attention.q_proj"] in (list(range(16)), list(range(16, 32)))


def test_an_attention_in_canonical_form_gives_the_same_outputs_and_loses_heads_by_importance() -> None:
    """nn.MultiheadAttention as four Linears (batch first or not, separate key/value widths,
    padding and float masks, averaged or per-head weights, unbatched) matches torch's own; a
    TransformerEncoder's nested-tensor path is turned off so its padded batches run the plain
    path (the same values at every token that is not padding). Each criterion ranks heads."""
    from autocompress.compress import ApplyContext
    from autocompress.compress.importance import IMPORTANCE, head_scores
    from autocompress.compress.sites import Attention

    torch.manual_seed(0)
    for batch_first, kdim in ((True, None), (False, 12)):
        mha = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
        attention = Attention.of(mha).eval()
        q = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
        kv = torch.randn(3, 7, kdim or 16) if batch_first else torch.randn(7, 3, kdim or 16)
        padding = torch.zeros(3, 7, dtype=torch.bool)
        padding[:, -2:] = True
        for kwargs in (
            {},
            {"need_weights": False},
            {"key_padding_mask": padding},
            {"attn_mask": torch.randn(5, 7), "key_padding_mask": padding, "average_attn_weights": False},
        ):
            (want, want_w), (got, got_w) = mha(q, kv, kv, **kwargs), attention(q, kv, kv, **kwargs)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert (want_w is None) == (got_w is None) and (want_w is None or torch.allclose(got_w, want_w, atol=1e-5))
    encoder = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2, enable_nested_tensor=True).eval()
    x, padding = torch.randn(2, 6, 32), torch.zeros(2, 6, dtype=torch.bool)
    padding[0, -2:] = True
    with torch.no_grad():
        want = encoder(x, src_key_padding_mask=padding)
        got = compress.canonical(encoder)(x, src_key_padding_mask=padding)
    assert isinstance(encoder.layers[0].self_attn, Attention)
    torch.testing.assert_close(got[~padding], want[~padding], atol=1e-5, rtol=1e-5)
    attention = encoder.layers[0].self_attn
    with torch.no_grad():  # head 2 weighs nothing: every criterion ranks it last
        for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
            proj.weight[16:24] = 0
        attention.out_proj.weight[:, 16:24] = 0
    ctx = ApplyContext(model=encoder, calibration=lambda m: m(x, src_key_padding_mask=padding).square().mean())
    for name in IMPORTANCE.names():
        assert int(head_scores(ctx, attention, name, "layers.0.self_attn.q_proj").argmin()) == 2, name


def test_macs_count_attention_that_calls_no_module() -> None:
    """nn.MultiheadAttention computes its projections with functional calls: counted by the module
    (ViT-B: 17.6 G, where Linear and Conv2d hooks alone saw 11.3 G). The tiny ViT, by hand: 17
    tokens of width 32; patches 16 x 32 x 192; per block 4 projections of 17 x 32 x 32, Q K^T
    and the weighted sum 2 x 17 x 17 x 32, the MLP 2 x 17 x 32 x 64; the head 10 x 32."""
    from autocompress.kernels import count_macs

    per_block = 4 * 17 * 32 * 32 + 2 * 17 * 17 * 32 + 2 * 17 * 32 * 64
    assert count_macs(_tiny_vit(), torch.randn(2, 3, 32, 32)) == 16 * 32 * 192 + 2 * per_block + 10 * 32


def test_a_dependency_group_gets_a_time_limit_in_the_main_thread() -> None:
    """Torch-Pruning ran 76 s into 6.8 GB on one of Swin's groups: a group is cut off, and that
    layer's channels kept with the reason (swin_t's `layers` now ends, 99.7% of weights listed)."""
    import time

    from autocompress.compress.dependency import _OutOfTime, _time_limit

    with pytest.raises(_OutOfTime), _time_limit(0.05):
        time.sleep(5)
    with _time_limit(5):  # a block that ends in time is left alone, and the timer is off after it
        pass
    time.sleep(0.1)


# Tiny configurations of torchvision's architectures: the contract is about structure, and 32x32
# keeps the whole zoo to a minute. Swin is left out: resolving its space spends 20 s in two
# dependency groups cut off at their time limit, and in one full-suite run the process grew
# past 20 GB there (not reproduced alone); `layers torchvision:swin_t` was checked by hand.
TINY_ZOO = {
    "vit": lambda **_: __import__("torchvision").models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    ),
    "maxvit": lambda **_: __import__("torchvision").models.MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[16, 32],
        block_layers=[1, 1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=10,
    ),
}


@pytest.mark.parametrize("name", list(TINY_ZOO))
def test_every_knob_value_the_default_space_offers_applies_packs_reloads_and_exports(name: str) -> None:
    """The zoo contract over ViT and MaxViT (ResNet-18 and MobileNetV3 keep their random-plan
    contract above): see ``tests.helpers.check_zoo_contract``."""
    assert check_zoo_contract(TINY_ZOO[name], torch.randn(4, 3, 32, 32), 10) >= 10
