"""The artifact's format: its signature, codecs, stream layouts, tensor kinds, and the limits a
reader holds every file to. Constants only (no torch): every room of the package reads them.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"ACZ2"
MAGIC_V1 = b"ACZ1"  # format 1: zlib, bit-packed streams; still read
FORMAT_VERSION = 2
READ_FORMATS = (1, 2)
CODECS = ("zlib", "lzma")  # the codec byte is the index
# Raw LZMA2 without literal context bits: the streams are symbols, not text.
# A 16 MiB dictionary: what the decoder allocates, whatever the file's size.
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 16 << 20, "lc": 0, "lp": 0, "pb": 0}]
MAX_HEADER_BYTES = 64 << 20  # a ResNet-152's header is under 1 MB
MAX_TENSORS = 100_000
MAX_TENSOR_VALUES = 1 << 34
MAX_CLASSES = 1 << 17  # ImageNet-21k has 21,841
MAX_INPUT_VALUES = 1 << 22  # values in one input the rebuild traces (3 x 1024 x 1024 is 3.1 M)
MAX_INDEX_BITS = 8  # the widest relative-index encoding (size.MAX_INDEX_BITS)
# What a file's bytes may claim. A real payload compresses a few times at most (codes and floats
# are near random), so more than 1024 bytes of payload per file byte is a lie; and a model packs
# at most a few hundred weights per byte (2-bit codes at 99% sparsity: about 100), so a header
# whose model would hold more than 256 values per file byte (or 16 M for a small file) is refused
# before that model is built.
PAYLOAD_PER_FILE_BYTE = 1024
VALUES_PER_FILE_BYTE = 256
MIN_VALUES_CAP = 1 << 24


# The architecture is built before its channels are removed: a model pruned to 25% of its
# channels in every layer keeps about 1/16 of its weights, so its skeleton may hold that many
# times the file's own cap.
SKELETON_FACTOR = 16


def values_cap(file_bytes: int) -> int:
    """The most weights and buffers a file of this size may declare."""
    return max(MIN_VALUES_CAP, VALUES_PER_FILE_BYTE * file_bytes)


def skeleton_cap(file_bytes: int) -> int:
    """The most values the architecture a file names may hold before its plan's structure
    (removed channels, factorized layers) is applied."""
    return max(MIN_VALUES_CAP, SKELETON_FACTOR * VALUES_PER_FILE_BYTE * file_bytes)


# LZMA2 runs at about 1 MB/s here: past this body size (a float ResNet's 45 MB took 48 s) zlib
# alone seals the file; LZMA2's gain on such bodies, mostly float32, is about 1%.
LZMA_MAX_BODY = 8 << 20
MAX_FILE_BYTES = 4 << 30  # what load() reads of a file at most
READ_CHUNK = 1 << 20  # a stream (a pipe, a device) is read this much at a time, never a cap reserved
KINDS = ("raw", "codes", "shared", "sparse", "float")
DTYPE_BYTES = {"float32": 4, "float16": 2, "int64": 8, "bfloat16": 2}  # what a raw tensor may be stored as
DTYPE_NAMES = tuple(DTYPE_BYTES)
PACKINGS = ("bytes", "bits")  # a symbol per byte (format 2's default), or bit-packed at its width


@dataclass
class Packed:
    """A packed model: the artifact's bytes and the bytes each layer took before the codec."""

    data: bytes
    per_layer: dict[str, int] = field(default_factory=dict)
    # Per compressed layer (``size.layer_rows``): type, bits, params, sparsity, encoding, bytes.
    rows: list[dict[str, Any]] = field(default_factory=list)
