"""Which layers of an int8 ONNX file run integer kernels on ONNX Runtime: measured, not assumed.

ONNX Runtime's integer convolution (im2col and an int8 GEMM in NHWC) loses to its float NCHWc
convolution on layers with few channels. Measured on this project's 2-core EPYC (AVX-512 VNNI),
1 thread, batch 32: LeNet-5's first conv (1 -> 6 channels, 5x5 on 28x28) takes 1.27 ms as
QLinearConv against 0.19 ms in float, so LeNet-5's uniform 8-bit plan ran 0.37x its fp32 model.
ResNet-18's convolutions are 1.5x faster in int8 on the same machine.

So each layer that could run integer kernels is timed both ways, alone, at its input shape and
the session's threads (the way TensorRT picks a kernel per layer): its one-node float model
against the same node through the same static QDQ quantizer the export uses, alternately. A
layer whose integer form is not faster stays float in the int8 file; its weights ship as the
float values the trial evaluated (codes times scales, exactly), because ONNX Runtime does not
fold a weight's DequantizeLinear while QDQ fusion is on, and a float convolution fed by one
runs without its NCHWc kernels (1.5x slower again).

Choices are cached per layer signature in the process, so a worker's trials that share a layer's
shape get the same choice; the baseline is unaffected (it has no integer layer).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import numpy as np

from autocompress.deploy.onnx_export import INPUT, OPSET, OUTPUT, _int8_activations
from autocompress.deploy.onnx_weights import WEIGHTED_OPS

log = logging.getLogger(__name__)

MIN_PAIRS, MAX_PAIRS = 5, 200
_CACHE: dict[tuple[Any, ...], float] = {}  # layer signature -> median time ratio integer / float


def slower_in_int8(
    proto: Any, weights: dict[str, tuple[np.ndarray, np.ndarray]], input_shape: tuple[int, ...], threads: int = 1, seconds: float = 0.05
) -> dict[str, float]:
    """``{weight name: integer time / float time}`` for each layer in ``weights`` (int8 codes and
    scales, as the export quantizes them) whose integer kernel is not faster than its float one on
    ONNX Runtime here. ``input_shape``: the model's input, batch included; ``seconds``: the
    paired timing budget per layer."""
    import onnx

    shapes = _tensor_shapes(proto, input_shape)
    inits = {i.name: i for i in proto.graph.initializer}
    slower: dict[str, float] = {}
    for node in proto.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in weights:
            continue
        shape = shapes.get(node.input[0])
        if shape is None or any(d <= 0 for d in shape):
            continue  # a shape the inference could not pin: leave the layer to integer kernels
        used = [inits[n] for n in node.input[1:] if n in inits]
        key = (
            node.op_type,
            tuple(onnx.helper.printable_attribute(a) for a in node.attribute),
            tuple(tuple(i.dims) for i in used),
            tuple(shape),
            threads,
        )
        if key not in _CACHE:
            _CACHE[key] = _time_layer(node, used, shape, weights[node.input[1]], threads, seconds)
            log.debug("int8 kernel choice %s %s: integer/float %.2f", node.op_type, shape, _CACHE[key])
        if _CACHE[key] >= 1.0:
            slower[node.input[1]] = _CACHE[key]
    return slower


def _tensor_shapes(proto: Any, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Every tensor's static shape with the input's (batch included) pinned."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    graph_input = fixed.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    for dim, size in zip(dims, input_shape, strict=False):
        dim.Clear()
        dim.dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(fixed)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_shape = value.type.tensor_type.shape
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_shape.dim)
    return shapes


def _one_node(node: Any, used: list[Any], shape: tuple[int, ...]) -> Any:
    """A model of ``node`` alone: its activation input, its constant inputs, its output."""
    from onnx import TensorProto, helper

    single = helper.make_node(node.op_type, [INPUT, *node.input[1:]], [OUTPUT], name=node.name or "layer")
    single.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [single],
        "layer",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, None)],
        initializer=used,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)


def _time_layer(node: Any, used: list[Any], shape: tuple[int, ...], codes: tuple[np.ndarray, np.ndarray], threads: int, seconds: float) -> float:
    """Median over alternating runs of integer time / float time for one layer."""
    fp32 = _one_node(node, used, shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    try:
        int8, _ = _int8_activations(fp32, {node.input[1]: codes}, [x])
        sessions = [_session(fp32.SerializeToString(), threads), _session(int8.SerializeToString(), threads)]
    except Exception as exc:  # noqa: BLE001  a layer the tools cannot isolate keeps integer kernels
        log.debug("int8 kernel choice: %s not timed alone (%s)", node.name, exc)
        return 0.0
    feed = {INPUT: x}
    for session in sessions:  # warm: first runs allocate and pack weights
        session.run(None, feed)
        session.run(None, feed)
    ratios: list[float] = []
    end = time.perf_counter() + seconds
    while len(ratios) < MIN_PAIRS or (time.perf_counter() < end and len(ratios) < MAX_PAIRS):
        took = []
        for session in sessions:
            t0 = time.perf_counter()
            session.run(None, feed)
            took.append(time.perf_counter() - t0)
        ratios.append(took[1] / max(took[0], 1e-9))
    return statistics.median(ratios)


def session_options(threads: int) -> Any:
    """ONNX Runtime session options for timing (``OnnxRuntime.load_onnx``'s and the layer timings
    here, so both time the same kind of session): ``threads`` intra-op threads, sequential, every
    graph optimization on, errors only (ORT warns about its own optimized-model file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def _session(data: bytes, threads: int) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])
