"""Bit streams: codes and sparse indices as bytes (a symbol per byte, or bit-packed at their
width), and removed channels as a hex bitmask. NumPy only."""

from __future__ import annotations

import numpy as np

from autocompress.errors import ArtifactError


def pack_uint(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers < 2**bits, little-endian bit order, ``bits`` bits each."""
    if values.size == 0:
        return b""
    shifts = np.arange(bits, dtype=np.uint64)
    planes = (values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_uint(data: bytes, bits: int, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * bits]
    if flat.size < count * bits:
        raise ArtifactError("artifact is truncated: a tensor's packed bits end early; re-export it")
    planes = flat.reshape(count, bits).astype(np.int64)
    return (planes << np.arange(bits, dtype=np.int64)).sum(axis=1)


def pack_symbols(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers < 2**bits, one byte each (two, little-endian, past 8 bits)."""
    return values.astype("<u2" if bits > 8 else np.uint8).tobytes()


def unpack_symbols(data: bytes, bits: int, count: int) -> np.ndarray:
    width = 2 if bits > 8 else 1
    if len(data) < count * width:
        raise ArtifactError("artifact is truncated: a tensor's symbols end early; re-export it")
    values = np.frombuffer(data[: count * width], dtype="<u2" if width == 2 else np.uint8).astype(np.int64)
    if values.size and int(values.max()) >> bits:
        raise ArtifactError(f"artifact is corrupt: a symbol is wider than its {bits} bits; re-export it")
    return values


def packer(packing: str):
    return pack_symbols if packing == "bytes" else pack_uint


def encode_positions(flat_nonzero: np.ndarray, encoding: str, packing: str = "bytes") -> tuple[bytes, np.ndarray]:
    """Sparse index bytes and the positions of the entries to store (fillers included)."""
    positions = np.flatnonzero(flat_nonzero)
    if encoding == "bitmask":
        return np.packbits(flat_nonzero.astype(np.uint8), bitorder="little").tobytes(), positions
    index_bits = int(encoding.rsplit("-", 1)[1])
    cap = 2**index_bits - 1
    gaps = np.diff(positions, prepend=-1) - 1  # zeros before each nonzero
    fillers = gaps // (cap + 1)  # a filler entry stores a zero after `cap` skipped zeros
    group_end = np.cumsum(fillers + 1) - 1  # index of each real entry among all entries
    skips = np.full(int(group_end[-1]) + 1 if group_end.size else 0, cap, dtype=np.int64)
    skips[group_end] = gaps - fillers * (cap + 1)
    entries = np.cumsum(skips + 1) - 1
    return packer(packing)(skips, index_bits), entries


def decode_positions(index: bytes, encoding: str, numel: int, entries: int, symbols: bool = True) -> np.ndarray:
    if encoding == "bitmask":
        mask = np.unpackbits(np.frombuffer(index, dtype=np.uint8), bitorder="little")[:numel]
        return np.flatnonzero(mask)
    index_bits = int(encoding.rsplit("-", 1)[1])
    skips = (unpack_symbols if symbols else unpack_uint)(index, index_bits, entries)
    positions = np.cumsum(skips + 1) - 1
    if positions.size and positions[-1] >= numel:
        raise ArtifactError("artifact is corrupt: a sparse index points past its tensor; re-export it")
    return positions


def index_mask(indices: list[int]) -> str:
    """Removed channel indices as a hex bitmask: a few bytes where a list of numbers took hundreds."""
    if not indices:
        return ""
    bits = np.zeros(max(indices) + 1, dtype=np.uint8)
    bits[list(indices)] = 1
    return np.packbits(bits, bitorder="little").tobytes().hex()


def mask_indices(mask: str) -> list[int]:
    return np.flatnonzero(np.unpackbits(np.frombuffer(bytes.fromhex(mask), dtype=np.uint8), bitorder="little")).tolist()
