"""Reading a file's header: the signature, the codec, the JSON header checked against its
schema, and the payload inflated only as far as the header declares. No torch: ``inspect``
and every reader start here, and the ``Artifact`` it returns is handed on, read once."""

from __future__ import annotations

import json
import lzma
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autocompress.artifact.codec import Inflater
from autocompress.artifact.format import (
    CODECS,
    MAGIC,
    MAGIC_V1,
    MAX_HEADER_BYTES,
    PAYLOAD_PER_FILE_BYTE,
    READ_FORMATS,
    VALUES_PER_FILE_BYTE,
    skeleton_cap,
    values_cap,
)
from autocompress.artifact.schema import SPANS, Invalid, validate
from autocompress.artifact.streams import mask_indices
from autocompress.errors import ArtifactError


@dataclass(frozen=True)
class Artifact:
    """A file read once: its checked header and payload, the file's size, and what to call it in
    messages."""

    header: dict[str, Any]
    payload: bytes
    source: str = "artifact"
    file_bytes: int = 0

    @classmethod
    def read(cls, data: bytes, source: str = "artifact") -> Artifact:
        header, payload = read_header(data, source)
        return cls(header, payload, source, len(data))

    @property
    def skeleton_cap(self) -> int:
        """The most values the architecture this file names may hold (``format.skeleton_cap``)."""
        return skeleton_cap(self.file_bytes)


def read_header(data: bytes, source: str = "artifact", payload: bool = True) -> tuple[dict[str, Any], bytes]:
    """Check the magic, decompress with a size cap, parse and check the JSON header, then
    inflate the payload (with ``payload=False``, as ``inspect`` reads, nothing past the header)."""
    header, rest = open_file(data, source)
    return header, rest() if payload else b""


def open_file(data: bytes, source: str = "artifact") -> tuple[dict[str, Any], Callable[[], bytes]]:
    """The checked header, and what inflates the payload when called (once).

    Decompression is bounded twice: the header comes first (at most MAX_HEADER_BYTES), and the
    payload is then inflated only up to the size the header's own tensor table declares, which
    each tensor's shape bounds and which may not exceed what the file's bytes can honestly hold.
    A bomb is refused after reading its header, not after inflating gigabytes; a caller that can
    check the header against more (``loads``: the model it builds) does so before inflating.
    """
    if data.startswith(MAGIC) and len(data) > len(MAGIC) and data[len(MAGIC)] < len(CODECS):
        codec, stream, version = CODECS[data[len(MAGIC)]], data[len(MAGIC) + 1 :], 2
    elif data.startswith(MAGIC_V1):
        codec, stream, version = "zlib", data[len(MAGIC_V1) :], 1
    else:
        raise ArtifactError(f"{source} is not an autocompress artifact (no ACZ signature): export one with 'autocompress export'")
    corrupt = (zlib.error, lzma.LZMAError, EOFError)
    inflater = Inflater(codec, stream)
    ends_early = ArtifactError(f"{source} is truncated or corrupt (the compressed stream ends early): re-export it")
    try:
        head = inflater.read(4)
        if len(head) < 4:
            raise ends_early
        (head_len,) = struct.unpack("<I", head)
        if head_len > MAX_HEADER_BYTES:
            raise ArtifactError(
                f"{source} declares a {head_len}-byte header, over the {MAX_HEADER_BYTES} this version reads: it is not a real artifact"
            )
        text = inflater.read(head_len)
    except corrupt:
        raise ArtifactError(f"{source} is corrupt (bad compressed data): re-export it") from None
    if len(text) < head_len:
        raise ends_early
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ArtifactError(f"{source} has a corrupt header: re-export it") from None
    check_header(header, source)
    if header["format"] != version:
        raise ArtifactError(f"{source} has a corrupt header (format {header['format']} in a format {version} file): re-export it")
    values = sum(math.prod(t["shape"]) for t in header["tensors"])
    if values > values_cap(len(data)):
        raise ArtifactError(
            f"{source} declares {values} weight values in {len(data)} bytes, more than any packed model holds "
            f"({VALUES_PER_FILE_BYTE} per byte): it is not a real artifact"
        )
    declared = payload_bytes(header)
    if declared > PAYLOAD_PER_FILE_BYTE * len(data):
        raise ArtifactError(
            f"{source} declares {declared} bytes of tensors, more than its {len(data)} compressed bytes can hold: it is not a real artifact"
        )
    header["channels_removed"] = {k: mask_indices(v) for k, v in header.setdefault("channels_removed", {}).items()}
    header.setdefault("bn_folded", {})

    def rest() -> bytes:
        try:
            body = inflater.read(declared)
            # A real file ends where its header says: one more byte of output means it does not.
            if inflater.more and inflater.read(1):
                raise ArtifactError(f"{source} holds more data than its header declares: it is not a real artifact; re-export it")
        except corrupt:
            raise ArtifactError(f"{source} is corrupt (bad compressed data): re-export it") from None
        if len(body) < declared or not inflater.eof:
            raise ArtifactError(f"{source} is truncated or corrupt (the compressed stream ends early): re-export it")
        return body

    return header, rest


def payload_bytes(header: dict[str, Any]) -> int:
    """The payload's length as the header's tensor table declares it."""
    return max((t[k][0] + t[k][1] for t in header["tensors"] for k in SPANS if k in t), default=0)


def check_header(header: Any, source: str = "artifact") -> None:
    """The header against its schema (``artifact.schema``), before anything is built from it:
    every failure is one ArtifactError naming the field."""
    if isinstance(header, dict) and "format" in header and header["format"] not in READ_FORMATS:
        raise ArtifactError(f"{source} has format {header.get('format')!r}; this version reads formats {', '.join(map(str, READ_FORMATS))}")
    try:
        validate(header)
    except Invalid as bad:
        field = bad.field or "the header"
        raise ArtifactError(f"{source} has a corrupt header ({field} {bad.why}): it is not a file autocompress wrote; re-export it") from None
