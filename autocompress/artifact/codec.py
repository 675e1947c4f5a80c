"""The codecs around a body (zlib, raw LZMA2) and bounded reads from them."""

from __future__ import annotations

import lzma
import zlib

from autocompress.artifact.format import CODECS, LZMA_FILTERS, MAGIC


def seal(body: bytes, codec: str = "zlib") -> bytes:
    """The file around an uncompressed body: magic, codec byte, the body through the codec."""
    squeezed = zlib.compress(body, 9) if codec == "zlib" else lzma.compress(body, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    return MAGIC + bytes([CODECS.index(codec)]) + squeezed


def codec_of(data: bytes) -> str:
    """The codec a file was sealed with (format 1 files are zlib)."""
    return CODECS[data[len(MAGIC)]] if data.startswith(MAGIC) else "zlib"


class Inflater:
    """Bounded reads from a zlib or LZMA2 stream: ``read(n)`` never inflates more than n bytes,
    so a bomb costs what its header declares, not what it expands to."""

    def __init__(self, codec: str, data: bytes) -> None:
        self.codec = codec
        self.pending = data
        self.z = zlib.decompressobj() if codec == "zlib" else None
        self.x = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=LZMA_FILTERS) if codec == "lzma" else None

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            if self.z is not None:
                chunk = self.z.decompress(self.pending, n - len(out))
                self.pending = self.z.unconsumed_tail
            else:
                assert self.x is not None
                if self.x.eof:
                    break
                src, self.pending = (self.pending, b"") if self.x.needs_input else (b"", self.pending)
                chunk = self.x.decompress(src, n - len(out))
            out += chunk
            if not chunk and (not self.pending or self.eof):
                break
        return out

    @property
    def eof(self) -> bool:
        return self.z.eof if self.z is not None else bool(self.x and self.x.eof)

    @property
    def more(self) -> bool:
        """Whether input remains that could inflate to more output."""
        if self.z is not None:
            return bool(self.pending) or bool(self.z.unused_data)
        assert self.x is not None
        return bool(self.pending) or not self.x.needs_input or bool(self.x.unused_data)
