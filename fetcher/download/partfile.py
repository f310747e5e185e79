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
from fetcher.errors import KeptPartialChanged, LocalIOError
from fetcher.units import human_size

_CATCH_UP_STEP = 4 << 20
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
        self._lock = threading.Lock()  # the segments: their list, ends, progress
        self._sha_lock = threading.Lock()  # the hash and how far it has got
        self._sha = hashlib.sha256() if sha256 else None
        self._hashed = 0  # SHA-256 covers [0, _hashed)
        self._readback: bytearray | None = None
        self.segments: list[Segment] = []
        # Bytes kept from an earlier run, as (start, end, CRC64 the state recorded): the
        # SHA-256 read-back passes over them anyway, so it checks them on the way.
        self._kept: list[tuple[int, int, int]] = []
        self._kept_crc = 0

    # ------------------------------------------------------------------ set-up

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise local_error(exc, self.path, "cannot resize") from exc

    def ensure_space(self, needed: int) -> None:
        """Refuse now, not gigabytes later, when the file system cannot hold ``needed`` more.

        A check rather than a reservation (fallocate): reserving costs a second write of
        the whole file where the file system cannot do it natively (tmpfs zeroes every
        page, glibc emulates it with writes elsewhere). If space runs out anyway (others
        write too), the write fails with ENOSPC and the partial is kept for resume.
        """
        if needed <= 0:
            return
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if needed > free:
            raise LocalIOError(
                f"not enough space for {self.path.name}: disk full "
                f"({human_size(needed)} needed, {human_size(free)} free in {self.path.parent})"
            )

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
        with self._lock:
            segment.crc64 = crc
            segment.done += total
        if self._sha is not None:
            self._feed_sha(offset, chunks, total)
        return total

    def _feed_sha(self, offset: int, chunks: Sequence[bytes], total: int) -> None:
        """Hash these bytes from memory if they are next in line, else leave them for later.

        Only one thread hashes at a time, and no writer waits for it: a writer that finds
        the hash busy moves on, and its bytes are read back when the hash gets there.
        """
        assert self._sha is not None
        if not self._sha_lock.acquire(blocking=False):
            return
        try:
            if self._hashed < offset:
                self._catch_up(limit=offset, budget=_CATCH_UP_BUDGET)
            if self._hashed == offset:
                for c in chunks:
                    self._sha.update(c)
                self._hashed += total
        finally:
            self._sha_lock.release()

    def _available_end(self) -> int:
        """End of the bytes on disk contiguous from ``_hashed``."""
        with self._lock:
            for s in self.segments:
                if s.start <= self._hashed < s.end:
                    return s.next_offset
        return self._hashed

    def _catch_up(self, limit: int | None = None, budget: int | None = None) -> None:
        """Hash bytes already on disk from ``_hashed`` on (caller holds the SHA lock)."""
        assert self._sha is not None
        spent = 0
        while budget is None or spent < budget:
            end = self._available_end()
            if limit is not None:
                end = min(end, limit)
            if end <= self._hashed:
                return
            n = min(_CATCH_UP_STEP, end - self._hashed)
            if self._readback is None or len(self._readback) < n:
                self._readback = bytearray(_CATCH_UP_STEP)
            view = memoryview(self._readback)[:n]
            try:
                got = os.preadv(self.fd, [view], self._hashed)
            except OSError as exc:
                raise local_error(exc, self.path, "cannot read back") from exc
            if not got:
                return
            if self._kept:
                self._check_kept(self._hashed, view[:got])
            self._sha.update(view[:got])
            self._hashed += got
            spent += got

    def finish_sha256(self, size: int) -> str | None:
        """Hash whatever the stream did not (read back from the page cache)."""
        if self._sha is None:
            return None
        with self._sha_lock:
            self._catch_up()
            self._readback = None
            if self._hashed != size:
                raise LocalIOError(f"{self.path}: hashed {self._hashed} of {size} bytes")
            return self._sha.hexdigest()

    def expect_kept(self, segments: Sequence[Segment]) -> None:
        """Check the kept bytes of ``segments`` against the CRC64 their state recorded.

        A partial changed on disk between runs would otherwise end up under the final name
        with a manifest vouching for a CRC64 it does not have. With SHA-256 on, the
        read-back for the hash checks them on the way; without, ``check_kept`` reads them.
        """
        self._kept = [(s.start, s.start + s.done, s.crc64) for s in segments if s.done]
        self._kept_crc = 0

    def check_kept(self) -> None:
        """Read the kept bytes back and check them (when no SHA-256 read-back will)."""
        if self._sha is not None:
            return
        buf = bytearray(_CATCH_UP_STEP)
        while self._kept:
            start, stop, _ = self._kept[0]
            offset = start
            while offset < stop:
                n = min(_CATCH_UP_STEP, stop - offset)
                try:
                    got = os.preadv(self.fd, [memoryview(buf)[:n]], offset)
                except OSError as exc:
                    raise local_error(exc, self.path, "cannot read back") from exc
                if got <= 0:
                    raise KeptPartialChanged("the kept partial is shorter than its state says")
                self._check_kept(offset, memoryview(buf)[:got])
                offset += got

    def _check_kept(self, offset: int, data: memoryview) -> None:
        """Feed read-back bytes at ``offset`` to the kept ranges they belong to."""
        end = offset + len(data)
        while self._kept and self._kept[0][0] < end:
            start, stop, expected = self._kept[0]
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi:
                self._kept_crc = checksum.crc64(data[lo - offset : hi - offset], self._kept_crc)
            if stop > end:
                return
            self._kept.pop(0)
            crc, self._kept_crc = self._kept_crc, 0
            if crc != expected:
                raise KeptPartialChanged(
                    f"the kept partial changed on disk (bytes {start}-{stop - 1} no longer "
                    "match their recorded CRC64)"
                )

    def split(self, segment: Segment, at: int) -> Segment:
        """Cut ``segment`` at ``at``: it now ends there, and a new segment takes the rest.

        Done under the lock so that a checkpoint never sees the list half changed.
        """
        with self._lock:
            if not segment.next_offset < at < segment.end:
                raise ValueError("split point outside the segment's remaining range")
            rest = Segment(at, segment.end)
            segment.end = at
            index = next(i for i, s in enumerate(self.segments) if s is segment)
            self.segments.insert(index + 1, rest)
            return rest

    def forget(self, segment: Segment) -> None:
        """Drop a segment's progress: its bytes will arrive again from its start."""
        with self._sha_lock, self._lock:
            segment.done = 0
            segment.crc64 = 0
            if self._sha is not None and self._hashed > segment.start:
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
