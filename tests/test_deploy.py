"""Deploy targets with real runtimes: ONNX export round trips in ONNX Runtime (and OpenVINO where
installed), int8 files that run integer kernels, searches measured on the file that ships, and
timing slots that never overlap another worker's work."""

from __future__ import annotations

import collections
import importlib.util
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
from optuna.trial import TrialState

from autocompress import compress
from autocompress.config import load_config
from autocompress.deploy.onnx_export import quantized_weights, shared_weights, to_onnx
from autocompress.deploy.onnx_weights import fits_int4
from autocompress.deploy.runtimes import INTEGER_OPS, RUNTIMES, runtime
from autocompress.deploy.target import RUNTIME_NAMES, DeployConfig
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.tasks import MODELS
from tests.helpers import run_cli, write_study_config
from tests.test_artifact import TECHNIQUE_PLANS

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
FP32_TOLERANCE = 1e-4  # ONNX Runtime's fused kernels sum in another order than PyTorch's


# The residual net's depthwise conv has no rank, and the conv feeding it keeps its channels.
RESNET_PLANS = {
    "lowrank": {"stem": LayerPlan(rank=4), "a": LayerPlan(rank=4), "b": LayerPlan(rank=6), "head": LayerPlan(rank=3)},
    "channel": {"stem": LayerPlan(sparsity=0.5, structured=True)},
    "prune": {n: LayerPlan(sparsity=0.8) for n in ("stem", "a", "dw", "b", "head")},
    "quantize": {n: LayerPlan(bits=b) for n, b in zip(("stem", "a", "dw", "b", "head"), (2, 3, 4, 5, 8), strict=False)},
    "kmeans": {
        n: LayerPlan(sparsity=0.5, bits=b, quant_mode="kmeans") for n, b in zip(("stem", "a", "dw", "b", "head"), (2, 3, 4, 5, 8), strict=False)
    },
    "tucker": {"a": LayerPlan(rank=6, rank_in=4, lowrank_mode="tucker", bits=8), "b": LayerPlan(rank=4, rank_in=8, lowrank_mode="tucker")},
    "all": {
        "stem": LayerPlan(sparsity=0.25, structured=True, bits=6),
        "a": LayerPlan(sparsity=0.5, bits=4, rank=6),
        "dw": LayerPlan(bits=8),
        "b": LayerPlan(sparsity=0.3, bits=3),
        "head": LayerPlan(bits=8, rank=4),
    },
}


def _compressed(model_name: str, techniques: str, batch: int = 16) -> tuple[torch.nn.Module, CompressionPlan, torch.Tensor]:
    torch.manual_seed(0)
    model = MODELS.get(model_name).factory(num_classes=10, input_shape=(1, 8, 8)).eval()
    layers = list(compress.compressible_layers(model))
    plan = CompressionPlan(RESNET_PLANS[techniques] if model_name == "test-tiny-resnet" else TECHNIQUE_PLANS[techniques](layers))
    x = torch.randn(batch, 1, 8, 8)
    compress.apply(model, plan, example=x[:2])
    return compress.bake(model), plan, x


def _optimized_ops(data: bytes) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("model_name", ["digits-mlp", "digits-cnn", "test-tiny-resnet"])
@pytest.mark.parametrize("techniques", list(TECHNIQUE_PLANS))
def test_fp32_onnx_matches_the_evaluated_model_and_holds_its_codes(model_name: str, techniques: str) -> None:
    model, plan, x = _compressed(model_name, techniques)
    data, stored = to_onnx(model, plan, x)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=FP32_TOLERANCE, rtol=FP32_TOLERANCE)
    # Dynamic batch axis: another batch size runs too.
    assert session.run(None, {"input": x[:3].numpy()})[0].shape == (3, 10)
    # Every weight at <= 8 bits is stored as the trial's exact codes: INT4 where they fit in 4 bits.
    codes, shared = quantized_weights(model, plan), shared_weights(model, plan)
    assert sorted(stored) == sorted([*codes, *shared])
    proto = onnx.load_from_string(data)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for name, (indices, table) in shared.items():  # k-means layers: a small table and 4- or 8-bit indices
        assert np.array_equal(inits[f"{name}_codebook"][inits[f"{name}_indices"].astype(np.int64)], table[indices.astype(np.int64)])
        assert name not in inits and str(inits[f"{name}_indices"].dtype) in ("uint4", "uint8")
    assert shared or techniques != "kmeans" or model_name == "test-tiny-resnet"
    for name, (values, scale) in codes.items():
        kept = inits[f"{name}_quantized"]
        assert np.array_equal(kept.astype(np.int8), values) and str(kept.dtype) == ("int4" if fits_int4(values) else "int8"), name
        assert np.array_equal(inits[f"{name}_scale"], scale)
    assert not any(n.metadata_props for n in proto.graph.node)  # no stack traces (this machine's paths) ship


