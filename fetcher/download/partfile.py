"""The ``.part`` file: positioned writes, CRC64 per segment, SHA-256 in file order.

Everything here runs in worker threads (pwrite, fsync and hashing release the GIL), never
on the event loop. CRC64 is computed from the bytes as they arrive, per segment, and never
from the disk. SHA-256 must see the file in order: bytes that arrive exactly where the hash
has reached are hashed from memory; bytes that arrived ahead of it (later segments, or the
part kept from an earlier run) are read back from the page cache when the hash gets there.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from fetcher import checksum
from fetcher.download.state import Segment
from fetcher.errors import LocalIOError

_CATCH_UP_STEP = 8 << 20
# Read-back done on behalf of one write is bounded, so that a segment that happens to be
# next in line is not held up for long; what is left is read back on later writes or at
# the end.
_CATCH_UP_BUDGET = 32 << 20

_DISK_ERRORS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or limit",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EIO: "I/O error",
}


def local_error(exc: OSError, path: Path, doing: str) -> LocalIOError:
    reason = _DISK_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))
    return LocalIOError(f"{doing} {path}: {reason}")


class PartFile:
    """An open ``.part`` file shared by the segments of one download."""

    def __init__(self, path: Path, sha256: bool) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise local_error(exc, path, "cannot open") from exc
        self._lock = threading.Lock()
        self._sha = hashlib.sha256() if sha256 else None
        self._hashed = 0  # SHA-256 covers [0, _hashed)
        self.segments: list[Segment] = []

    # ------------------------------------------------------------------ set-up

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise local_error(exc, self.path, "cannot resize") from exc

    def preallocate(self, size: int) -> None:
        """Reserve the space now, so a full disk shows up before the download, not during."""
        if size <= 0:
            return
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return
            raise local_error(exc, self.path, "cannot reserve space for") from exc

    # ------------------------------------------------------------------ the hot path

    def write(self, segment: Segment, chunks: Sequence[bytes]) -> int:
        """Write ``chunks`` at the segment's next offset, extend its CRC, feed SHA-256.

        Returns the number of bytes written. The segment's ``done``/``crc64`` advance only
        after the bytes are in the file, so a checkpoint never claims unwritten data.
        """
        offset = segment.next_offset
        total = sum(len(c) for c in chunks)
        try:
            written = os.pwritev(self.fd, chunks, offset)
            while written < total:  # short writes are legal; finish them
                rest = b"".join(chunks)[written:]
                written += os.pwrite(self.fd, rest, offset + written)
        except OSError as exc:
            raise local_error(exc, self.path, "cannot write") from exc
        crc = segment.crc64
        for c in chunks:
            crc = checksum.crc64(c, crc)
        if self._sha is not None:
            self._feed_sha(offset, chunks)
        with self._lock:
            segment.crc64 = crc
            segment.done += total
        return total

    def _feed_sha(self, offset: int, chunks: Sequence[bytes]) -> None:
        assert self._sha is not None
        with self._lock:
            if self._hashed < offset:
                self._catch_up(limit=offset, budget=_CATCH_UP_BUDGET)
            if self._hashed == offset:
                for c in chunks:
                    self._sha.update(c)
                self._hashed += sum(len(c) for c in chunks)

    def _available_end(self) -> int:
        """End of the bytes on disk contiguous from ``_hashed`` (caller holds the lock)."""
        for s in self.segments:
            if s.start <= self._hashed < s.end:
                return s.next_offset
        return self._hashed

    def _catch_up(self, limit: int | None = None, budget: int | None = None) -> None:
        """Hash bytes already on disk from ``_hashed`` on (caller holds the lock)."""
        assert self._sha is not None
        spent = 0
        while budget is None or spent < budget:
            end = self._available_end()
            if limit is not None:
                end = min(end, limit)
            if end <= self._hashed:
                return
            n = min(_CATCH_UP_STEP, end - self._hashed)
            try:
                data = os.pread(self.fd, n, self._hashed)
            except OSError as exc:
                raise local_error(exc, self.path, "cannot read back") from exc
            if not data:
                return
            self._sha.update(data)
            self._hashed += len(data)
            spent += len(data)

    def finish_sha256(self, size: int) -> str | None:
        """Hash whatever the stream did not (read back from the page cache)."""
        if self._sha is None:
            return None
        with self._lock:
            self._catch_up()
            if self._hashed != size:
                raise LocalIOError(f"{self.path}: hashed {self._hashed} of {size} bytes")
            return self._sha.hexdigest()

    def forget(self, segment: Segment) -> None:
        """Drop a segment's progress: its bytes will arrive again from its start."""
        with self._lock:
            segment.done = 0
            segment.crc64 = 0
            if self._sha is not None and self._hashed > segment.start:
                self._sha = hashlib.sha256()
                self._hashed = 0

    def reset_sha(self) -> None:
        with self._lock:
            if self._sha is not None:
                self._sha = hashlib.sha256()
                self._hashed = 0

    # ------------------------------------------------------------------ durability

    def sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise local_error(exc, self.path, "cannot sync") from exc

    def snapshot(self) -> list[Segment]:
        """A consistent copy of the segments' progress, for a checkpoint."""
        with self._lock:
            return [Segment(s.start, s.end, s.done, s.crc64) for s in self.segments]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
