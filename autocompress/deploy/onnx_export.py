"""A compressed model as an ONNX file: the form ONNX Runtime, OpenVINO and TensorRT load.

``torch.onnx.export`` (the ``torch.export`` based exporter) writes the baked model: channel-pruned
layers are physically smaller, factorized layers are their two ops, folded BatchNorms are gone.
Two passes then put in what the exporter cannot know:

* Weights of layers at <= 8 bits become the trial's exact integer codes, as int8 initializers
  (INT4, two per byte, for codes of 4 bits or fewer: the file then declares opset 21) with
  their per-channel scales feeding ``DequantizeLinear`` (QDQ). Dequantized, they equal the
  evaluated weights bit for bit (``codes * scale`` in float32 both ways). An int8 export keeps
  int8 weights: the integer kernels it runs take int8. A MatMul's 4-bit codes are the exception:
  they stay INT4 there, blockwise, for ONNX Runtime's MatMulNBits (``onnx_graph.nibble_matmuls``).
* Weights of k-means layers become their codebook (a small float table) and each weight's
  index into it (UINT4 for up to 16 values, else UINT8) through ``Cast`` and ``Gather``: exact.
* With ``precision="int8"``, ONNX Runtime's static quantizer adds ``QuantizeLinear`` /
  ``DequantizeLinear`` pairs on the activations of those layers, with ranges calibrated on
  training batches, so runtimes fuse them into integer kernels (QLinearConv, QGemm...). The
  weights' scales are handed to it as overrides, so it keeps the trial's codes. A runtime may
  keep some layers float (``keep_float``: ONNX Runtime's are timed both ways, see
  ``kernel_choice``); those ship their float weights.

Unstructured sparsity stays as zeros in dense tensors: ONNX has no sparse kernels that run faster.
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from autocompress.compress import COMPRESSIBLE_TYPES, layer_map, leaf_layers
from autocompress.compress.quantize import FakeQuant
from autocompress.deploy.onnx_graph import FLOAT_OPS, fed_by_float, feeding_only, gathered, nibble_matmuls
from autocompress.deploy.onnx_weights import WEIGHTED_OPS, as_blockwise, as_gather, as_qdq, channel_axes, find_transposed, replace_weights
from autocompress.errors import DeployError
from autocompress.plan import CompressionPlan

if TYPE_CHECKING:
    import onnx

OPSET = 20  # what the exporter writes today; ONNX Runtime >= 1.17 and OpenVINO read it
INPUT, OUTPUT = "input", "logits"
log = logging.getLogger(__name__)


class ExportError(DeployError):
    """A model cannot be written as ONNX."""


def quantized_weights(model: nn.Module, plan: CompressionPlan) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"fc1.weight": (int8 codes, float32 scales)}`` for every leaf of a layer at <= 8 bits.

    The model is baked: its weights are ``codes * scale`` exactly, and the quantizer's own scale
    rule gives the scale back; a weight that does not round-trip exactly is refused.
    """
    layers = layer_map(model)
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer, lp in plan.layers.items():
        if not lp.integer_codes or layer not in layers:
            continue
        quantizer = FakeQuant(lp.bits)
        for leaf in leaf_layers(layers[layer]):
            weight = leaf.weight.detach().cpu().float()
            scale = quantizer.scale(weight)
            codes = quantizer.codes(weight, scale)
            if not torch.equal(codes * scale, weight):
                raise ExportError(f"layer '{layer}': its weights are not {lp.bits}-bit codes times a scale; export the model as evaluated (baked)")
            found[f"{names[id(leaf)]}.weight"] = (codes.to(torch.int8).numpy(), scale.reshape(-1).numpy().astype(np.float32))
    return found


