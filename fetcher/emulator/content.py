"""Object content for the emulator: generated on the fly, from bytes, or from a file.

Generated content is deterministic and never periodic: every 64 KiB block starts with the
object's tag and the block number, so a block written at the wrong offset is always caught.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from fetcher import checksum

BLOCK = 64 * 1024
_HEADER = struct.Struct("<8sQ")
# One pseudo-random filler shared by every generated object: the per-block header (object
# tag + block number) is what makes each block unique, so the filler need not be.
_FILLER = random.Random("fetcher-emulator").randbytes(BLOCK - _HEADER.size)


class Content:
    size: int

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def chunks(self, start: int, end: int, chunk: int = 1 << 20) -> list[tuple[int, int]]:
        return [(o, min(chunk, end - o)) for o in range(start, end, chunk)]

    @cached_property
    def crc64(self) -> int:
        crc = 0
        for offset, length in self.chunks(0, self.size, 8 << 20):
            crc = checksum.crc64(self.read(offset, length), crc)
        return crc

    @cached_property
    def md5_etag(self) -> str:
        """An OSS-style ETag: upper-case hex, quoted."""
        h = hashlib.md5(usedforsecurity=False)
        for offset, length in self.chunks(0, self.size, 8 << 20):
            h.update(self.read(offset, length))
        return f'"{h.hexdigest().upper()}"'


@dataclass(eq=False)
class GeneratedContent(Content):
    seed: str
    size: int

    @cached_property
    def _tag(self) -> bytes:
        return hashlib.sha256(self.seed.encode()).digest()[:8]

    def _block(self, index: int) -> bytes:
        return _HEADER.pack(self._tag, index) + _FILLER

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        first, last = offset // BLOCK, (end - 1) // BLOCK
        data = b"".join(self._block(i) for i in range(first, last + 1))
        start = offset - first * BLOCK
        return data[start : start + (end - offset)]

    @cached_property
    def md5_etag(self) -> str:
        # Hashing gigabytes for an ETag would slow every start; OSS ETags are opaque anyway.
        digest = hashlib.md5(f"{self.seed}:{self.size}".encode(), usedforsecurity=False)
        return f'"{digest.hexdigest().upper()}"'


@dataclass(eq=False)
class BytesContent(Content):
    data: bytes

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


@dataclass(eq=False)
class FileContent(Content):
    """A file on disk, as it is now.

    Replaced or rewritten, it is a new object at once: size, ETag and CRC64 follow the file
    (a web server serving it does the same; the CRC64 is computed again only then).
    """

    path: Path
    _crc: tuple[tuple[int, ...], int] | None = field(default=None, init=False, repr=False)

    def _identity(self) -> tuple[int, ...]:
        st = self.path.stat()
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    @property
    def size(self) -> int:  # type: ignore[override]
        return self.path.stat().st_size

    def read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), length, offset)

    @property
    def crc64(self) -> int:
        identity = self._identity()
        if self._crc is None or self._crc[0] != identity:
            crc = 0
            for offset, length in self.chunks(0, identity[2], 8 << 20):
                crc = checksum.crc64(self.read(offset, length), crc)
            self._crc = (identity, crc)
        return self._crc[1]

    @property
    def md5_etag(self) -> str:
        # Opaque, like any ETag; from the file's identity rather than its bytes (cheap).
        digest = hashlib.md5(f"{self.path}:{self._identity()}".encode(), usedforsecurity=False)
        return f'"{digest.hexdigest().upper()}"'
