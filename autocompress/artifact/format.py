"""The artifact's format: its signature, codecs, stream layouts, tensor kinds, and the limits a
reader holds every file to. Constants only (no torch): every room of the package reads them.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass, field
from typing import Any

from autocompress.plan import LayerPlan

MAGIC = b"ACZ2"
MAGIC_V1 = b"ACZ1"  # format 1: zlib, bit-packed streams; still read
FORMAT_VERSION = 2
READ_FORMATS = (1, 2)
CODECS = ("zlib", "lzma")  # the codec byte is the index
# Raw LZMA2 without literal context bits: the streams are symbols, not text.
# A 16 MiB dictionary: what the decoder allocates, whatever the file's size.
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 16 << 20, "lc": 0, "lp": 0, "pb": 0}]
MAX_UNPACKED_BYTES = 4 << 30  # refuse decompression bombs
MAX_HEADER_BYTES = 64 << 20  # a ResNet-152's header is under 1 MB
MAX_HEADER_DEPTH = 8  # the deepest real header nests 5 levels
MAX_TENSORS = 100_000
MAX_TENSOR_VALUES = 1 << 34
ZLIB_MAX_RATIO = 1100  # deflate expands a byte to at most ~1032: more declared is a lie
# LZMA2 runs at about 1 MB/s here: past this body size (a float ResNet's 45 MB took 48 s) zlib
# alone seals the file; LZMA2's gain on such bodies, mostly float32, is about 1%.
LZMA_MAX_BODY = 8 << 20
LZMA_MAX_RATIO = 1 << 16  # LZMA2 expands runs far further; max_length still bounds each read
MAX_FILE_BYTES = 4 << 30  # what load() reads of a file at most
ENCODINGS = ("dense", "empty", "bitmask")
KINDS = ("raw", "codes", "shared", "sparse", "float")
PLAN_KEYS = set(LayerPlan.__dataclass_fields__)
DTYPE_NAMES = ("float32", "float16", "int64", "bfloat16")  # what a raw tensor may be stored as
PACKINGS = ("bytes", "bits")  # a symbol per byte (format 2's default), or bit-packed at its width


@dataclass
class Packed:
    """A packed model: the artifact's bytes and the bytes each layer took before the codec."""

    data: bytes
    per_layer: dict[str, int] = field(default_factory=dict)
    # Per compressed layer (``size.layer_rows``): type, bits, params, sparsity, encoding, bytes.
    rows: list[dict[str, Any]] = field(default_factory=list)