def shared_weights(model: nn.Module, plan: CompressionPlan) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"fc1.weight": (indices, table)}`` for every leaf of a k-means layer: the baked weight's
    distinct values (its codebook and zero, at most 2^bits) and each weight's index into them,
    so that ``table[indices]`` is the weight exactly."""
    layers = layer_map(model)
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer, lp in plan.layers.items():
        if lp.quant_mode != "kmeans" or lp.bits > 8 or layer not in layers:
            continue
        for leaf in leaf_layers(layers[layer]):
            weight = leaf.weight.detach().cpu().float().numpy()
            table = np.unique(weight)
            if table.size > 2**lp.bits:
                continue  # not (yet) shared values: left float
            indices = np.searchsorted(table, weight).astype(np.uint8)
            if np.array_equal(table[indices], weight):
                found[f"{names[id(leaf)]}.weight"] = (indices, table.astype(np.float32))
    return found


def export_fp32(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """The baked model as an ONNX graph with a dynamic batch axis (and, for token ids, a dynamic
    sequence axis wherever the model allows one: a fixed table of positions keeps it static)."""
    model = model.eval().cpu()
    example = example.cpu()
    axes: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=1 << 16)}
    if not example.is_floating_point() and example.dim() >= 2:
        axes[1] = torch.export.Dim.AUTO
    # The exporter and torch.export report progress and advice on every call; none of it is ours.
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo", "torch._export")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad(), _silence():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=(axes,),
                opset_version=OPSET,
                verbose=False,
                optimize=True,
            )
    except Exception as exc:  # noqa: BLE001  the exporter raises many types; all mean the same to a user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export cannot export this model ({type(exc).__name__}: {first[:200]})") from None
    finally:
        for q, level in zip(quiet, levels, strict=False):
            q.setLevel(level)
    if program is None:  # only when the exporter is asked to write a file itself
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


class _silence:
    """Swallow the exporter's prints to stdout (it reports its steps with print)."""

    def __enter__(self) -> None:
        import contextlib

        self._ctx = contextlib.redirect_stdout(io.StringIO())
        self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


# (float graph, {weight: (codes, scales)}, input shape) -> the weights whose layers run float kernels
KeepFloat = Callable[[Any, dict[str, tuple[np.ndarray, np.ndarray]], tuple[int, ...]], Iterable[str]]


def _int8_activations(proto, weights: dict[str, tuple[np.ndarray, np.ndarray]], calibration: Iterable[np.ndarray], nibbles: Iterable[str] = ()):
    """ONNX Runtime's static QDQ quantizer over the nodes whose weight is quantized, keeping
    the trial's codes (scales given as overrides); ``nibbles``: the 4-bit MatMul weights, whose
    layers take float inputs. Returns (model, weight nodes quantized)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    # Layers not at <= 8 bits stay float; the ops between layers (pooling, reshapes, adds) are
    # quantized where an integer layer feeds them, so no float island splits two integer kernels,
    # and stay float after a float layer (a uint8 MaxPool in NCHW took 157 us where the float one
    # took 4 us, fused into the convolution before it).
    layers = [n for n in proto.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1]
    targets = [n.name for n in layers if n.input[1] in weights]
    excluded = [n.name for n in layers if n.input[1] not in weights] + fed_by_float(proto, set(weights)) + feeding_only(proto, set(nibbles))
    excluded += [n.name for n in proto.graph.node if n.op_type in FLOAT_OPS]
    axes = channel_axes(proto)
    overrides = {
        name: [{"scale": np.float32(s), "zero_point": np.int8(0), "axis": axes.get(name, 0)} for s in scale] for name, (_, scale) in weights.items()
    }

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{INPUT: b} for b in calibration])

        def get_next(self):
            return next(self._batches, None)

    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(src))
        try:
            root.setLevel(logging.ERROR)  # the quantizer advises pre-processing on the root logger
            # uint8 activations with int8 weights (U8S8): ORT's x86 CPU kernels fuse every conv, add
            # and gemm of a ResNet into integer kernels this way (with int8 activations ~half stay
            # float). Asymmetric, so a ReLU folds into the range instead of staying a float op.
            # The codes stay within [-127, 127], so VNNI kernels never saturate.
            quantize_static(
                str(src),
                str(dst),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                extra_options={
                    "ActivationSymmetric": False,
                    "WeightSymmetric": True,
                    "TensorQuantOverrides": overrides,
                    "QDQDisableWeightAdjustForInt32Bias": True,  # keep the trial's scales
                },
            )
        finally:
            root.setLevel(level)
        return onnx.load(str(dst)), targets


def _check_codes(proto, weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """The int8 initializers hold the trial's codes exactly (what the quantizer wrote is checked)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    for name, (codes, _) in weights.items():
        stored = inits.get(f"{name}_quantized")
        if stored is not None and not np.array_equal(numpy_helper.to_array(stored), codes):
            raise ExportError(f"weight '{name}': the int8 initializer differs from the trial's codes; this onnxruntime version quantizes differently")


