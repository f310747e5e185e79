"""Resume state: what a ``.part`` file holds, pinned to one remote object.

The state file sits beside the part file (``<name>.part.state``), is JSON, and is replaced
atomically. It records the object's identity (size, ETag, expected CRC64, backup id and
database; never the URL) and, per segment, how many bytes from the segment's start are on
disk with the CRC64 of exactly those bytes. A state that is missing, unreadable, or not about
the object the plan points at makes the partial file worthless: it is discarded, not trusted.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_VERSION = 1
PART_SUFFIX = ".part"
STATE_SUFFIX = ".part.state"


@dataclass
class Segment:
    start: int
    end: int  # exclusive
    done: int = 0  # bytes on disk from start, contiguous
    crc64: int = 0  # CRC64 of [start, start + done)

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def complete(self) -> bool:
        return self.done >= self.length

    @property
    def next_offset(self) -> int:
        return self.start + self.done


@dataclass
class ResumeState:
    instance: str
    backup_id: str
    database: str | None
    size: int
    etag: str
    expected_crc64: int | None  # the API's Checksum when there was one
    header_crc64: int | None  # x-oss-hash-crc64ecma of the pinned object
    segments: list[Segment] = field(default_factory=list)
    version: int = STATE_VERSION

    def done_bytes(self) -> int:
        return sum(s.done for s in self.segments)

    def to_json(self) -> str:
        doc = asdict(self)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ResumeState | None:
        """Parse and sanity-check; None for anything not exactly right."""
        try:
            doc: Any = json.loads(text)
            if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
                return None
            segments = [Segment(**s) for s in doc.pop("segments")]
            state = cls(**doc, segments=segments)
        except (ValueError, TypeError, KeyError):
            return None
        return state if state.consistent() else None

    def consistent(self) -> bool:
        ints = [self.size] + [v for s in self.segments for v in (s.start, s.end, s.done, s.crc64)]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            return False
        if not isinstance(self.etag, str) or not self.etag or self.size < 0:
            return False
        for crc in (self.expected_crc64, self.header_crc64):
            if crc is not None and (not isinstance(crc, int) or not 0 <= crc < 1 << 64):
                return False
        # Segments must tile [0, size) exactly, in order.
        pos = 0
        for s in self.segments:
            if s.start != pos or s.end <= s.start or not 0 <= s.done <= s.length:
                return False
            if not 0 <= s.crc64 < 1 << 64:
                return False
            pos = s.end
        return pos == self.size and (bool(self.segments) or self.size == 0)

    def matches(
        self, instance: str, backup_id: str, database: str | None, expected_crc64: int | None
    ) -> bool:
        """Is this state about the object the plan now points at (per the API)?"""
        return (
            self.instance == instance
            and self.backup_id == backup_id
            and self.database == database
            and self.expected_crc64 == expected_crc64
        )


def part_path(target: Path) -> Path:
    return target.with_name(target.name + PART_SUFFIX)


def state_path(target: Path) -> Path:
    return target.with_name(target.name + STATE_SUFFIX)


def load(path: Path) -> ResumeState | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return ResumeState.from_json(text)


def save(path: Path, state: ResumeState) -> None:
    """Atomically replace the state file (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    data = state.to_json().encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def discard(target: Path) -> None:
    """Remove a partial download and its state (and a stray temporary state)."""
    for p in (part_path(target), state_path(target), state_path(target).with_name(state_path(target).name + ".tmp")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def split(size: int, parts: int, align: int = 1 << 20) -> list[Segment]:
    """``parts`` segments tiling [0, size), boundaries aligned for tidy I/O."""
    if size <= 0:
        return []
    parts = max(1, parts)
    step = -(-size // parts)
    step = -(-step // align) * align if step > align else step
    out: list[Segment] = []
    pos = 0
    while pos < size:
        end = min(size, pos + step)
        out.append(Segment(pos, end))
        pos = end
    return out
