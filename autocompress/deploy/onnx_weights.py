"""How a compressed layer's weights are stored in its ONNX file: integer codes through
``DequantizeLinear`` (INT4 initializers, two codes a byte, for codes of 4 bits or fewer; int8
otherwise), k-means codebooks through ``Cast`` and ``Gather`` (UINT4 or UINT8 indices), on the
output-channel axis of the op that reads them (a Linear on 3-D inputs is a MatMul of [in, out])."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

INT4_OPSET = 21  # INT4 initializers for DequantizeLinear: ONNX Runtime >= 1.18, OpenVINO 2024+
# The ops that read a layer's weight as their second input (one definition for every pass here).
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
Encoded = tuple[list[Any], list[Any], bool]  # initializers, the nodes computing the weight, a 4-bit type used
Encoder = Callable[[str, np.ndarray, np.ndarray, int], Encoded]  # (name, first, second, output-channel axis)


def _int4(name: str, values: np.ndarray):
    """An INT4 initializer (two's complement)."""
    from onnx import TensorProto

    return _packed_nibbles(name, values, TensorProto.INT4)


def _packed_nibbles(name: str, values: np.ndarray, data_type: int):
    """A 4-bit initializer (INT4 or UINT4): two values per byte, the first in the low nibble
    (ONNX's packing, opset 21)."""
    from onnx import helper

    flat = values.reshape(-1).astype(np.int16)
    if flat.size % 2:
        flat = np.append(flat, np.int16(0))
    nibbles = (flat & 0xF).astype(np.uint8)
    return helper.make_tensor(name, data_type, list(values.shape), (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes(), raw=True)


def fits_int4(codes: np.ndarray) -> bool:
    """Codes of 4 bits or fewer (any layer whose codes lie in [-8, 7]): stored as INT4, exactly."""
    return codes.size == 0 or (int(codes.min()) >= -8 and int(codes.max()) <= 7)


def replace_weights(proto, weights: dict[str, tuple[np.ndarray, np.ndarray]], encode: Encoder) -> list[str]:
    """Replace the float weight initializers named in ``weights`` (values whose first array has
    the weight's shape) by what ``encode`` makes of them; nodes go first, which keeps the graph
    topologically sorted, and a 4-bit type raises the opset to 21. Returns the names replaced
    (an initializer the exporter renamed or folded is left as it is)."""
    inits = {i.name: i for i in proto.graph.initializer}
    axes = channel_axes(proto)
    replaced, nodes, four_bit = [], [], False
    for name, (first, second) in weights.items():
        init = inits.get(name)
        if init is None or tuple(init.dims) != first.shape:
            continue
        proto.graph.initializer.remove(init)
        stored, computing, narrow = encode(name, first, second, axes.get(name, 0))
        proto.graph.initializer.extend(stored)
        nodes += computing
        four_bit |= narrow
        replaced.append(name)
    existing = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes + existing)
    if four_bit:
        _require_opset(proto, INT4_OPSET)
    return replaced


def as_qdq(name: str, codes: np.ndarray, scale: np.ndarray, axis: int = 0) -> Encoded:
    """Codes -> DequantizeLinear (per output channel, on ``axis``): INT4 initializers for codes of 4 bits or fewer (opset
    21; ONNX Runtime and OpenVINO read them), int8 for the rest."""
    from onnx import helper, numpy_helper

    zeros = np.zeros(scale.shape, np.int8)
    narrow = fits_int4(codes)
    if narrow:
        quantized, zero_point = _int4(f"{name}_quantized", codes), _int4(f"{name}_zero_point", zeros)
    else:
        quantized, zero_point = numpy_helper.from_array(codes, f"{name}_quantized"), numpy_helper.from_array(zeros, f"{name}_zero_point")
    node = helper.make_node(
        "DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"], [name], name=f"{name}_DequantizeLinear", axis=axis
    )
    return [quantized, numpy_helper.from_array(scale, f"{name}_scale"), zero_point], [node], narrow


def block_size(rows: int) -> int:
    """The block of a MatMul weight's input rows that one scale covers in ``as_blockwise``: the
    largest power of two within the rows, 16 to 256 (what ONNX Runtime's MatMulNBits takes), or 0
    for fewer than 16 rows."""
    if rows < 16:
        return 0
    return min(256, 1 << (rows.bit_length() - 1))


