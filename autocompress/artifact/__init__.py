"""The packed artifact: the compressed model as it ships, and the size objective's bytes.

Layout (format 2)::

    b"ACZ2" | codec byte | codec( u32 header length | header JSON | payload )

The codec is zlib (0) or LZMA2 (1): both are in Python's standard library, and LZMA's adaptive
range coder is the entropy coder for the code and index streams (``benchmarks/techniques.py``
measures them against zstd and an order-0 ANS coder on real artifacts). Format 1 (``b"ACZ1" | zlib(...)``, bit-packed streams) is
still read.

The header holds the task spec (model name, classes, input shape), the plan, the structure
needed to rebuild the module (factorization ranks come from the plan; removed channels are
listed) and a table of tensors. Each tensor is stored as:

* ``codes``: integer codes of a uniformly quantized weight, offset to unsigned, in the cheapest
  of the dense / bitmask / relative-index encodings (see ``size.py``), plus one float16 scale per
  output channel;
* ``shared``: codebook indices of a weight-shared (k-means) weight in the same encodings, plus
  the float16 codebook (index i > 0 is ``codebook[i - 1]``; 0 is zero);
* ``sparse``: an unquantized weight's float32 nonzeros in the cheapest encoding;
* ``raw``: any other tensor (biases, norms, buffers) as little-endian bytes of its dtype; a
  quantized layer's bias is float16, the precision its model was evaluated at.

Code and relative-index streams are laid out as the header's ``packing`` says: ``bytes``, one
symbol per byte (two, little-endian, past 8 bits), which an entropy coder models well, or
``bits``, packed at their width as in format 1, which starts smaller. ``pack`` writes both
layouts under both codecs and keeps the smallest file (``benchmarks/techniques.py`` measures
what each choice wins); a body over 8 MiB is sealed with zlib alone (LZMA2 is slow there).

Loading never unpickles anything: the header is JSON, tensors are rebuilt from raw bytes, and
every offset and length is checked against the payload.

Rooms: ``format`` (constants and limits), ``streams`` (bit streams, masks), ``codec`` (zlib,
LZMA2, bounded inflation), ``header`` (the header read and checked, no torch: ``Artifact``),
``packer`` (``pack``), ``loader`` (decode, rebuild, ``load``). Names are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Artifact": "header",
    "ArtifactError": "header",
    "PACKINGS": "format",
    "pack_symbols": "streams",
    "unpack_symbols": "streams",
    "unpack_uint": "streams",
    "Build": "loader",
    "CODECS": "format",
    "FORMAT_VERSION": "format",
    "MAGIC": "format",
    "MAGIC_V1": "format",
    "Packed": "format",
    "check_header": "header",
    "codec_of": "codec",
    "decode_tensors": "loader",
    "index_mask": "streams",
    "load": "loader",
    "loads": "loader",
    "mask_indices": "streams",
    "pack": "packer",
    "pack_uint": "streams",
    "read_file": "loader",
    "read_header": "header",
    "rebuild": "loader",
    "seal": "codec",
}

__all__ = [
    "CODECS",
    "FORMAT_VERSION",
    "MAGIC",
    "MAGIC_V1",
    "PACKINGS",
    "Artifact",
    "ArtifactError",
    "Build",
    "Packed",
    "check_header",
    "codec_of",
    "decode_tensors",
    "index_mask",
    "load",
    "loads",
    "mask_indices",
    "pack",
    "pack_symbols",
    "pack_uint",
    "read_file",
    "read_header",
    "rebuild",
    "seal",
    "unpack_symbols",
    "unpack_uint",
]

if TYPE_CHECKING:
    from autocompress.artifact.codec import codec_of, seal
    from autocompress.artifact.format import CODECS, FORMAT_VERSION, MAGIC, MAGIC_V1, PACKINGS, Packed
    from autocompress.artifact.header import Artifact, ArtifactError, check_header, read_header
    from autocompress.artifact.loader import Build, decode_tensors, load, loads, read_file, rebuild
    from autocompress.artifact.packer import pack
    from autocompress.artifact.streams import index_mask, mask_indices, pack_symbols, pack_uint, unpack_symbols, unpack_uint


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autocompress.artifact' has no attribute {name!r}")
    return getattr(importlib.import_module(f"autocompress.artifact.{_EXPORTS[name]}"), name)
