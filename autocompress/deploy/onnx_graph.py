"""Walks over an exported ONNX graph that decide how an int8 file is quantized: which ops no
integer layer feeds, which feed only 4-bit MatMuls, which weights are tables or 4-bit MatMul
weights, and which layers OpenVINO must keep float."""

from __future__ import annotations

from typing import Any

import numpy as np

from autocompress.deploy.onnx_weights import WEIGHTED_OPS, channel_axes, fits_blockwise

# Ops kept out of the activation quantizer wherever they are. An attention's softmax in uint8 is
# coarse (probabilities on 256 levels) and slow: on a small ViT (width 128, 50 tokens, 1 thread,
# batch 32) ONNX Runtime ran its uniform 8-bit plan 1.43x its fp32 model with softmax in float,
# 1.09x with softmax quantized (the products around it then run MatMulIntegerToFloat).
FLOAT_OPS = ("Softmax",)


def fed_by_float(proto, integer_weights: set[str]) -> list[str]:
    """The names of the weightless ops that no integer layer feeds (through other ops): the graph
    is walked in its topological order, integer-ness flowing from integer layers' outputs."""
    inits = {i.name for i in proto.graph.initializer}
    integer: set[str] = set()  # tensors an integer layer computes, directly or through weightless ops
    excluded = []
    for node in proto.graph.node:
        weighted = node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits
        if weighted:
            fed = node.input[1] in integer_weights
        else:
            fed = any(i in integer for i in node.input)
            if not fed:
                excluded.append(node.name)
        if fed:
            integer.update(node.output)
    return excluded


def feeding_only(proto, nibbles: set[str]) -> list[str]:
    """The weightless ops whose outputs reach only MatMuls of 4-bit weights (an MLP's norm and
    activation): ONNX Runtime fuses such a MatMul into MatMulNBits only when its input is float, and
    with a quantized one it dequantizes the weights on every call (14% slower here)."""
    consumers: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in proto.graph.output}
    bound = {n.name for n in proto.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in nibbles}
    found = []
    for node in reversed(proto.graph.node):  # consumers before producers
        if node.name in bound or (node.op_type in WEIGHTED_OPS and len(node.input) > 1) or outputs.intersection(node.output):
            continue
        after = [c for o in node.output for c in consumers.get(o, [])]
        if after and all(c.name in bound for c in after):
            bound.add(node.name)
            found.append(node.name)
    return found


def nibble_matmuls(proto, weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The weights of ``weights`` with 4-bit codes that only MatMuls read as [in, out] (16 input
    rows or more): the ones ``as_blockwise`` stores."""
    readers: dict[str, set[str]] = {}
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in weights:
                readers.setdefault(name, set()).add(node.op_type if i == 1 else "other")
    axes = channel_axes(proto)
    return {n: w for n, w in weights.items() if readers.get(n) == {"MatMul"} and fits_blockwise(w[0], axes.get(n))}


_LAYOUT_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Expand", "Tile")


def joined_to_learned_tokens(proto, weights: dict[str, Any], input_shape: tuple[int, ...] = ()) -> list[str]:
    """``keep_float`` for OpenVINO: the layers whose output, only reshaped, is concatenated with a
    learned tensor (a ViT's patch embedding joined to its class token). OpenVINO 2026.4 computes
    such a layer wrongly at int8 (0.2 of error on a toy model where ONNX Runtime's error is 0.002,
    also when ONNX Runtime's own quantizer quantizes that layer alone); in float it agrees."""
    made = {o: n for n in proto.graph.node for o in n.output}
    inits = {i.name for i in proto.graph.initializer}

    def source(tensor: str) -> str | None:
        """The weight of the layer computing ``tensor`` through layout ops, "learned" for an
        initializer reached so, else None."""
        while tensor not in inits:
            node = made.get(tensor)
            if node is None:
                return None
            if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in weights:
                return node.input[1]
            if node.op_type not in _LAYOUT_OPS or not node.input:
                return None
            tensor = node.input[0]
        return "learned"

    kept: list[str] = []
    for node in proto.graph.node:
        if node.op_type == "Concat":
            sources = [source(i) for i in node.input]
            if "learned" in sources:
                kept += [s for s in sources if s not in (None, "learned")]
    return kept


def gathered(proto) -> set[str]:
    """Initializers read as the table of a Gather (an Embedding's weight)."""
    return {n.input[0] for n in proto.graph.node if n.op_type == "Gather" and n.input}
