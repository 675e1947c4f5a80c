"""Packing: a compressed, evaluated model into the artifact's bytes, the smallest of every
layout under every codec, with the bytes each layer took."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress import compress
from autocompress.artifact.codec import seal
from autocompress.artifact.format import CODECS, DTYPE_NAMES, FORMAT_VERSION, LZMA_MAX_BODY, PACKINGS, Packed
from autocompress.artifact.streams import encode_positions, index_mask, packer
from autocompress.errors import ArtifactError
from autocompress.plan import FULL_PRECISION_BITS, CompressionPlan
from autocompress.size import WeightCodes, encoded_bits, layer_rows, weight_codes


class Payload:
    """The payload being written: each stream appended, its [offset, length] returned."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def add(self, data: bytes) -> list[int]:
        offset = self.buf.tell()
        self.buf.write(data)
        return [offset, len(data)]


def _pack_weight(
    values: torch.Tensor,
    bits: int,
    scale: torch.Tensor | None,
    payload: Payload,
    codebook: torch.Tensor | None = None,
    packing: str = "bytes",
    encoding: str | None = None,
) -> dict[str, Any]:
    flat = values.detach().reshape(-1).cpu()
    encoding = encoding or encoded_bits(flat, bits)[1]
    entry: dict[str, Any] = {"enc": encoding, "bits": bits}
    nonzero = (flat != 0).numpy()
    if encoding in ("dense", "empty"):
        stored = flat.numpy() if encoding == "dense" else np.zeros(0)
        positions = None
    else:
        index, positions = encode_positions(nonzero, encoding, packing)
        entry["index"] = payload.add(index)
        entry["n"] = int(positions.size)
        stored = flat.numpy()[positions]
    if codebook is not None:
        entry["kind"] = "shared"
        entry["values"] = payload.add(packer(packing)(stored.astype(np.int64), bits))
        entry["codebook"] = payload.add(codebook.detach().cpu().numpy().astype("<f2").tobytes())
    elif scale is not None:
        qmax = 2 ** (bits - 1) - 1
        entry["kind"] = "codes"
        entry["values"] = payload.add(packer(packing)(stored.astype(np.int64) + qmax, bits))
        entry["scale"] = payload.add(scale.numpy().astype("<f2").tobytes())
    else:
        entry["kind"] = "sparse" if positions is not None else "float"
        entry["values"] = payload.add(stored.astype("<f4").tobytes())
    return entry


def pack(model: nn.Module, plan: CompressionPlan, task: dict[str, Any], structure: dict[str, dict] | None = None) -> Packed:
    """Pack a (compressed, evaluated) model. Bakes its masks and quantizers in place.

    Args:
        model: the model as evaluated, parametrizations attached (or a plain baseline).
        plan: the plan it was compressed with (ranks rebuild the factorized layers).
        task: ``{"model", "num_classes", "input_shape", ...}``: what rebuilds the module.
        structure: ``compress.structure(model)``: removed channels and folded BatchNorms.
    """
    model.eval()
    # Each weight's codes and cheapest encoding, once: the per-layer rows and every layout use them.
    codes: dict[int, WeightCodes] = {id(layer): weight_codes(layer) for layer in compress.compressible_layers(model).values()}
    chosen = {key: encoded_bits(wc.values.detach().reshape(-1).cpu(), wc.bits)[1] for key, wc in codes.items()}
    rows = layer_rows(model, codes, chosen)
    half_bias = {id(m) for m in model.modules() if parametrize.is_parametrized(m, "bias")}  # quantized layers' biases
    compress.bake(model)
    owner = {}
    half = set()
    for name, module in model.named_modules():
        if isinstance(module, compress.COMPRESSIBLE_TYPES):
            owner[f"{name}.weight" if name else "weight"] = module
            if id(module) in half_bias:
                half.add(f"{name}.bias" if name else "bias")
    layer_of = _layer_names(model)
    state = model.state_dict()
    encodings: dict[str, str] = {}  # chosen once: the same in every layout
    candidates = []
    # Which layout entropy-codes smaller depends on the tensors (bytes expose the symbols to the
    # coder's statistics; bits start smaller): every layout under every codec, the smallest kept.
    for packing in PACKINGS:
        payload = Payload()
        tensors: list[dict[str, Any]] = []
        per_layer: dict[str, int] = {}
        for key, tensor in state.items():
            start = payload.buf.tell()
            module = owner.get(key)
            if module is not None:
                found = codes.get(id(module))
                quantized = found is not None and found.bits < FULL_PRECISION_BITS
                if key not in encodings:
                    encodings[key] = chosen.get(id(module)) or encoded_bits(tensor.detach().reshape(-1).cpu(), FULL_PRECISION_BITS)[1]
                if quantized and found is not None:
                    entry = _pack_weight(found.values, found.bits, found.scale, payload, found.codebook, packing, encodings[key])
                else:
                    entry = _pack_weight(tensor, FULL_PRECISION_BITS, None, payload, packing=packing, encoding=encodings[key])
            else:
                if key in half:
                    tensor = tensor.half()  # exactly what the evaluated model used (compress.quantize.HalfBias)
                dtype = str(tensor.dtype).removeprefix("torch.")
                if dtype not in DTYPE_NAMES:
                    raise ArtifactError(f"tensor '{key}' has dtype {dtype}, which the artifact format does not store")
                entry = {"kind": "raw", "dtype": dtype, "values": payload.add(_raw_bytes(tensor))}
            entry["name"] = key
            entry["shape"] = list(tensor.shape)
            tensors.append(entry)
            layer = layer_of(key)
            if layer is not None:
                per_layer[layer] = per_layer.get(layer, 0) + payload.buf.tell() - start
        header = {
            "format": FORMAT_VERSION,
            "packing": packing,
            "task": task,
            "plan": plan.to_dict(),
            "channels_removed": {k: index_mask(v) for k, v in (structure or {}).get("channels_removed", {}).items()},
            "bn_folded": (structure or {}).get("bn_folded", {}),
            **({"canonical": True} if compress.is_canonical(model) else {}),
            "tensors": tensors,
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        body = struct.pack("<I", len(head)) + head + payload.buf.getvalue()
        codecs = CODECS if len(body) <= LZMA_MAX_BODY else ("zlib",)
        candidates += [Packed(seal(body, codec), per_layer) for codec in codecs]
        if not any(t["kind"] in ("codes", "shared") or str(t.get("enc", "")).startswith("relative-index-") for t in tensors):
            break  # no code or index stream: every layout is the same file
    best = min(candidates, key=lambda p: len(p.data))
    best.rows = [{**row, "bytes": best.per_layer.get(row["layer"], 0)} for row in rows]
    return best


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()


def _layer_names(model: nn.Module) -> Callable[[str], str | None]:
    """The compressible layer a state-dict key belongs to (the longest name that prefixes it)."""
    names = sorted(compress.layer_map(model), key=len, reverse=True)

    def layer_of(key: str) -> str | None:
        for n in names:
            if key.startswith(f"{n}."):
                return n
        return None

    return layer_of
