"""Deep structural check of backup archives, read as a stream (``fetcher verify --deep``).

A backup can match its CRC-64 and still be useless: the object stored in OSS may itself be
truncated or damaged. This module opens a file the way a restore would, without extracting
anything to disk, and checks each archive format's own integrity data. The format is
recognised from the content (magic bytes), never from the file name.

Formats, by the name reported in :attr:`DeepResult.format`:

``gzip``
    RFC 1952, one or more concatenated members, whose content is neither tar nor xbstream
    (a SQL dump, say). Each member's header (and its CRC16 when FHCRC is set), deflate
    stream, CRC32 and ISIZE trailer are checked.
``tar``
    POSIX ustar / pax / GNU tar. Every header block's checksum, that each member's data
    (rounded up to 512 bytes) is present, and the end-of-archive marker of two zero blocks.
    pax (``x``, ``g``) and GNU long-name (``L``, ``K``) headers are extension headers of the
    next member; a pax ``size`` record overrides the next member's size field (tar's way of
    storing members over 8 GiB). tar has no checksum over member data, so data damage in a
    plain tar is invisible to this check.
``tar.gz``
    A tar inside gzip: both sets of checks, in one pass (the inflater feeds the tar parser).
    When the tar parser complains first but the gzip CRC then fails too, the gzip damage
    is reported as the cause and the tar complaint as its first symptom.
``xbstream``
    Percona XtraBackup's stream (``xtrabackup --stream=xbstream``). Chunks of
    ``"XBSTCK01"``, flags (1 byte), type (``P`` payload, ``S`` sparse, ``E`` end of file),
    path length (uint32 LE), path; then, except for ``E``: for ``S`` a sparse-map entry
    count (uint32 LE), payload length and payload offset (uint64 LE each), checksum (uint32
    LE), for ``S`` the sparse map (count x (skip, len) uint32 LE), and the payload. The
    checksum is the CRC32 (ISO 3309, zlib's) of the sparse map followed by the payload.
    Every chunk's checksum is checked, and every file opened by a payload chunk must be
    closed by an ``E`` chunk. The format has no end-of-archive marker, so a stream cut
    exactly at a chunk boundary after every file was closed looks complete; xtrabackup
    streams ``xtrabackup_logfile`` from the start of a backup to its end, which makes that
    case unlikely in practice. Chunk header fields other than the type and lengths (flags,
    payload offset) are not covered by the checksum and are not checked; chunks of an
    unknown type flagged ignorable are passed over unchecked, as ``xbstream -x`` does.
``xbstream.gz``
    An xbstream inside gzip.
``zip``
    PKWARE zip, zip64 included. The end of central directory record (after an optional
    comment), the zip64 end record when there is a locator, every central directory
    entry, the matching local header, and each entry's data: decompressed in bounded
    chunks and compared with the CRC32 and uncompressed size of the central directory.
    Stored, deflate and bzip2 entries are checked; entries with another compression method
    or encrypted entries cannot be: the structure is still reported ``ok`` (the directory
    and headers were sound) and the detail names the entries left unchecked.

Anything else is ``unrecognised``, which is not damage; the detail then names the format
when it is a known one that this module does not open (bzip2, xz, zstd, qpress, ...).

Choices about what counts as damage:

* Data after the end of a gzip stream, a tar end-of-archive marker or a zip end record is
  damage unless every byte of it is zero. Zero padding comes from block-oriented writers
  (tape, ``dd conv=sync``, tar's own record padding), and ``gzip -t`` accepts it silently;
  anything else means bytes that no restore would read (an append gone wrong, two
  archives glued together where tar stops at the first), and ``gzip -t`` warns about it
  too (exit status 2).
* A tar archive whose end-of-archive marker is missing is truncated, even when the last
  member is complete: a tar writer always writes it, so its absence means the stream was
  cut.

Memory use is bounded (a few MiB) whatever the size of the file: reads are 1 MiB, the
inflater gets 256 KiB slices and gives at most 1 MiB per call, and only headers are ever
buffered. gzip, tar and xbstream are checked in a single forward pass (a plain tar on a
seekable file seeks over large member data instead of reading it, as ``tar -t`` does);
zip needs a seekable file (its directory is at the end). Damage is reported where it is
first found, with the member, entry or chunk and the byte offset.
"""

from __future__ import annotations

import bz2
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

__all__ = ["DeepResult", "Structure", "inspect_archive", "inspect_stream"]

Structure = Literal["ok", "damaged", "unrecognised"]

READ_SIZE = 1 << 20
# One inflate call may produce at most this much: a 1 MiB read of highly compressible
# data would otherwise inflate to a gigabyte in one bytes object.
OUT_LIMIT = 1 << 20
_INFLATE_SLICE = 256 << 10

_BLOCK = 512
_SEEK_OVER = 4 * READ_SIZE  # tar member data this long is seeked over rather than read
_ZERO_BLOCK = bytes(_BLOCK)
_GZIP_MAGIC = b"\x1f\x8b"
_XB_MAGIC = b"XBSTCK01"
_ZIP_LOCAL = b"PK\x03\x04"
_ZIP_CENTRAL = b"PK\x01\x02"
_ZIP_EOCD = b"PK\x05\x06"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP_SPANNED = b"PK\x07\x08"

# Magic bytes of formats this module recognises by name but does not check.
_KNOWN_UNCHECKED: tuple[tuple[bytes, str], ...] = (
    (b"BZh", "bzip2 compressed data"),
    (b"\xfd7zXZ\x00", "xz compressed data"),
    (b"\x28\xb5\x2f\xfd", "zstd compressed data"),
    (b"\x04\x22\x4d\x18", "lz4 compressed data"),
    (b"qpress10", "qpress compressed data"),
    (b"XBCRYP0", "xbcrypt encrypted data"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"PGDMP", "pg_dump custom-format archive"),
    (b"TAPE", "Microsoft Tape Format (SQL Server backup)"),
    (b"MZ", "executable (self-extracting archive?)"),
)