def calibration_batches(x: torch.Tensor, seed: int, batches: int, batch_size: int) -> list[torch.Tensor]:
    """Training inputs for int8 activation ranges: seeded, so a re-export writes the same file."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)[: batches * batch_size].to(x.device)
    return [x[order[i : i + batch_size]].cpu() for i in range(0, len(order), batch_size)]


def to_onnx(
    model: nn.Module,
    plan: CompressionPlan,
    example: torch.Tensor,
    precision: str = "fp32",
    calibration: Iterable[torch.Tensor] = (),
    keep_float: KeepFloat | None = None,
    exported: onnx.ModelProto | None = None,
) -> tuple[bytes, list[str]]:
    """The ONNX file of a baked compressed model, and the weights stored as int8 codes.

    Args:
        example: an input batch (its shape, batch axis aside, is the file's input shape).
        precision: ``fp32`` (integer codes, float activations) or ``int8`` (also quantized
            activations: integer kernels).
        calibration: input batches for the activation ranges (``int8`` only).
        keep_float: ``int8`` only: given the float graph, the weights' codes and the example's
            shape, the weights whose layers should run float kernels (where the runtime's integer
            kernel is slower); those layers ship their float weights.
        exported: ``export_fp32(model, example)`` when the caller has it already (it is
            rewritten in place): the torch exporter is the expensive step.
    """
    if not any(isinstance(m, COMPRESSIBLE_TYPES) for m in model.modules()):
        raise ExportError("the model has no Linear or Conv2d layer to export")
    proto = exported if exported is not None else export_fp32(model, example)
    weights = find_transposed(proto, quantized_weights(model, plan), lambda codes, scale: codes.astype(np.float32) * scale[:, None])
    shared = find_transposed(proto, shared_weights(model, plan), lambda indices, table: table[indices.astype(np.int64)])
    # A table read by Gather (an Embedding) has no integer kernel: its codes ship through
    # DequantizeLinear whatever the precision, and the activation quantizer never sees it.
    read_as_tables = gathered(proto)
    tables = {n: w for n, w in weights.items() if n in read_as_tables}
    weights = {n: w for n, w in weights.items() if n not in tables}
    # A 4-bit MatMul weight in an int8 file ships its codes at 4 bits, blockwise (ONNX Runtime's
    # MatMulNBits reads them as they are), and stays out of the activation quantizer: as int8
    # codes it would take twice the bytes its plan chose.
    narrow = nibble_matmuls(proto, weights) if precision == "int8" else {}
    weights = {n: w for n, w in weights.items() if n not in narrow}
    if precision == "int8" and weights:
        batches = [(b.float() if b.is_floating_point() else b).detach().cpu().numpy() for b in calibration]  # token ids stay integers
        if not batches:
            raise ExportError("int8 export needs calibration batches (training inputs) for the activation ranges")
        floats = set(keep_float(proto, weights, tuple(example.shape))) if keep_float else set()
        weights = {n: w for n, w in weights.items() if n not in floats}
        proto, _ = _int8_activations(proto, weights, batches, narrow)
        _check_codes(proto, weights)
        stored = [n for n in weights if any(i.name == f"{n}_quantized" for i in proto.graph.initializer)]
    else:
        stored = replace_weights(proto, weights, as_qdq)
    stored += replace_weights(proto, narrow, as_blockwise)
    stored += replace_weights(proto, tables, as_qdq)
    stored += replace_weights(proto, shared, as_gather)
    missing = sorted((set(weights) | set(tables) | set(narrow)) - set(stored))
    if missing:  # the exporter renamed or folded these initializers: their codes ship as float
        log.warning("ONNX export: %s kept as float weights (the exporter renamed or folded them)", ", ".join(missing))
    _strip(proto)
    proto.producer_name = "autocompress"
    return proto.SerializeToString(), stored


def _strip(proto) -> None:
    """What the runtimes never read: the exporter's per-node metadata (stack traces with this
    machine's paths, FX node text: a fifth of a small model's file), doc strings and inferred
    shapes of intermediate values (recomputed on load)."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]
    proto.graph.doc_string = ""