def fits_blockwise(codes: np.ndarray, axis: int | None) -> bool:
    """Codes ``as_blockwise`` stores: a MatMul's [in, out] (channel axis 1), 16 input rows or
    more, each within 4 bits."""
    return axis == 1 and codes.ndim == 2 and block_size(codes.shape[0]) > 0 and fits_int4(codes)


def as_blockwise(name: str, codes: np.ndarray, scale: np.ndarray, axis: int = 1) -> Encoded:
    """A MatMul's 4-bit codes ([in, out], one scale per output column) -> a blockwise
    DequantizeLinear on the input axis (opset 21), each column's scale repeated over its blocks:
    the same values as ``as_qdq``, in the form ONNX Runtime fuses with its MatMul into a
    MatMulNBits kernel that keeps the weights at 4 bits. An int8 file uses it for 4-bit layers,
    whose per-channel int8 form would double their bytes."""
    from onnx import helper, numpy_helper

    if not fits_blockwise(codes, axis):
        raise ValueError(f"{name}: blockwise INT4 takes a MatMul's [in, out] 4-bit codes of 16 rows or more")
    block = block_size(codes.shape[0])
    blocks = -(-codes.shape[0] // block)
    scales = np.ascontiguousarray(np.broadcast_to(scale.astype(np.float32)[None, :], (blocks, codes.shape[1])))
    node = helper.make_node(
        "DequantizeLinear", [f"{name}_quantized", f"{name}_scale"], [name], name=f"{name}_DequantizeLinear", axis=0, block_size=block
    )
    return [_int4(f"{name}_quantized", codes), numpy_helper.from_array(scales, f"{name}_scale")], [node], True


def as_gather(name: str, indices: np.ndarray, table: np.ndarray, axis: int = 0) -> Encoded:
    """A k-means layer's codebook (a float table) and indices (UINT4 for a table of 16 values or
    fewer, else UINT8) -> Cast -> Gather."""
    from onnx import TensorProto, helper, numpy_helper

    narrow = table.size <= 16
    packed = _packed_nibbles(f"{name}_indices", indices, TensorProto.UINT4) if narrow else numpy_helper.from_array(indices, f"{name}_indices")
    nodes = [
        helper.make_node("Cast", [f"{name}_indices"], [f"{name}_indices_int32"], name=f"{name}_Cast", to=TensorProto.INT32),
        helper.make_node("Gather", [f"{name}_codebook", f"{name}_indices_int32"], [name], name=f"{name}_Gather", axis=0),
    ]
    return [packed, numpy_helper.from_array(table, f"{name}_codebook")], nodes, narrow


def channel_axes(proto) -> dict[str, int]:
    """The output-channel axis of each weight initializer, from the op reading it: 0 for Conv
    and Gemm with transB (PyTorch's layout), 1 for MatMul and Gemm without (the exporter stores
    a Linear applied to 3-D inputs transposed, as MatMul's [in, out])."""
    axes: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes.setdefault(node.input[1], 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else 1)
    return axes


def find_transposed(
    proto, weights: dict[str, tuple[np.ndarray, np.ndarray]], values: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Weights the exporter stored transposed under a name of its own (a Linear on 3-D inputs
    becomes a MatMul of [in, out]): each such initializer whose values are exactly a 2-D
    weight's (``values(first, second)``) transposed takes the weight's name, and its entry
    the transposed layout (``first.T``). Others are returned unchanged."""
    from onnx import numpy_helper

    named = {i.name for i in proto.graph.initializer}
    missing = {n: w for n, w in weights.items() if n not in named and w[0].ndim == 2}
    if not missing:
        return weights
    found = dict(weights)
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if init is None or init.name in weights:
            continue
        for name, (first, second) in list(missing.items()):
            if tuple(init.dims) == first.T.shape and np.array_equal(numpy_helper.to_array(init), values(first, second).T):
                for other in proto.graph.node:  # the weight's own name, read by every op that read it
                    other.input[:] = [name if i == init.name else i for i in other.input]
                init.name = name
                found[name] = (np.ascontiguousarray(first.T), second)
                del missing[name]
                break
    return found


def _require_opset(proto, version: int) -> None:
    """Raise the default domain's opset to ``version``: the ops the exporter writes at 20 keep
    their meaning at 21 (21 added the 4-bit types)."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < version:
            entry.version = version
    if proto.ir_version < 10:  # INT4 arrived with IR version 10
        proto.ir_version = 10