@pytest.mark.parametrize("model_name", ["digits-mlp", "digits-cnn", "test-tiny-resnet"])
def test_int8_onnx_runs_integer_kernels_with_the_trial_codes(model_name: str) -> None:
    model, plan, x = _compressed(model_name, "all", batch=64)
    data, _stored = to_onnx(model, plan, x[:16], "int8", [x[i : i + 16] for i in range(0, 64, 16)])
    ops = _optimized_ops(data)
    assert any(op in INTEGER_OPS for op in ops), collections.Counter(ops)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load_from_string(data).graph.initializer}
    for name, (values, _) in quantized_weights(model, plan).items():
        assert np.array_equal(inits[f"{name}_quantized"], values)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x[:16]).numpy()
    got = session.run(None, {"input": x[:16].numpy()})[0]
    # Quantized activations move the logits a little; the predictions mostly agree.
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.75


def test_a_layer_kept_float_in_an_int8_file_ships_the_evaluated_weights_and_float_ops_after_it() -> None:
    """``keep_float`` names a layer: it ships float weights equal to its codes times scales, the ops
    it alone feeds stay float (a uint8 pooling op after a float layer ran 40x slower), the others
    run integer kernels."""
    model, plan, x = _compressed("digits-cnn", "quantize", batch=32)
    codes = quantized_weights(model, plan)
    first = next(iter(codes))
    data, stored = to_onnx(model, plan, x, "int8", [x], keep_float=lambda proto, weights, shape: [first])
    assert first not in stored and set(stored) == set(codes) - {first}
    proto = onnx.load_from_string(data)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    values, scale = codes[first]
    assert np.array_equal(inits[first], values.astype(np.float32) * scale.reshape(-1, *[1] * (values.ndim - 1)))
    layer = next(n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] == first)
    after = [n for n in proto.graph.node if layer.output[0] in n.input]
    assert after and all(n.op_type != "QuantizeLinear" for n in after)  # what it alone feeds runs float (its ReLU)
    ops = _optimized_ops(data)
    assert any(op in INTEGER_OPS for op in ops) and ({"Conv", "FusedConv"} & set(ops)), collections.Counter(ops)
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert (got.argmax(1) == model(x).numpy().argmax(1)).mean() >= 0.75