@dataclass(frozen=True)
class DeepResult:
    """What a deep check found in one file.

    ``structure`` is ``ok``, ``damaged`` (``detail`` says where) or ``unrecognised`` (the
    format is not one this module checks; ``detail`` is a short note). ``format`` is one of
    ``gzip``, ``tar``, ``tar.gz``, ``xbstream``, ``xbstream.gz``, ``zip``, or ``None`` when
    unrecognised. ``detail`` is empty when ``ok``, except for a zip some of whose entries
    could not be checked.
    """

    path: str
    structure: Structure
    format: str | None
    detail: str


class _Damage(Exception):
    """Raised inside the parsers; becomes a ``damaged`` result, never leaves the module."""


class _Unchecked(Exception):
    """Raised when the content turns out to be something this module cannot check."""


class _CorruptDeflate(Exception):
    """zlib refused the input; ``first``/``last`` bound the slice being inflated."""

    def __init__(self, reason: str, first: int, last: int) -> None:
        super().__init__(reason)
        self.reason, self.first, self.last = reason, first, last


class _Sink(Protocol):
    def feed(self, data: bytes) -> None: ...

    def close(self) -> None: ...


def inspect_archive(path: str | os.PathLike[str], *, display_path: str | None = None) -> DeepResult:
    """Check the archive at ``path``. Only ``OSError`` from opening or reading it escapes."""
    shown = display_path if display_path is not None else os.fspath(path)
    # Unbuffered: every read is already 1 MiB, a second buffer would only copy.
    with open(path, "rb", buffering=0) as raw:
        return inspect_stream(raw, size=os.fstat(raw.fileno()).st_size, display_path=shown)


def inspect_stream(stream: BinaryIO, *, size: int | None = None, display_path: str = "") -> DeepResult:
    """Check the archive read from ``stream``, from its current position to its end.

    ``size`` is the number of bytes from the current position to the end, when known; the
    zip check uses it instead of seeking to the end. A zip needs a seekable stream (it is
    reported ``unrecognised`` otherwise); every other format is read once, sequentially.
    Only ``OSError`` from reading the stream escapes.
    """
    # Before the first read: zip and tar seek relative to where the archive starts.
    start = stream.tell() if stream.seekable() else None
    if start is not None and size is None:
        size = stream.seek(0, os.SEEK_END) - start
        stream.seek(start)
    source = _Source(stream, size if start is not None else None)
    head = source.peek(_BLOCK)
    if not head:
        return DeepResult(display_path, "unrecognised", None, "empty file")
    state = _State()
    try:
        if head.startswith(_GZIP_MAGIC):
            state.format = "gzip"
            _check_gzip(source, state)
        elif head.startswith(_XB_MAGIC):
            state.format = "xbstream"
            _pump(source, _XbstreamParser(""))
        elif head[:4] in (_ZIP_LOCAL, _ZIP_EOCD, _ZIP_SPANNED):
            state.format = "zip"
            state.note = _check_zip(stream, start, size)
        elif _looks_like_tar(head):
            state.format = "tar"
            _pump_tar(source, _TarParser(""))
        else:
            return DeepResult(display_path, "unrecognised", None, _describe_unknown(head))
    except _Damage as exc:
        return DeepResult(display_path, "damaged", state.format, str(exc))
    except _Unchecked as exc:
        return DeepResult(display_path, "unrecognised", None, str(exc))
    return DeepResult(display_path, "ok", state.format, state.note)


class _State:
    """The format as far as it is known, so that damage found half-way can still name it."""

    def __init__(self) -> None:
        self.format: str | None = None
        self.note = ""


def _describe_unknown(head: bytes) -> str:
    for magic, name in _KNOWN_UNCHECKED:
        if head.startswith(magic):
            return f"format not recognised: {name} (not checked)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Only a multi-byte character cut by the end of the sniffed block is forgiven.
        if exc.start < len(head) - 3:
            return "format not recognised"
        text = head[: exc.start].decode("utf-8")
    if all(char.isprintable() or char in "\t\r\n\f" for char in text):
        return "format not recognised: plain text (no internal checksums)"
    return "format not recognised"


def _looks_like_tar(head: bytes) -> bool:
    """A ustar magic, or a first 512-byte block whose header checksum holds."""
    if len(head) >= 263 and head[257:262] == b"ustar":
        return True
    if len(head) < _BLOCK or head[:_BLOCK] == _ZERO_BLOCK:
        return False
    stored = _parse_octal(head[148:156])
    return stored is not None and stored in _header_sums(head[:_BLOCK])


