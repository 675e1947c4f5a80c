"""Packed artifacts: reload equals the evaluated model, size is the file, bad files are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from autocompress import artifact, compress
from autocompress.artifact import ArtifactError
from autocompress.deploy.runtimes import runtime
from autocompress.deploy.target import DeployConfig
from autocompress.evaluate import Evaluator, FinetuneConfig
from autocompress.kernels import count_macs
from autocompress.outputs import write_atomic
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.tasks import DATASETS, TaskSpec, build_task, evaluate_accuracy
from tests.helpers import TinyResNet

ALL = "all"
TECHNIQUE_PLANS = {
    "lowrank": lambda layers: {n: LayerPlan(rank=3) for n in layers},
    "channel": lambda layers: {n: LayerPlan(sparsity=0.5, structured=True) for n in layers[:-1]},
    "prune": lambda layers: {n: LayerPlan(sparsity=0.8) for n in layers},
    "quantize": lambda layers: {n: LayerPlan(bits=b) for n, b in zip(layers, [2, 3, 5, 8], strict=False)},
    "tucker": lambda layers: {n: LayerPlan(rank=4, rank_in=1, lowrank_mode="tucker", bits=6) for n in layers if n.startswith("conv")},
    "kmeans": lambda layers: {
        n: LayerPlan(sparsity=s, bits=b, quant_mode="kmeans") for n, s, b in zip(layers, [0.0, 0.6, 0.9], [3, 4, 2], strict=False)
    },
    ALL: lambda layers: {
        n: LayerPlan(sparsity=s, structured=(i == 1), bits=b, rank=r)
        for i, (n, s, b, r) in enumerate(zip(layers, [0.3, 0.5, 0.9, 0.2], [6, 4, 3, 8], [None, 6, 8, None], strict=False))
    },
}


@pytest.fixture(scope="module")
def tasks(cache_dir: Path):
    return {m: build_task(TaskSpec(model=m, train_epochs=5), cache_dir) for m in ("digits-mlp", "digits-cnn")}


@pytest.mark.parametrize("model_name", ["digits-mlp", "digits-cnn"])
@pytest.mark.parametrize("techniques", list(TECHNIQUE_PLANS))
def test_export_round_trip_reproduces_the_evaluated_model(tmp_path: Path, tasks, model_name: str, techniques: str) -> None:
    task = tasks[model_name]
    layers = list(compress.compressible_layers(task.build_model()))
    plan = CompressionPlan(TECHNIQUE_PLANS[techniques](layers))
    result = Evaluator(task, FinetuneConfig(steps=20), DeployConfig(max_seconds=0.05)).evaluate(plan)
    assert result.ok, result.error
    path = tmp_path / "m.acz"
    write_atomic(path, result.artifact)
    assert result.size_bytes == os.path.getsize(path)
    model = artifact.load(path)
    # Bit-identical: the reloaded weights are codes * float16 scales, exactly the evaluated ones,
    # and the same kernels run on the same shapes.
    assert evaluate_accuracy(model, task.data.x_val, task.data.y_val) == result.accuracy
    evaluated = compress.apply(task.build_model(), plan, example=task.data.x_val[:2])
    shapes = {k: v.shape for k, v in compress.bake(evaluated).state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes


def test_evaluated_and_reloaded_outputs_are_identical(tasks) -> None:
    task = tasks["digits-cnn"]
    plan = CompressionPlan({"conv1": LayerPlan(0.3, False, 6, None), "conv2": LayerPlan(0.5, True, 4, 8), "fc1": LayerPlan(0.8, False, 3, 20)})
    model = compress.apply(task.build_model(), plan, example=task.data.x_val[:2])
    from autocompress.finetuning import finetune

    finetune(model, task, FinetuneConfig(steps=10))
    x = task.data.x_test
    expected = model.eval()(x).detach()
    packed = artifact.pack(model, plan, task.artifact_task(), compress.structure(model))
    assert torch.equal(artifact.loads(packed.data)(x), expected)


def test_channel_pruning_keeps_a_residual_net_consistent_and_smaller() -> None:
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.rand(2, 1, 8, 8)
    params_before = sum(p.numel() for p in model.parameters())
    macs_before = count_macs(model, x)
    a_b_before = model.a.weight.numel() + model.b.weight.numel()
    plan = CompressionPlan({"a": LayerPlan(sparsity=0.5, structured=True), "stem": LayerPlan(sparsity=0.25, structured=True)})
    compress.apply(model, plan, example=x)
    # `a` lost half its outputs; the depthwise conv, bn1 and b's inputs followed.
    assert model.a.out_channels == 8 and model.dw.out_channels == 8 and model.bn1.num_features == 8
    # The stem feeds a residual add: b's outputs, bn0/bn2 and the head's inputs shrink with it.
    assert model.stem.out_channels == 12 and model.b.out_channels == 12 and model.head.in_features == 12
    assert model(x).shape == (2, 10)
    assert model.a.weight.numel() + model.b.weight.numel() == 8 * 12 * 9 + 12 * 8 * 9 < a_b_before / 2
    assert sum(p.numel() for p in model.parameters()) < params_before
    assert count_macs(model, x) < 0.5 * macs_before
    task = {"model": "test-tiny-resnet", "num_classes": 10, "input_shape": [1, 8, 8]}
    packed = artifact.pack(model, plan, task, compress.structure(model))
    assert torch.equal(artifact.loads(packed.data)(x), model(x))


def test_torch_runtime_names_the_kernels_that_run(tasks) -> None:
    from autocompress.deploy.timing import time_alone

    task = tasks["digits-mlp"]
    plan = CompressionPlan({"fc1": LayerPlan(bits=8), "fc2": LayerPlan(bits=4), "fc3": LayerPlan(bits=32)})
    model = compress.bake(compress.apply(task.build_model(), plan).eval())
    x = task.data.x_val[:32]
    fp32 = runtime("torch").deploy(model, plan, x, "fp32", "cpu")
    timing = time_alone(fp32, 0.05, 0.3)
    assert timing.latency_ms > 0 and 0 <= timing.cv < 1 and fp32.backend == "torch fp32 cpu"
    int8 = runtime("torch").deploy(model, plan, x, "int8", "cpu")
    assert int8.backend == "torch int8-dynamic[fc1,fc2]+fp32 cpu"  # fc3 stays fp32 at 32 bits
    assert time_alone(int8, 0.05, 0.3).latency_ms > 0


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"PK\x03\x04not ours", "not an autocompress artifact"),
        (b"ACZ1" + b"\x78\x9c\x01\x02", "truncated or corrupt"),
        (b"ACZ1garbage-not-zlib", "corrupt"),
        (b"ACZ2\x00" + b"\x78\x9c\x01\x02", "truncated or corrupt"),
        (b"ACZ2\x01garbage-not-lzma", "corrupt"),
        (b"ACZ2\x07", "not an autocompress artifact"),
    ],
)
def test_foreign_or_damaged_files_are_refused(data: bytes, needle: str) -> None:
    with pytest.raises(ArtifactError, match=needle):
        artifact.loads(data)


def test_truncated_artifact_is_refused(tasks) -> None:
    task = tasks["digits-cnn"]
    data = artifact.pack(task.build_model(), CompressionPlan(), task.artifact_task()).data
    for cut in (len(data) // 2, len(data) - 1, 10):
        with pytest.raises(ArtifactError):
            artifact.loads(data[:cut])


def test_write_atomic_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "m.acz", b"x")
    with pytest.raises(ArtifactError, match="cannot write"):  # /proc refuses new files, even to root
        write_atomic(Path("/proc/m.acz"), b"x")
    write_atomic(tmp_path / "ok.acz", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["ok.acz"]  # no temporary left over


def test_dataset_registry_has_digits() -> None:
    assert "digits" in DATASETS


@pytest.mark.parametrize("indices", [[], [0], [3, 7, 8], list(range(0, 300, 3)), [299]])
def test_removed_channels_travel_as_a_bitmask(indices: list[int]) -> None:
    mask = artifact.index_mask(indices)
    assert artifact.mask_indices(mask) == indices
    assert len(mask) <= 2 * (max(indices, default=0) // 8 + 1)  # two hex digits per 8 channels


def test_distillation_pulls_towards_the_baseline(tasks) -> None:
    """With distill=1 the loss is the KL divergence to the baseline: zero for the baseline itself."""
    from autocompress.finetuning import finetune

    task = tasks["digits-mlp"]
    log, _, _ = finetune(task.build_model(), task, FinetuneConfig(steps=3, lr=0.0, distill=1.0, log_every=1), teacher=task.build_model())
    assert log == [0.0, 0.0, 0.0]
    plain, _, _ = finetune(task.build_model(), task, FinetuneConfig(steps=3, lr=0.0, log_every=1))
    assert min(plain) > 0.0  # cross-entropy on the labels is never exactly zero


def test_a_file_naming_user_code_never_imports_it(tmp_path: Path, tasks) -> None:
    """A crafted header naming ``planted:make`` (a module in the current folder) is refused by
    load and inspect; the module is never imported (its marker file never appears)."""
    import json
    import struct

    from tests.helpers import run_cli

    task = tasks["digits-mlp"]
    packed = artifact.pack(task.build_model(), CompressionPlan(), task.artifact_task())
    header, payload = artifact.read_header(packed.data)
    header["task"]["model"] = "planted:make"
    head = json.dumps(header).encode()
    crafted = tmp_path / "crafted.acz"
    crafted.write_bytes(artifact.seal(struct.pack("<I", len(head)) + head + payload))
    marker = tmp_path / "ran.txt"
    (tmp_path / "planted.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\ndef make(**kw):\n    raise SystemExit(3)\n")
    proc = run_cli("inspect", str(crafted), cwd=tmp_path)
    assert proc.returncode == 0 and "planted:make" in proc.stdout  # described from the header alone
    code = f"import autocompress; autocompress.load({str(crafted)!r})"
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert loaded.returncode != 0 and "never makes autocompress import code" in loaded.stderr
    assert not marker.exists()


def _craft(header: dict, payload: bytes = b"", tail: bytes = b"") -> bytes:
    import json
    import struct

    head = json.dumps(header).encode()
    return artifact.seal(struct.pack("<I", len(head)) + head + payload + tail)


MALFORMED = {
    "header is a list": lambda h: [h],
    "format unknown": lambda h: {**h, "format": 99},
    "task not a mapping": lambda h: {**h, "task": "x"},
    "model not a string": lambda h: {**h, "task": {**h["task"], "model": 7}},
    "negative classes": lambda h: {**h, "task": {**h["task"], "num_classes": -1}},
    "huge input shape": lambda h: {**h, "task": {**h["task"], "input_shape": [1, 1 << 30, 8]}},
    "plan not a mapping": lambda h: {**h, "plan": []},
    "plan bits a string": lambda h: {**h, "plan": {"fc1": {"bits": "8"}}},
    "plan sparsity 5": lambda h: {**h, "plan": {"fc1": {"sparsity": 5}}},
    "plan unknown key": lambda h: {**h, "plan": {"fc1": {"evil": 1}}},
    "plan unknown quant_mode": lambda h: {**h, "plan": {"fc1": {"bits": 4, "quant_mode": "pickle"}}},
    "shared without codebook": lambda h: {**h, "tensors": [{**h["tensors"][0], "kind": "shared", "bits": 4}]},
    "tensors not a list": lambda h: {**h, "tensors": {}},
    "tensor kind unknown": lambda h: {**h, "tensors": [{**h["tensors"][0], "kind": "pickle"}]},
    "tensor negative shape": lambda h: {**h, "tensors": [{**h["tensors"][0], "shape": [-3, 4]}]},
    "tensor huge shape": lambda h: {**h, "tensors": [{**h["tensors"][0], "shape": [1 << 20, 1 << 20, 1 << 20]}]},
    "tensor bad offsets": lambda h: {**h, "tensors": [{**h["tensors"][0], "values": ["a", 3]}]},
    "deeply nested": lambda h: {**h, "bn_folded": {"a": [[[[[[[[[[["deep"]]]]]]]]]]]}},
    "channels_removed not text": lambda h: {**h, "channels_removed": {"fc1": {"x": 1}}},
    "declares gigabytes": lambda h: {**h, "tensors": [{**h["tensors"][0], "values": [0, 3 << 30]}]},
}


@pytest.mark.parametrize("mutation", list(MALFORMED))
def test_malformed_headers_are_refused_with_one_clear_error(mutation: str, tasks, tmp_path: Path) -> None:
    from autocompress.export import describe
    from tests.helpers import run_cli

    task = tasks["digits-mlp"]
    header, payload = artifact.read_header(artifact.pack(task.build_model(), CompressionPlan(), task.artifact_task()).data)
    header["channels_removed"] = {}
    crafted = tmp_path / "bad.acz"
    crafted.write_bytes(_craft(MALFORMED[mutation](header), payload))
    with pytest.raises(ArtifactError):
        artifact.load(crafted)
    with pytest.raises(ArtifactError):
        describe(crafted)  # what inspect shows
    if mutation in ("header is a list", "tensor negative shape", "deeply nested"):  # the CLI's line, for a few
        proc = run_cli("inspect", str(crafted), cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr


def test_a_decompression_bomb_is_refused_without_inflating_it(tasks, tmp_path: Path) -> None:
    """A valid header followed by 2 GiB of compressed zeros: refused after its declared payload,
    in a process whose peak memory stays far below the bomb's size."""
    import json
    import struct
    import subprocess
    import sys
    import zlib

    task = tasks["digits-mlp"]
    header, payload = artifact.read_header(artifact.pack(task.build_model(), CompressionPlan(), task.artifact_task()).data)
    header["channels_removed"] = {}
    head = json.dumps(header).encode()
    z = zlib.compressobj(9)
    parts = [artifact.MAGIC, b"\x00", z.compress(struct.pack("<I", len(head)) + head + payload)]
    zeros = bytes(64 << 20)
    parts += [z.compress(zeros) for _ in range(32)]
    parts.append(z.flush())
    bomb = tmp_path / "bomb.acz"
    bomb.write_bytes(b"".join(parts))
    assert bomb.stat().st_size < 4 << 20  # a few MB on disk, 2 GiB inflated
    code = (
        "import resource, sys, autocompress\n"
        "from autocompress.artifact import ArtifactError\n"
        f"try:\n    autocompress.load({str(bomb)!r})\nexcept ArtifactError as e:\n    print('refused:', e)\n"
        "print('peak_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "refused:" in proc.stdout and "more data than its header declares" in proc.stdout, proc.stdout + proc.stderr
    peak = int(proc.stdout.split("peak_mb")[1])
    assert peak < 1500  # the interpreter with torch; the 2 GiB never materialise


def test_an_endless_file_is_not_read_forever(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    proc = run_cli("inspect", "/dev/zero", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "not an autocompress artifact" in proc.stderr


def test_outputs_never_replace_links_devices_or_files_unasked(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("precious")
    link = tmp_path / "link.acz"
    link.symlink_to(target)
    for path, needle in ((link, "symbolic link"), (Path("/dev/null"), "not a regular file"), (tmp_path, "not a regular file"), (target, "--force")):
        with pytest.raises(ArtifactError, match=needle):
            write_atomic(path, b"new", force=path != target)
    assert target.read_text() == "precious" and link.is_symlink()
    write_atomic(target, b"new", force=True)  # asked for: replaced
    assert target.read_bytes() == b"new"