def test_onnxruntime_int8_deploys_the_faster_form_and_says_which_layers_run_float() -> None:
    """Each layer's two kernels are timed once per shape (cached), and the deployed form is either
    integer kernels (naming any layer left float) or the same plan on float kernels (saying why);
    both predict what the model predicts."""
    from autocompress.deploy import kernel_choice

    model, plan, x = _compressed("digits-cnn", "quantize", batch=32)
    kernel_choice._CACHE.clear()
    deployed = runtime("onnxruntime").deploy(model, plan, x, "int8", "cpu", 1, [x])
    timed = dict(kernel_choice._CACHE)
    assert len(timed) == len(quantized_weights(model, plan)) and all(r > 0 for r in timed.values())
    runtime("onnxruntime").deploy(model, plan, x, "int8", "cpu", 1, [x])
    assert timed == kernel_choice._CACHE  # the same shapes are not timed again
    if " fp32 " in deployed.backend:
        assert "integer kernels took" in deployed.backend and "QuantizeLinear" not in {
            n.op_type for n in onnx.load_from_string(deployed.onnx).graph.node
        }
    else:
        slower = [n for n, r in timed.items() if r >= 1.0]
        assert "[Q" in deployed.backend and (not slower or "float where integer kernels are slower" in deployed.backend)
    with torch.no_grad():
        assert (deployed.predict(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.75


def test_a_vit_ships_every_linear_as_codes_and_its_token_linears_run_integer_kernels() -> None:
    """A Linear on 3-D inputs is a MatMul of its transposed weight: the file holds its codes under
    the weight's name (exact in fp32), int8 runs it as QLinearMatMul, and PyTorch's dynamic int8
    runs every projection of the attention in its canonical form (four Linears it calls)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
    x = torch.randn(16, 3, 32, 32)
    layers = list(compress.compressible_layers(compress.canonical(model.eval())))
    plan = CompressionPlan({n: LayerPlan(bits=4 if "mlp" in n else 8) for n in layers})
    compress.apply(model, plan, example=x[:2])
    compress.bake(model)
    data, stored = to_onnx(model, plan, x)
    assert sorted(stored) == sorted(f"{n}.weight" for n in layers)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load_from_string(data).graph.initializer}
    codes, _ = quantized_weights(model, plan)["encoder.layers.encoder_layer_0.mlp.0.weight"]
    assert np.array_equal(inits["encoder.layers.encoder_layer_0.mlp.0.weight_quantized"].astype(np.int8), codes.T)
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-4)
    int8, _ = to_onnx(model, plan, x, "int8", [x])
    ops = collections.Counter(_optimized_ops(int8))
    assert ops["QLinearMatMul"] >= 8 and ops["MatMulNBits"] == 4  # 8-bit projections; 4-bit MLP Linears stay 4-bit
    graph = onnx.load_from_string(int8).graph
    made = {o: n.op_type for n in graph.node for o in n.output}
    softmax = [n for n in graph.node if n.op_type == "Softmax"]  # the attention's probabilities stay float
    assert len(softmax) == 2 and all(made.get(n.input[0]) != "DequantizeLinear" for n in softmax)
    torch_int8 = runtime("torch").deploy(model, plan, x, "int8", "cpu")
    assert "self_attention.q_proj" in torch_int8.backend and "self_attention.out_proj" in torch_int8.backend and "mlp.0" in torch_int8.backend
    with torch.no_grad():
        assert torch.allclose(torch_int8.model(x), model(x), atol=0.1)
    assert torch_int8.predict(x).shape == (16, 10)


def _small_vit(plan_bits: Callable[[str], int]) -> tuple[torch.nn.Module, CompressionPlan, torch.Tensor]:
    from autocompress.tasks.vit import SmallViT

    torch.manual_seed(0)
    model = compress.canonical(SmallViT(depth=1, width=64, heads=2, mlp=128).eval())
    plan = CompressionPlan({n: LayerPlan(bits=plan_bits(n)) for n in compress.compressible_layers(model)})
    x = torch.randn(64, 1, 28, 28)
    compress.apply(model, plan, example=x[:2])
    return compress.bake(model), plan, x


def test_an_int8_file_keeps_four_bit_matmul_weights_at_four_bits() -> None:
    """4-bit Linears on tokens ship in an int8 file as blockwise INT4 holding the trial's codes
    (ONNX Runtime runs them as MatMulNBits, in float, as evaluated), not as int8 codes taking twice
    the bytes: the 4-bit plan's int8 file is much smaller than the 8-bit plan's."""
    sizes = {}
    for bits in (8, 4):
        model, plan, x = _small_vit(lambda n, b=bits: b)
        data, _ = to_onnx(model, plan, x[:32], "int8", [x[32:]])
        sizes[bits] = len(data)
    proto = onnx.load_from_string(data)
    blockwise = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and any(a.name == "block_size" for a in n.attribute)]
    assert len(blockwise) == 6  # q, k, v, out and the MLP's two Linears
    inits = {i.name: i for i in proto.graph.initializer}
    codes, _ = quantized_weights(model, plan)["encoder.layers.0.linear1.weight"]
    stored_codes = inits["encoder.layers.0.linear1.weight_quantized"]
    assert stored_codes.data_type == onnx.TensorProto.INT4 and np.array_equal(onnx.numpy_helper.to_array(stored_codes).astype(np.int8), codes.T)
    assert sizes[4] < 0.65 * sizes[8], sizes
    deployed = runtime("onnxruntime").load_onnx(data, x[:32], "cpu", 1, "int8")
    assert "MatMulNBits x6" in deployed.backend
    # The fused kernels compute what the file says (its ops one by one, unoptimized): the 4-bit
    # Linears in float on the trial's weights; the rest as the int8 target rounds it.
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(data, plain, providers=["CPUExecutionProvider"]).run(None, {"input": x[:32].numpy()})[0]
    np.testing.assert_allclose(deployed.predict(x[:32]).numpy(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install 'autocompress[openvino]')")
def test_openvino_int8_keeps_float_a_layer_joined_to_a_learned_token() -> None:
    """OpenVINO computes a ViT's patch embedding wrongly at int8 when its tokens are joined to the
    class token: its int8 deploy keeps that layer float and says so, and then computes the model as
    ONNX Runtime does. A convolutional net has no such layer."""
    from autocompress.deploy.onnx_export import export_fp32
    from autocompress.deploy.onnx_graph import joined_to_learned_tokens

    model, plan, x = _small_vit(lambda n: 8)
    deployed = runtime("openvino").deploy(model, plan, x[:32], "int8", "cpu", 1, [x[32:]])
    assert "float where OpenVINO's int8 is wrong: patches," in deployed.backend
    reference = runtime("onnxruntime").load_onnx(to_onnx(model, plan, x[:32], "int8", [x[32:]])[0], x[:32], "cpu", 1, "int8")
    with torch.no_grad():
        expected = model(x[:32])
    ov_error = float((deployed.predict(x[:32]) - expected).abs().max())
    assert ov_error <= 2 * float((reference.predict(x[:32]) - expected).abs().max()) + 0.05
    cnn, cnn_plan, cnn_x = _compressed("digits-cnn", "quantize")
    assert joined_to_learned_tokens(export_fp32(cnn, cnn_x), quantized_weights(cnn, cnn_plan)) == []


def test_resnet18_with_channels_4_bits_and_low_rank_exports_and_runs_in_onnxruntime() -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(8, 3, 32, 32)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    plan = CompressionPlan(
        {
            **{n: LayerPlan(sparsity=0.25, structured=True, bits=4) for n in convs[1:-1] if "downsample" not in n},
            "layer4.1.conv2": LayerPlan(bits=4, rank=64),
            "fc": LayerPlan(bits=4, rank=5),
        }
    )
    compress.apply(model, plan, example=x[:2])
    compress.bake(model)
    assert sum(v for v in compress.structure(model)["channels_removed"].values() for v in [len(v)]) > 0
    for precision in ("fp32", "int8"):
        data, stored = to_onnx(model, plan, x, precision, [x])
        assert "fc.first.weight" in stored and "layer1.0.conv1.weight" in stored
        got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        assert got.shape == (8, 10) and np.isfinite(got).all()
        if precision == "fp32":
            with torch.no_grad():
                np.testing.assert_allclose(got, model(x).numpy(), atol=1e-3, rtol=1e-3)
        else:
            assert any(op in INTEGER_OPS for op in _optimized_ops(data))


def test_every_runtime_name_is_registered_and_checks_its_device() -> None:
    assert sorted(RUNTIMES) == sorted(RUNTIME_NAMES)
    from autocompress.errors import DeployError

    with pytest.raises(DeployError, match="CPU-only"):
        runtime("torch").check("int8", "cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(DeployError, match="onnxruntime-gpu"):
            runtime("onnxruntime").check("fp32", "cuda")


@pytest.mark.parametrize("name", [n for n in RUNTIME_NAMES if n != "openvino" or HAS_OPENVINO])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_runtime_contract_predicts_like_the_model_and_times(name: str, precision: str) -> None:
    model, plan, x = _compressed("digits-cnn", "quantize", batch=64)
    deployed = runtime(name).deploy(model, plan, x[:16], precision, "cpu", 1, [x[:32], x[32:]])
    with torch.no_grad():
        expected = model(x).argmax(1)
    agree = (deployed.predict(x).argmax(1) == expected).float().mean().item()
    assert agree >= (1.0 if precision == "fp32" else 0.75)
    assert deployed.run_block(3) > 0 and name in deployed.backend
    assert (deployed.onnx is None) == (name == "torch")


def test_legacy_latency_section_loads_as_deploy_with_a_deprecation_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("latency: {backend: int8, threads: 2, max_seconds: 0.5}\n")
    config = load_config(path)
    assert config.deploy == DeployConfig(precision="int8", threads=2, max_seconds=0.5)
    assert "'latency:' is deprecated" in capsys.readouterr().err


# ---- searches measured on the deploy target --------------------------------------------------


def _search(
    tmp_path: Path, cache_dir: Path, deploy: dict, trials: int = 3, workers: int = 0, steps: int = 40, **extra: object
) -> tuple[optuna.Study, Path]:
    db = tmp_path / "d.db"
    config = write_study_config(
        tmp_path,
        cache_dir,
        {"trials": trials, "workers": workers, "seed": 0},
        storage=f"sqlite:///{db}",
        artifact_dir=str(tmp_path / "artifacts"),
        finetune={"steps": steps, "lr": 0.002},
        deploy=deploy,
        **extra,
    )
    proc = run_cli("search", str(config), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return optuna.load_study(study_name="autocompress", storage=f"sqlite:///{db}"), config


def test_onnxruntime_int8_search_stores_the_accuracy_of_the_file_it_exports(tmp_path: Path, cache_dir: Path, cnn_task) -> None:
    study, _ = _search(tmp_path, cache_dir, {"runtime": "onnxruntime", "precision": "int8", "max_seconds": 0.2}, trials=2)
    baseline = study.user_attrs["baseline"]
    assert baseline["latency_backend"].startswith("onnxruntime") and baseline["deploy"].startswith("onnxruntime int8 cpu")
    trial = next(t for t in study.get_trials(states=(TrialState.COMPLETE,)) if any(lp["bits"] <= 8 for lp in t.user_attrs["plan"].values()))
    metrics = trial.user_attrs["metrics"]
    assert "QLinearConv" in metrics["latency_backend"] or "QGemm" in metrics["latency_backend"]
    assert metrics["latency_ms"] == pytest.approx(baseline["latency_ms"] * metrics["latency_ratio"])
    out = tmp_path / "t.onnx"
    proc = run_cli(
        "export",
        "autocompress",
        "--trial",
        str(trial.number),
        "--format",
        "onnx",
        "--storage",
        f"sqlite:///{tmp_path / 'd.db'}",
        "-o",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "the file measured on onnxruntime int8" in proc.stdout and out.stat().st_size == metrics["onnx_bytes"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x, y = cnn_task.data.x_val, cnn_task.data.y_val
    logits = session.run(None, {"input": x.numpy()})[0]
    assert float((logits.argmax(1) == y.numpy()).mean()) == metrics["accuracy"]  # exactly the stored number
    assert any(op in INTEGER_OPS for op in _optimized_ops(out.read_bytes()))
    # A fresh int8 export from the packed artifact is the same file: calibration is seeded.
    again = tmp_path / "again.onnx"
    from autocompress.export import trial_artifact, trial_onnx

    data, how = trial_onnx(study, trial.number, trial_artifact(study, trial.number), "int8")
    assert how.startswith("the file measured")
    assert data == out.read_bytes()
    del again
    report = run_cli("report", "autocompress", "--storage", f"sqlite:///{tmp_path / 'd.db'}", cwd=tmp_path)
    assert report.returncode == 0 and "deploy target: onnxruntime int8 cpu, 1 thread, batch 32" in report.stdout


def test_int8_export_of_a_trial_without_quantized_layers_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    space = tmp_path / "fp32.yaml"
    space.write_text("layers: ['*']\nknobs: {sparsity: [0.0, 0.5], bits: 32}\n")
    _study, _config = _search(tmp_path, cache_dir, {"max_seconds": 0.05}, trials=1, steps=5, space=str(space))
    proc = run_cli(
        "export",
        "autocompress",
        "--trial",
        "0",
        "--format",
        "onnx",
        "--precision",
        "int8",
        "--storage",
        f"sqlite:///{tmp_path / 'd.db'}",
        "-o",
        str(tmp_path / "x.onnx"),
        cwd=tmp_path,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "no layer at 8 bits or fewer" in lines[0] and "--precision fp32" in lines[0]
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install 'autocompress[openvino]')")
def test_openvino_search_measures_every_trial_on_openvino(tmp_path: Path, cache_dir: Path) -> None:
    study, _ = _search(tmp_path, cache_dir, {"runtime": "openvino", "precision": "int8", "max_seconds": 0.1}, trials=2, steps=10)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and all(t.user_attrs["metrics"]["latency_backend"].startswith("openvino") for t in trials)


@pytest.mark.e2e
def test_timing_slots_never_overlap_another_workers_fine_tuning(tmp_path: Path, cache_dir: Path) -> None:
    study, _ = _search(tmp_path, cache_dir, {"max_seconds": 0.3}, trials=4, workers=2, steps=300)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    by_pid: dict[int, dict[str, list]] = collections.defaultdict(lambda: {"timing": [], "busy": []})
    for t in trials:
        pid, windows = t.user_attrs["worker"]["pid"], t.user_attrs["windows"]
        by_pid[pid]["timing"] += windows["timing"]
        for spans in windows["busy"].values():
            by_pid[pid]["busy"] += spans
    assert len(by_pid) == 2  # two workers, each with fine-tuning turns recorded
    assert all(len(w["busy"]) >= 1 and w["timing"] for w in by_pid.values())
    for pid, own in by_pid.items():
        others = [span for other, w in by_pid.items() if other != pid for span in w["busy"]]
        for start, end in own["timing"]:
            overlapping = [s for s in others if s[0] < end and start < s[1]]
            assert not overlapping, (pid, (start, end), overlapping[:3])
    # The two workers' turns did interleave: the slots were taken while the other was busy.
    starts = sorted((s, pid) for pid, w in by_pid.items() for s, _ in w["busy"])
    assert len({pid for _, pid in starts}) == 2


def test_a_missing_onnxruntime_is_one_clear_line(tmp_path: Path, cache_dir: Path) -> None:
    import subprocess
    import sys

    config = write_study_config(
        tmp_path, cache_dir, {"trials": 1, "workers": 0}, storage=f"sqlite:///{tmp_path / 'm.db'}", deploy={"runtime": "onnxruntime"}
    )
    # The package made unimportable in that process, as on a machine that lacks it.
    code = f"import sys; sys.modules['onnxruntime'] = None; from autocompress.cli import main; sys.exit(main(['search', {str(config)!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "pip install onnxruntime" in lines[0], proc.stderr
    assert not (tmp_path / "m.db").exists()  # nothing written


def test_four_bit_codes_ship_as_int4_and_the_file_nears_the_packed_size(mlp_task) -> None:
    """A uniform 4-bit plan: the ONNX file holds INT4 initializers (opset 21), runs in ONNX
    Runtime and OpenVINO with the same outputs as its int8-initializer form, and is within 1.5x
    of the packed artifact (it was 2.9x with int8 initializers and the exporter's metadata)."""
    from autocompress import artifact

    model = mlp_task.build_model()
    plan = CompressionPlan({n: LayerPlan(bits=4) for n in compress.compressible_layers(model)})
    compress.apply(model, plan)
    packed = artifact.pack(model, plan, mlp_task.artifact_task(), compress.structure(model)).data
    x = mlp_task.data.x_val[:32]
    data, _ = to_onnx(model, plan, x)
    proto = onnx.load_from_string(data)
    assert any(i.data_type == onnx.TensorProto.INT4 for i in proto.graph.initializer)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 21
    assert len(data) <= 1.5 * len(packed), (len(data), len(packed))
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=FP32_TOLERANCE, rtol=FP32_TOLERANCE)
    deployed = runtime("openvino").load_onnx(data, x, "cpu", 1, "fp32")  # as a study runs it: f32 inference
    np.testing.assert_allclose(deployed.predict(x).numpy(), expected, atol=1e-4, rtol=1e-4)


def test_a_front_sized_by_its_deployed_files(tmp_path: Path, cache_dir: Path) -> None:
    """pareto.size deployed: the size objective is each trial's ONNX file (the one measured and
    exported), the baseline records the choice, and the report shows both files' sizes."""
    study, _ = _search(tmp_path, cache_dir, {"runtime": "onnxruntime", "max_seconds": 0.05}, trials=2, steps=5, pareto={"size": "deployed"})
    baseline = study.user_attrs["baseline"]
    assert baseline["size_objective"] == "deployed" and baseline["size_bytes"] == baseline["onnx_bytes"] != baseline["packed_bytes"]
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        metrics = trial.user_attrs["metrics"]
        assert trial.values[1] == metrics["onnx_bytes"] == metrics["deployed_bytes"] == metrics["size_bytes"]
        assert metrics["packed_bytes"] < metrics["deployed_bytes"]
        assert metrics["compression_ratio"] == pytest.approx(baseline["onnx_bytes"] / metrics["onnx_bytes"])
    report = run_cli("report", "autocompress", "--storage", f"sqlite:///{tmp_path / 'd.db'}", "--json", cwd=tmp_path)
    rows = json.loads(report.stdout)
    assert rows and all(r["size_bytes"] == r["deployed_bytes"] and r["packed_bytes"] < r["deployed_bytes"] for r in rows)
    text = run_cli("report", "autocompress", "--storage", f"sqlite:///{tmp_path / 'd.db'}", cwd=tmp_path).stdout
    assert "deployed KB" in text and "packed KB" in text and "pareto.size deployed" in text