class _Source:
    """A binary stream read in large chunks, with look-ahead, counting the offset.

    ``size`` (bytes from where reading began) is given only for seekable streams: it lets
    :meth:`skip` seek instead of reading.
    """

    def __init__(self, stream: BinaryIO, size: int | None = None) -> None:
        self._stream = stream
        self._size = size
        self._buf = b""
        self._pos = 0
        self._eof = False
        self.offset = 0  # offset (from where reading began) of the next byte read() returns

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes ahead, without consuming them (fewer only at end of stream)."""
        while len(self._buf) - self._pos < n and not self._eof:
            more = self._stream.read(max(READ_SIZE, n - (len(self._buf) - self._pos)))
            if not more:
                self._eof = True
                break
            self._buf = self._buf[self._pos :] + more
            self._pos = 0
        return self._buf[self._pos : self._pos + n]

    def read(self, n: int = READ_SIZE) -> bytes:
        """Up to ``n`` bytes; ``b""`` only at end of stream."""
        available = len(self._buf) - self._pos
        if available:
            if self._pos == 0 and n >= available:
                data = self._buf  # the whole look-ahead buffer: no copy
            else:
                data = self._buf[self._pos : self._pos + n]
            self._pos += len(data)
            if self._pos == len(self._buf):
                self._buf, self._pos = b"", 0
        elif self._eof:
            return b""
        else:
            data = self._stream.read(n)
            if not data:
                self._eof = True
                return b""
        self.offset += len(data)
        return data

    def read_exact(self, n: int) -> bytes:
        """``n`` bytes, or fewer only when the stream ends first."""
        data = self.peek(n)
        self._pos += len(data)
        self.offset += len(data)
        return data

    def read_cstring(self, limit: int) -> bytes | None:
        """Bytes up to and including a NUL; ``None`` if none comes within ``limit`` bytes."""
        want = 256
        while True:
            data = self.peek(want)
            end = data.find(b"\0")
            if end >= 0:
                return self.read_exact(end + 1)
            if len(data) < want or want >= limit:
                return None
            want = min(want * 4, limit)

    @property
    def seekable(self) -> bool:
        return self._size is not None

    def skip(self, n: int) -> int:
        """Pass over up to ``n`` bytes by seeking; returns how many there were to pass."""
        assert self._size is not None, "skip() needs a seekable stream of known size"
        buffered = min(n, len(self._buf) - self._pos)
        self._pos += buffered
        self.offset += buffered
        # Never past the end: what lies beyond was never there, and must count as missing.
        rest = max(0, min(n - buffered, self._size - self.offset))
        if rest:
            self._buf, self._pos = b"", 0
            self._stream.seek(rest, os.SEEK_CUR)
            self.offset += rest
        return buffered + rest

    def push_back(self, data: bytes) -> None:
        """Return bytes read too far (what followed a deflate stream) to the front."""
        if data:
            self._buf = data + self._buf[self._pos :]
            self._pos = 0
            self.offset -= len(data)


def _pump(source: _Source, sink: _Sink) -> None:
    while data := source.read():
        sink.feed(data)
    sink.close()


def _pump_tar(source: _Source, parser: _TarParser) -> None:
    """Like _pump, but seeking over member data: tar has no checksum over it to read for."""
    while True:
        wanted = parser.skippable
        if wanted >= _SEEK_OVER and source.seekable:
            passed = source.skip(wanted)
            parser.passed(passed)
            if passed < wanted:
                break
        data = source.read()
        if not data:
            break
        parser.feed(data)
    parser.close()


def _quote(name: str | bytes, limit: int = 100) -> str:
    """A member name for a message: quoted, and shortened in the middle when long."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if len(name) > limit:
        name = name[: limit // 2 - 1] + "..." + name[-(limit // 2 - 2) :]
    return repr(name)


def _first_nonzero(data: bytes) -> int:
    """Index of the first non-zero byte of ``data``, or -1 when it is all zeros."""
    if data.count(0) == len(data):
        return -1
    return len(data) - len(data.lstrip(b"\0"))


def _expect_zero_padding(source: _Source, after: str) -> None:
    """Everything left in ``source`` must be zero bytes (see the module docstring)."""
    while data := source.read():
        index = _first_nonzero(data)
        if index >= 0:
            at = source.offset - len(data) + index
            raise _Damage(f"{after}: non-zero data at byte offset {at}")


class _Inflater:
    """Raw deflate, fed any amount of input, giving output in pieces of at most OUT_LIMIT.

    Input is handed to zlib in slices: when an output piece is full, zlib returns the
    input it has not used yet as a new bytes object, so a whole 1 MiB read of highly
    compressible data would be copied again for every piece.
    """

    def __init__(self) -> None:
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self.leftover = b""  # input after the end of the deflate stream

    @property
    def eof(self) -> bool:
        return self._zlib.eof

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Inflate ``data``; raises _CorruptDeflate with offsets relative to ``data``."""
        inflater = self._zlib
        view = memoryview(data)
        for start in range(0, len(view), _INFLATE_SLICE):
            try:
                out = inflater.decompress(view[start : start + _INFLATE_SLICE], OUT_LIMIT)
                while True:
                    if out:
                        yield out
                    if inflater.eof:
                        self.leftover = inflater.unused_data + view[start + _INFLATE_SLICE :].tobytes()
                        return
                    tail = inflater.unconsumed_tail
                    # A full output piece may leave output pending in zlib with no input left.
                    if not tail and len(out) < OUT_LIMIT:
                        break
                    out = inflater.decompress(tail, OUT_LIMIT)
            except zlib.error as exc:
                # The bad bits are in this slice, or earlier (a distance "too far back").
                last = min(start + _INFLATE_SLICE, len(view)) - 1
                raise _CorruptDeflate(_zlib_reason(exc), start, last) from None


# --------------------------------------------------------------------------------- gzip

_FHCRC, _FEXTRA, _FNAME, _FCOMMENT, _FRESERVED = 0x02, 0x04, 0x08, 0x10, 0xE0
_MAX_GZIP_STRING = 1 << 20


def _check_gzip(source: _Source, state: _State) -> None:
    content = _GzipContent()
    try:
        _check_gzip_members(source, content)
    except _Damage as exc:
        if content.damage is None or exc is content.damage:
            raise
        # The inflated data went wrong before the gzip check could tell: the gzip damage
        # is the cause, the inner format's complaint the first symptom.
        raise _Damage(f"{exc}; first symptom: {content.damage}") from None
    finally:
        state.format = content.format


def _check_gzip_members(source: _Source, content: _GzipContent) -> None:
    member = 0
    while True:
        member += 1
        start = source.offset
        where = f"gzip member {member} (at byte {start})"
        _read_gzip_header(source, where)
        # Raw deflate (negative wbits) and our own CRC32/ISIZE check, rather than
        # wbits=31: zlib's own check would only say "incorrect data check" somewhere
        # in the last chunk, ours names the trailer's offset and both values.
        inflater = _Inflater()
        crc = 0
        length = 0
        while not inflater.eof:
            data = source.read()
            if not data:
                raise _Damage(
                    f"truncated: {where}: compressed data ends at byte offset {source.offset} "
                    "before the end of the deflate stream"
                )
            try:
                for out in inflater.feed(data):
                    crc = zlib.crc32(out, crc)
                    length += len(out)
                    content.feed(out)
            except _CorruptDeflate as exc:
                base = source.offset - len(data)
                raise _Damage(
                    f"{where}: corrupt deflate data ({exc.reason}), detected in compressed "
                    f"bytes {base + exc.first}-{base + exc.last}"
                ) from None
        source.push_back(inflater.leftover)
        trailer_at = source.offset
        trailer = source.read_exact(8)
        if len(trailer) < 8:
            raise _Damage(f"truncated: {where}: trailer incomplete at byte offset {trailer_at}")
        stored_crc, stored_length = struct.unpack("<II", trailer)
        if stored_crc != crc:
            raise _Damage(
                f"{where}: CRC32 mismatch at byte offset {trailer_at}: "
                f"trailer says {stored_crc:#010x}, data gives {crc:#010x}"
            )
        if stored_length != length & 0xFFFFFFFF:
            raise _Damage(
                f"{where}: length mismatch at byte offset {trailer_at + 4}: trailer says "
                f"{stored_length} (mod 2^32), data has {length} bytes"
            )
        following = source.peek(2)
        if not following:
            break
        if following != _GZIP_MAGIC:
            _expect_zero_padding(source, f"gzip: after the last member ({member})")
            break
    content.close()


def _zlib_reason(exc: Exception) -> str:
    # "Error -3 while decompressing data: invalid block type" -> "invalid block type"
    return str(exc).rpartition(": ")[2] or str(exc)


def _read_gzip_header(source: _Source, where: str) -> None:
    header = source.read_exact(10)
    if len(header) < 10:
        raise _Damage(f"truncated: {where}: header incomplete")
    if header[:2] != _GZIP_MAGIC:
        raise _Damage(f"{where}: not a gzip header")
    method, flags = header[2], header[3]
    if method != 8:
        raise _Damage(f"{where}: unknown compression method {method}")
    if flags & _FRESERVED:
        raise _Damage(f"{where}: reserved header flags set ({flags:#04x})")
    parts = [header]
    if flags & _FEXTRA:
        size_field = source.read_exact(2)
        extra = source.read_exact(int.from_bytes(size_field, "little")) if len(size_field) == 2 else b""
        if len(size_field) < 2 or len(extra) < int.from_bytes(size_field, "little"):
            raise _Damage(f"truncated: {where}: header extra field incomplete")
        parts += [size_field, extra]
    for flag, name in ((_FNAME, "file name"), (_FCOMMENT, "comment")):
        if flags & flag:
            text = source.read_cstring(_MAX_GZIP_STRING)
            if text is None:
                raise _Damage(f"{where}: header {name} unterminated")
            parts.append(text)
    if flags & _FHCRC:
        stored = source.read_exact(2)
        if len(stored) < 2:
            raise _Damage(f"truncated: {where}: header CRC incomplete")
        computed = zlib.crc32(b"".join(parts)) & 0xFFFF
        if int.from_bytes(stored, "little") != computed:
            raise _Damage(f"{where}: header CRC16 mismatch")


class _Discard:
    def feed(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class _GzipContent:
    """Decides from the first inflated block whether a gzip holds tar, xbstream or else."""

    def __init__(self) -> None:
        self._head = b""
        self._inner: _Sink | None = None
        self._format = "gzip"
        # The inner parser's complaint; inflating goes on, so that a gzip CRC error (the
        # likelier cause) can still be found and named first.
        self.damage: _Damage | None = None

    @property
    def format(self) -> str:
        if self._inner is None:
            # Damage before a whole block came out: name what the content began as.
            if self._head.startswith(_XB_MAGIC):
                return "xbstream.gz"
            if self._head[257:262] == b"ustar":
                return "tar.gz"
        return self._format

    def feed(self, data: bytes) -> None:
        if self._inner is None:
            self._head += data
            if len(self._head) >= _BLOCK:
                self._decide()
            return
        try:
            self._inner.feed(data)
        except _Damage as exc:
            self.damage, self._inner = exc, _Discard()

    def close(self) -> None:
        if self._inner is None:
            self._decide()
        if self.damage is not None:
            raise self.damage
        assert self._inner is not None
        self._inner.close()

    def _decide(self) -> None:
        head, self._head = self._head, b""
        suffix = " of the uncompressed stream"
        if head.startswith(_XB_MAGIC):
            self._format, self._inner = "xbstream.gz", _XbstreamParser(suffix)
        elif _looks_like_tar(head):
            self._format, self._inner = "tar.gz", _TarParser(suffix)
        else:
            self._inner = _Discard()
        self.feed(head)


# ---------------------------------------------------------------------------------- tar

_OCTAL = re.compile(rb"[0-7]+")
_NO_DATA_TYPES = frozenset(b"123456")  # links, devices, directories, FIFOs carry no data
_EXTENSION_TYPES = frozenset(b"xgLK")
_MAX_EXTENSION = 1 << 20  # pax / long-name payloads larger than this are skipped unread


def _parse_octal(field: bytes) -> int | None:
    """A tar numeric field: NUL/space-terminated octal, or GNU base-256; None if invalid."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] and field[0] & 0x80:
        return None  # negative base-256: never a valid size or checksum
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    return int(text, 8) if _OCTAL.fullmatch(text) else None


def _header_sums(block: bytes) -> tuple[int, int]:
    """The header checksum as POSIX defines it (unsigned bytes) and as some old tars did."""
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    high = sum(1 for byte in block[:148] + block[156:] if byte & 0x80)
    return unsigned, unsigned - 256 * high


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Records ``"<len> <key>=<value>\\n"``; raises ValueError when malformed."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 24)
        if space < 0 or not data[pos:space].isdigit():
            raise ValueError("bad record length")
        end = pos + int(data[pos:space])
        if end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
            raise ValueError("bad record")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals:
            raise ValueError("record without '='")
        records[key] = value
        pos = end
    return records


class _TarParser:
    """A streaming tar parser over 512-byte blocks: headers are parsed, data is counted past.

    ``feed`` takes the tar stream in arbitrary pieces; member data is never copied, only
    the header blocks (and small pax / long-name payloads) are.
    """

    def __init__(self, suffix: str) -> None:
        self._suffix = suffix  # " of the uncompressed stream" when inside gzip
        self._offset = 0  # bytes of the tar stream consumed
        self._skip = 0  # bytes of member data (with padding) still to pass over
        self._partial = b""  # a header block split between two feeds
        self._members = 0
        self._name = ""  # the current (last seen) member, for messages
        self._data_end = 0  # offset where the current member's data ends (before padding)
        self._zero_blocks = 0
        self._ended = False
        # Extension headers (pax x/g, GNU L/K) apply to the member that follows them.
        self._ext_type = 0
        self._ext_pending = False
        self._ext_data: bytearray | None = None
        self._ext_need = 0
        self._next_size: int | None = None
        self._next_name: str | None = None
        self._sparse_blocks = False  # old GNU sparse: extension blocks follow the header
        self._sparse_skip = 0

    def _where(self, offset: int) -> str:
        return f"byte offset {offset}{self._suffix}"

    def _member(self) -> str:
        return f"tar member {self._members} ({_quote(self._name)})"

    @property
    def skippable(self) -> int:
        """Bytes of member data ahead that need not be read (unless a header is collected)."""
        return self._skip if self._ext_data is None else 0

    def passed(self, count: int) -> None:
        """``count`` bytes of the data ahead were passed over without being read."""
        self._skip -= count
        self._offset += count

    def feed(self, data: bytes) -> None:
        pos = 0
        size = len(data)
        while pos < size:
            if self._ended:
                index = _first_nonzero(data[pos:])
                if index >= 0:
                    raise _Damage(
                        "tar: after the end-of-archive marker: non-zero data at "
                        + self._where(self._offset + index)
                    )
                self._offset += size - pos
                return
            if self._skip:
                take = min(self._skip, size - pos)
                if self._ext_data is not None and self._ext_need:
                    piece = data[pos : pos + min(take, self._ext_need)]
                    self._ext_data += piece
                    self._ext_need -= len(piece)
                    if not self._ext_need:
                        self._extension_complete()
                self._skip -= take
                self._offset += take
                pos += take
                continue
            if self._partial:
                piece = data[pos : pos + _BLOCK - len(self._partial)]
                self._partial += piece
                pos += len(piece)
                self._offset += len(piece)
                if len(self._partial) < _BLOCK:
                    continue
                block, self._partial = self._partial, b""
            elif size - pos >= _BLOCK:
                block = data[pos : pos + _BLOCK]
                pos += _BLOCK
                self._offset += _BLOCK
            else:
                self._partial = data[pos:]
                self._offset += size - pos
                pos = size
                continue
            self._block(block, self._offset - _BLOCK)

    def _block(self, block: bytes, at: int) -> None:
        if self._sparse_blocks:
            # Old GNU sparse extension block; its byte 504 says whether another follows.
            self._sparse_blocks = block[504] != 0
            if not self._sparse_blocks:
                self._skip = self._sparse_skip
                self._data_end += self._offset
            return
        if block == _ZERO_BLOCK:
            if self._ext_pending:
                raise _Damage(f"tar: extension header not followed by a member at {self._where(at)}")
            self._zero_blocks += 1
            self._ended = self._zero_blocks == 2
            return
        if self._zero_blocks:
            # GNU tar stops at a lone zero block: whatever follows would never be restored.
            raise _Damage(f"tar: lone zero block at {self._where(at - _BLOCK)} followed by more headers")
        stored = _parse_octal(block[148:156])
        sums = _header_sums(block)
        this = f"tar member {self._members + 1}"
        previous = f" (previous member {_quote(self._name)})" if self._members else ""
        if stored is None or stored not in sums:
            shown = "unreadable" if stored is None else f"{stored:#o}"
            raise _Damage(
                f"{this}: header checksum mismatch at {self._where(at)}: "
                f"stored {shown}, computed {sums[0]:#o}{previous}"
            )
        typeflag = block[156]
        # A pax size record stands in for the header's size field, whatever that holds.
        override = None if typeflag in _EXTENSION_TYPES else self._next_size
        size = override if override is not None else _parse_octal(block[124:136])
        if size is None:
            raise _Damage(f"{this}: invalid size field in the header at {self._where(at)}{previous}")
        if typeflag in _EXTENSION_TYPES:
            # A global pax header ("g") applies to the archive, not to the next member.
            self._ext_pending = self._ext_pending or typeflag != ord("g")
            self._ext_type = typeflag
            self._skip = _padded(size)
            if typeflag != ord("g") and size <= _MAX_EXTENSION:
                self._ext_data = bytearray()
                self._ext_need = size
                if not size:
                    self._extension_complete()
            return
        self._members += 1
        self._name = self._next_name if self._next_name is not None else _header_name(block)
        self._ext_pending = False
        self._next_size = self._next_name = None
        self._data_end = self._offset + (0 if typeflag in _NO_DATA_TYPES else size)
        skip = 0 if typeflag in _NO_DATA_TYPES else _padded(size)
        if typeflag == ord("S") and block[482]:
            self._sparse_blocks = True
            self._sparse_skip = skip
            self._data_end = size  # made absolute once the extension blocks are passed
        else:
            self._skip = skip

    def _extension_complete(self) -> None:
        assert self._ext_data is not None
        payload = bytes(self._ext_data)
        self._ext_data = None
        if self._ext_type in (ord("L"), ord("K")):
            if self._ext_type == ord("L"):
                self._next_name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
            return
        try:
            records = _parse_pax(payload)
            if b"size" in records:
                if not records[b"size"].isdigit():
                    raise ValueError("size record is not a number")
                self._next_size = int(records[b"size"])
        except ValueError as exc:
            raise _Damage(
                f"tar: malformed pax header ({exc}) ending before {self._where(self._offset)}"
            ) from None
        if b"path" in records:
            self._next_name = records[b"path"].decode("utf-8", "replace")

    def close(self) -> None:
        if self._ended:
            return
        end = self._where(self._offset)
        if self._skip or self._sparse_blocks:
            if self._ext_pending:
                raise _Damage(f"truncated: tar stream ends at {end} inside an extension header")
            part = "data" if self._offset < self._data_end else "padding after its data"
            raise _Damage(f"truncated: tar stream ends at {end} inside the {part} of {self._member()}")
        if self._partial:
            raise _Damage(f"truncated: tar stream ends at {end} inside a header block")
        if self._ext_pending:
            raise _Damage(f"truncated: tar stream ends at {end} after an extension header")
        after = f" after {self._member()}" if self._members else ""
        if self._zero_blocks == 1:
            raise _Damage(f"truncated: tar end-of-archive marker incomplete (one zero block) at {end}")
        raise _Damage(f"truncated: tar end-of-archive marker missing; stream ends at {end}{after}")


def _header_name(block: bytes) -> str:
    name = block[:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix and block[257:263] == b"ustar\0":  # POSIX prefix; GNU uses the area otherwise
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


# ----------------------------------------------------------------------------- xbstream

_XB_FIXED = 14  # magic, flags, type, path length
_XB_MAX_PATH = 512  # FN_REFLEN: xbstream refuses longer paths
_XB_IGNORABLE = 0x01


class _XbstreamParser:
    """Streaming xbstream chunk parser: headers are buffered, payloads only CRC'd."""

    def __init__(self, suffix: str) -> None:
        self._suffix = suffix
        self._offset = 0
        self._header = bytearray()
        self._need = _XB_FIXED  # header bytes needed before the next parsing step
        self._stage = 0
        self._chunks = 0
        self._chunk_at = 0
        self._type = 0
        self._path = b""
        self._checked = True
        self._crc_left = 0
        self._crc = 0
        self._expected_crc = 0
        self._open: dict[bytes, int] = {}  # files with payload but no EOF chunk yet

    def _where(self, offset: int) -> str:
        return f"byte offset {offset}{self._suffix}"

    def _chunk(self) -> str:
        path = f" ({_quote(self._path)})" if self._stage >= 2 else ""
        return f"xbstream chunk {self._chunks}{path} at {self._where(self._chunk_at)}"

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos = 0
        size = len(data)
        while pos < size:
            if self._crc_left:
                take = min(self._crc_left, size - pos)
                if self._checked:
                    self._crc = zlib.crc32(view[pos : pos + take], self._crc)
                self._crc_left -= take
                self._offset += take
                pos += take
                if not self._crc_left:
                    self._payload_done()
                continue
            if not self._header:
                self._chunks += 1
                self._chunk_at = self._offset
            piece = data[pos : pos + self._need - len(self._header)]
            self._header += piece
            pos += len(piece)
            self._offset += len(piece)
            while self._header and len(self._header) == self._need and not self._crc_left:
                self._advance()

    def _advance(self) -> None:
        header = self._header
        if self._stage == 0:
            if header[:8] != _XB_MAGIC:
                raise _Damage(f"{self._chunk()}: bad chunk magic {bytes(header[:8])!r}")
            flags, self._type = header[8], header[9]
            path_length = int.from_bytes(header[10:14], "little")
            if self._type not in b"PSE" and not flags & _XB_IGNORABLE:
                raise _Damage(f"{self._chunk()}: unknown chunk type {self._type:#04x}")
            if path_length >= _XB_MAX_PATH:
                raise _Damage(f"{self._chunk()}: path length {path_length} too large")
            self._stage = 1
            self._need += path_length
        elif self._stage == 1:
            self._path = bytes(header[_XB_FIXED:])
            self._stage = 2
            if self._type == ord("E"):
                self._open.pop(self._path, None)
                self._reset()
                return
            self._need += 24 if self._type == ord("S") else 20
        else:
            fields = header[self._need - 20 :]
            length, _offset, self._expected_crc = struct.unpack("<QQI", fields)
            sparse = 0
            if self._type == ord("S"):
                sparse = int.from_bytes(header[self._need - 24 : self._need - 20], "little")
            self._checked = self._type in b"PS"
            if self._checked:
                self._open[self._path] = self._chunks
            self._crc = 0
            self._crc_left = 8 * sparse + length
            self._stage = 3
            if not self._crc_left:
                self._payload_done()

    def _payload_done(self) -> None:
        if self._checked and self._crc != self._expected_crc:
            raise _Damage(
                f"{self._chunk()}: checksum mismatch: header says {self._expected_crc:#010x}, "
                f"payload gives {self._crc:#010x}"
            )
        self._reset()

    def _reset(self) -> None:
        self._header = bytearray()
        self._need = _XB_FIXED
        self._stage = 0

    def close(self) -> None:
        if self._header or self._crc_left:
            part = "payload" if self._crc_left else "header"
            raise _Damage(
                f"truncated: {self._chunk()}: stream ends at {self._where(self._offset)} "
                f"inside the chunk's {part}"
            )
        if self._open:
            path, chunk = next(iter(self._open.items()))
            others = f" and {len(self._open) - 1} more" if len(self._open) > 1 else ""
            raise _Damage(
                f"truncated: xbstream ends at {self._where(self._offset)} with no EOF chunk for "
                f"{_quote(path)} (last payload in chunk {chunk}){others}"
            )


# ---------------------------------------------------------------------------------- zip

_EOCD_S = struct.Struct("<4sHHHHIIH")
_ZIP64_EOCD_S = struct.Struct("<4sQHHIIQQQQ")
_ZIP64_LOCATOR_S = struct.Struct("<4sIQI")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_MAX_COMMENT = 0xFFFF
_CHECKED_METHODS = frozenset({0, 8, 12})  # stored, deflate, bzip2


@dataclass(frozen=True)
class _ZipEntry:
    index: int
    name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    local_offset: int

    def label(self) -> str:
        return f"zip entry {self.index} ({_quote(self.name)})"


def _check_zip(stream: BinaryIO, base: int | None, size: int | None) -> str:
    if base is None:
        raise _Unchecked("zip archive on a non-seekable stream: not checked")
    if size is None:
        size = stream.seek(0, os.SEEK_END) - base
    tail_start = max(0, size - (_EOCD_S.size + _MAX_COMMENT + _ZIP64_LOCATOR_S.size))
    stream.seek(base + tail_start)
    tail = _read_all(stream, size - tail_start)
    eocd_at, comment_end = _find_eocd(tail)
    eocd = _EOCD_S.unpack_from(tail, eocd_at)
    if comment_end < len(tail):
        index = _first_nonzero(tail[comment_end:])
        if index >= 0:
            raise _Damage(
                "zip: after the end of central directory record: non-zero data at byte offset "
                f"{tail_start + comment_end + index}"
            )
    _, disk, cd_disk, _, total, cd_size, cd_offset, _ = eocd
    directory_end = tail_start + eocd_at  # where the central directory should end
    zip64 = False
    if eocd_at >= _ZIP64_LOCATOR_S.size and tail[eocd_at - 20 : eocd_at - 16] == _ZIP64_LOCATOR_SIG:
        zip64 = True
        total, cd_size, cd_offset, directory_end = _read_zip64_end(
            stream, base, size, tail_start + eocd_at - 20, tail[eocd_at - 20 : eocd_at]
        )
    elif disk or cd_disk:
        raise _Unchecked("format not recognised: one volume of a multi-volume zip")
    cd_start = directory_end - cd_size
    concat = cd_start - cd_offset  # bytes prepended to the archive (self-extractor stub)
    if cd_start < 0 or concat < 0:
        raise _Damage(
            f"zip: central directory (offset {cd_offset}, size {cd_size}) does not fit before "
            f"its end record at byte offset {directory_end}"
        )
    first_unchecked = ""
    unchecked = 0
    count = 0
    for entry in _central_directory(stream, base, cd_start, cd_size):
        count += 1
        note = _check_zip_entry(stream, base, entry, concat, cd_start)
        if note:
            unchecked += 1
            first_unchecked = first_unchecked or f"{entry.label()}: {note}"
    # Without zip64 the 16-bit count field may wrap.
    if count != total and (zip64 or count % 0x10000 != total):
        raise _Damage(f"zip: central directory has {count} entries, its end record says {total}")
    if not unchecked:
        return ""
    more = f" (and {unchecked - 1} more)" if unchecked > 1 else ""
    return f"{unchecked} of {count} entries not checked: {first_unchecked}{more}"


def _read_all(stream: BinaryIO, n: int) -> bytes:
    """Exactly ``n`` bytes from the current position (fewer only at end of stream)."""
    parts = []
    while n > 0:
        data = stream.read(n)
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def _find_eocd(tail: bytes) -> tuple[int, int]:
    """Offset in ``tail`` of the end of central directory record and where its comment ends.

    The signature can also occur inside compressed data or the comment, so the last one
    whose comment ends exactly at the end of the file wins; failing that, the last one
    whose comment fits (trailing bytes are judged by the caller).
    """
    fitting: tuple[int, int] | None = None
    overlong = False
    at = len(tail)
    while (at := tail.rfind(_ZIP_EOCD, 0, at)) >= 0:
        if at + _EOCD_S.size <= len(tail):
            end = at + _EOCD_S.size + int.from_bytes(tail[at + 20 : at + 22], "little")
            if end == len(tail):
                return at, end
            if end < len(tail):
                fitting = fitting or (at, end)
            else:
                overlong = True
    if fitting is not None:
        return fitting
    if overlong:
        raise _Damage("truncated: zip end of central directory comment is incomplete")
    raise _Damage("truncated: zip end of central directory record not found")


def _read_zip64_end(
    stream: BinaryIO, base: int, size: int, locator_at: int, locator: bytes
) -> tuple[int, int, int, int]:
    _, _, stated, _ = _ZIP64_LOCATOR_S.unpack(locator)
    # The record normally sits right before its locator; the stated offset is measured
    # from the start of the archive, which a prepended stub would shift.
    for at in (locator_at - _ZIP64_EOCD_S.size, stated):
        if 0 <= at <= size - _ZIP64_EOCD_S.size:
            stream.seek(base + at)
            record = _read_all(stream, _ZIP64_EOCD_S.size)
            if record[:4] == _ZIP64_EOCD_SIG:
                _, _, _, _, _, _, _, total, cd_size, cd_offset = _ZIP64_EOCD_S.unpack(record)
                return total, cd_size, cd_offset, at
    raise _Damage(
        f"zip: zip64 end of central directory record not found (locator at byte offset {locator_at})"
    )


def _central_directory(stream: BinaryIO, base: int, start: int, length: int) -> Iterator[_ZipEntry]:
    """The entries of the central directory, read in bounded windows.

    The caller seeks elsewhere between entries, so every window read seeks first.
    """
    window = b""
    window_at = start  # offset of window[0]
    pos = start
    end = start + length
    index = 0
    while pos < end:
        if pos + _CENTRAL.size > window_at + len(window):
            window, window_at = _read_window(stream, base, pos, end)
        index += 1
        rel = pos - window_at
        if len(window) - rel < _CENTRAL.size:
            raise _Damage(f"zip: central directory entry {index} at byte offset {pos} is cut short")
        fields = _CENTRAL.unpack_from(window, rel)
        if fields[0] != _ZIP_CENTRAL:
            raise _Damage(f"zip: central directory entry {index}: bad signature at byte offset {pos}")
        flags, method = fields[3], fields[4]
        crc, compressed, size = fields[7], fields[8], fields[9]
        name_length, extra_length, comment_length = fields[10], fields[11], fields[12]
        disk, local_offset = fields[13], fields[16]
        entry_length = _CENTRAL.size + name_length + extra_length + comment_length
        if pos + entry_length > end:
            raise _Damage(f"zip: central directory entry {index} at byte offset {pos} overruns the directory")
        if rel + entry_length > len(window):
            window, window_at = _read_window(stream, base, pos, end)
            rel = 0
        name = window[rel + _CENTRAL.size : rel + _CENTRAL.size + name_length]
        extra = window[rel + _CENTRAL.size + name_length : rel + _CENTRAL.size + name_length + extra_length]
        if 0xFFFFFFFF in (compressed, size, local_offset) or disk == 0xFFFF:
            size, compressed, local_offset = _zip64_extra(extra, size, compressed, local_offset, index, pos)
        yield _ZipEntry(index, name, flags, method, crc, compressed, size, local_offset)
        pos += entry_length


def _read_window(stream: BinaryIO, base: int, pos: int, end: int) -> tuple[bytes, int]:
    stream.seek(base + pos)
    # 46 + 3 * 64 KiB is the largest entry, so a 1 MiB window always holds a whole one.
    return _read_all(stream, min(READ_SIZE, end - pos)), pos


def _zip64_extra(
    extra: bytes, size: int, compressed: int, offset: int, index: int, at: int
) -> tuple[int, int, int]:
    """Sizes and offset from the zip64 extra field, for those the entry marks 0xFFFFFFFF."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 0x0001:
            values = extra[pos + 4 : pos + 4 + length]
            wanted = [value == 0xFFFFFFFF for value in (size, compressed, offset)]
            needed = 8 * sum(wanted)
            if len(values) < needed:
                break
            numbers = list(struct.unpack_from(f"<{sum(wanted)}Q", values))
            size = numbers.pop(0) if wanted[0] else size
            compressed = numbers.pop(0) if wanted[1] else compressed
            offset = numbers.pop(0) if wanted[2] else offset
            return size, compressed, offset
        pos += 4 + length
    raise _Damage(
        f"zip: central directory entry {index} at byte offset {at}: zip64 extra field missing or short"
    )


def _check_zip_entry(stream: BinaryIO, base: int, entry: _ZipEntry, concat: int, cd_start: int) -> str:
    """Check one entry against its local header and CRC; return a note if it was not checked."""
    at = entry.local_offset + concat
    label = entry.label()
    if at + _LOCAL.size > cd_start:
        raise _Damage(f"{label}: local header offset {at} is beyond the central directory")
    stream.seek(base + at)
    header = _read_all(stream, _LOCAL.size)
    if len(header) < _LOCAL.size:
        raise _Damage(f"truncated: {label}: local header at byte offset {at} is cut short")
    fields = _LOCAL.unpack(header)
    if fields[0] != _ZIP_LOCAL:
        raise _Damage(f"{label}: no local header at byte offset {at}")
    method, name_length, extra_length = fields[3], fields[9], fields[10]
    name = _read_all(stream, name_length)
    if name != entry.name:
        raise _Damage(f"{label}: local header at byte offset {at} names {_quote(name)}")
    if method != entry.method:
        raise _Damage(
            f"{label}: local header at byte offset {at} says method {method}, directory {entry.method}"
        )
    data_at = at + _LOCAL.size + name_length + extra_length
    if data_at + entry.compressed > cd_start:
        raise _Damage(
            f"{label}: data at byte offset {data_at} ({entry.compressed} bytes) runs into the "
            "central directory"
        )
    if entry.flags & 0x01:
        return "encrypted, CRC not checked"
    if entry.method not in _CHECKED_METHODS:
        return f"compression method {entry.method} not supported, CRC not checked"
    stream.seek(base + data_at)
    crc, size = _zip_entry_data(stream, entry, data_at, label)
    if crc != entry.crc:
        raise _Damage(
            f"{label}: CRC32 mismatch for the data at byte offset {data_at}: directory says "
            f"{entry.crc:#010x}, data gives {crc:#010x}"
        )
    if size != entry.size:
        raise _Damage(
            f"{label}: size mismatch for the data at byte offset {data_at}: directory says "
            f"{entry.size} bytes, data has {size}"
        )
    return ""


def _zip_entry_data(stream: BinaryIO, entry: _ZipEntry, data_at: int, label: str) -> tuple[int, int]:
    """CRC32 and length of an entry's uncompressed data, streamed."""
    crc = 0
    size = 0
    left = entry.compressed
    inflater = _Inflater() if entry.method == 8 else None
    bunzip = bz2.BZ2Decompressor() if entry.method == 12 else None
    while left:
        data = stream.read(min(READ_SIZE, left))
        if not data:
            raise _Damage(f"truncated: {label}: data at byte offset {data_at} ends early")
        left -= len(data)
        try:
            if inflater is not None:
                pieces: Iterator[bytes] = inflater.feed(data)
            elif bunzip is not None:
                pieces = _bunzip(bunzip, data)
            else:
                pieces = iter((data,))
            for out in pieces:
                crc = zlib.crc32(out, crc)
                size += len(out)
        except _CorruptDeflate as exc:
            raise _Damage(f"{label}: corrupt deflate data at byte offset {data_at} ({exc.reason})") from None
        # bz2 reports bad data as OSError; nothing here reads the file, so it is not I/O.
        except (OSError, EOFError) as exc:
            raise _Damage(f"{label}: corrupt bzip2 data at byte offset {data_at} ({exc})") from None
        if (inflater is not None and inflater.eof) or (bunzip is not None and bunzip.eof):
            break
    if (inflater is not None and not inflater.eof) or (bunzip is not None and not bunzip.eof):
        raise _Damage(
            f"{label}: compressed data at byte offset {data_at} ends before its end-of-stream marker"
        )
    return crc, size


def _bunzip(decompressor: bz2.BZ2Decompressor, data: bytes) -> Iterator[bytes]:
    out = decompressor.decompress(data, OUT_LIMIT)
    while True:
        if out:
            yield out
        if decompressor.eof or decompressor.needs_input:
            return
        out = decompressor.decompress(b"", OUT_LIMIT)
