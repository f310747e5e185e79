"""Small deterministic sample archives, sound and damaged, for ``fetcher verify --deep``.

:func:`build_samples` returns the same bytes on every call (fixed names, modes and mtimes,
content from a seeded generator; compressed bytes as the installed zlib and bzip2 make
them), so tests, the demo and user drills all see the same files. Each damaged sample is a copy of the matching good one with one realistic fault:

====================  ==================================================================
``damaged.tar.gz``    ``good.tar.gz`` cut at 60 % of its length (an interrupted download)
``damaged.gz``        one byte flipped in the data of gzip member 2 (a stored deflate
                      block, so the data still inflates and only the member's CRC32 tells)
``damaged.tar``       one byte flipped in the name field of the header of tar member 4
``damaged.zip``       one byte flipped in the data of zip entry 1 (stored): CRC32 differs
``damaged.xbstream``  one byte flipped in the payload of xbstream chunk 3: checksum differs
====================  ==================================================================

The good ones: ``good.tar`` (pax global header, directories, a symlink, a GNU long name, a
pax non-ASCII name, an empty file), ``good.tar.gz`` (that tar, gzipped), ``good.gz`` (a
three-member SQL dump, one member stored, one with a file name in its header),
``good.zip`` (stored, deflate and bzip2 entries, a directory, an archive comment) and
``good.xbstream`` (interleaved payload chunks, a sparse chunk, an EOF chunk per file).

The archives are built with the standard library (tarfile, gzip, zipfile); xbstream, which
has no writer there, is written by :func:`xbstream_chunk` and :func:`xbstream_eof` after
Percona's layout (see :mod:`fetcher.deep`).
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from typing import Literal

__all__ = ["build_samples", "xbstream_chunk", "xbstream_eof"]

_SEED = 20240229
_MTIME = 1_700_000_000  # fixed, so that the bytes never depend on the clock
_ZIP_TIME = (2024, 2, 29, 3, 4, 6)
_XB_MAGIC = b"XBSTCK01"

_TarFormat = Literal[0, 1, 2]  # tarfile.USTAR_FORMAT, GNU_FORMAT, PAX_FORMAT


def build_samples() -> dict[str, bytes]:
    """Every sample, by file name; deterministic (same bytes on every call)."""
    rng = random.Random(_SEED)
    good_tar, tar_headers = _good_tar(rng)
    good_gz, stored_member = _good_gzip(rng)
    good_zip = _good_zip(rng)
    good_xbstream, payloads = _good_xbstream(rng)
    good_tar_gz = gzip.compress(good_tar, compresslevel=6, mtime=0)

    # The name field of member 4's header: only the header checksum can notice.
    damaged_tar = _flip(good_tar, tar_headers[3] + 20)
    stored_at, stored_length = stored_member
    damaged_gz = _flip(good_gz, stored_at + stored_length // 2)
    entry_at, entry_length = _zip_entry_data(good_zip, 0)
    damaged_zip = _flip(good_zip, entry_at + entry_length // 2)
    payload_at, payload_length = payloads[2]
    damaged_xbstream = _flip(good_xbstream, payload_at + payload_length // 3)

    return {
        "good.tar.gz": good_tar_gz,
        "damaged.tar.gz": good_tar_gz[: len(good_tar_gz) * 3 // 5],
        "good.gz": good_gz,
        "damaged.gz": damaged_gz,
        "good.tar": good_tar,
        "damaged.tar": damaged_tar,
        "good.zip": good_zip,
        "damaged.zip": damaged_zip,
        "good.xbstream": good_xbstream,
        "damaged.xbstream": damaged_xbstream,
    }


def _flip(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 0x5A
    return bytes(damaged)


# ------------------------------------------------------------------------------- content

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def _sql_dump(rng: random.Random, table: str, rows: int) -> bytes:
    """A mysqldump-like text: compressible, but not trivially so."""
    lines = [
        "-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n",
        f"DROP TABLE IF EXISTS `{table}`;\n",
        f"CREATE TABLE `{table}` (`id` int NOT NULL, `name` varchar(64), `note` text, "
        "`amount` decimal(12,2), PRIMARY KEY (`id`)) ENGINE=InnoDB;\n",
    ]
    for row in range(1, rows + 1):
        note = " ".join(rng.choices(_WORDS, k=rng.randint(3, 12)))
        name = rng.choice(_WORDS).title() + str(rng.randint(1, 99999))
        amount = rng.randint(0, 10_000_000) / 100
        lines.append(f"INSERT INTO `{table}` VALUES ({row},'{name}','{note}',{amount:.2f});\n")
    lines.append("-- Dump completed\n")
    return "".join(lines).encode()


# ----------------------------------------------------------------------------------- tar


def _tar_info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = mode
    info.mtime = _MTIME
    info.uid = info.gid = 27
    info.uname = info.gname = "mysql"
    return info


def _good_tar(rng: random.Random) -> tuple[bytes, list[int]]:
    """A tar mixing ustar, GNU (long name) and pax headers; returns the member header offsets."""
    long_name = "backup/db1/" + "partitioned_table_with_a_very_long_name_" * 3 + "p0.ibd"
    members: list[tuple[tarfile.TarInfo, bytes, _TarFormat]] = []

    def add(info: tarfile.TarInfo, data: bytes = b"", fmt: _TarFormat = tarfile.USTAR_FORMAT) -> None:
        info.size = len(data)
        members.append((info, data, fmt))

    add(_tar_info("backup/", kind=tarfile.DIRTYPE, mode=0o755))
    add(_tar_info("backup/xtrabackup_checkpoints"), b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 4711\n")
    add(_tar_info("backup/db1/", kind=tarfile.DIRTYPE, mode=0o755))
    add(_tar_info("backup/db1/orders.sql"), _sql_dump(rng, "orders", 500))
    add(_tar_info(long_name), rng.randbytes(12_000), tarfile.GNU_FORMAT)
    add(_tar_info("backup/db1/caf\u00e9_\u00fc\u00f1\u00ee.ibd"), rng.randbytes(7_000), tarfile.PAX_FORMAT)
    link = _tar_info("backup/latest", kind=tarfile.SYMTYPE)
    link.linkname = "db1"
    add(link)
    add(_tar_info("backup/ibdata1"), rng.randbytes(16_384))
    add(_tar_info("backup/empty.log"), b"")

    out = bytearray(tarfile.TarInfo.create_pax_global_header({"comment": "fetcher deep-check sample"}))
    headers: list[int] = []
    for info, data, fmt in members:
        header = info.tobuf(fmt, "utf-8", "surrogateescape")
        # The member's own header is the last block; GNU/pax extension headers precede it.
        headers.append(len(out) + len(header) - tarfile.BLOCKSIZE)
        out += header + data + bytes(-len(data) % tarfile.BLOCKSIZE)
    out += bytes(2 * tarfile.BLOCKSIZE)
    out += bytes(-len(out) % tarfile.RECORDSIZE)
    return bytes(out), headers


# ---------------------------------------------------------------------------------- gzip


def _good_gzip(rng: random.Random) -> tuple[bytes, tuple[int, int]]:
    """A three-member gzip SQL dump; returns it and (offset, length) of member 2's data.

    Member 2 is stored (level 0): its bytes appear verbatim after a 5-byte block header, so
    a flipped byte there still inflates and is caught by nothing but the CRC32.
    """
    first = gzip.compress(_sql_dump(rng, "customers", 300), compresslevel=6, mtime=0)
    stored_text = _sql_dump(rng, "invoices", 120)
    second = gzip.compress(stored_text, compresslevel=0, mtime=0)
    named = io.BytesIO()
    with gzip.GzipFile(filename="dump-part3.sql", mode="wb", fileobj=named, mtime=0) as member:
        member.write(_sql_dump(rng, "payments", 400))
    # 10-byte header, then a 5-byte stored block header (BFINAL/BTYPE byte, LEN, NLEN).
    stored_at = len(first) + 10 + 5
    assert second[10 + 5 : 10 + 5 + 64] == stored_text[:64]
    return first + second + named.getvalue(), (stored_at, min(len(stored_text), 0xFFFF))


# ----------------------------------------------------------------------------------- zip


def _good_zip(rng: random.Random) -> bytes:
    buffer = io.BytesIO()
    entries: Sequence[tuple[str, bytes, int]] = (
        ("backup/manifest.txt", b"full backup of instance rm-sample\n" * 40, zipfile.ZIP_STORED),
        ("backup/", b"", zipfile.ZIP_STORED),
        ("backup/orders.sql", _sql_dump(rng, "orders", 600), zipfile.ZIP_DEFLATED),
        ("backup/blob.bin", rng.randbytes(20_000), zipfile.ZIP_DEFLATED),
        ("backup/audit.log", _sql_dump(rng, "audit", 150), zipfile.ZIP_BZIP2),
    )
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, method in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = method
            info.external_attr = (0o40755 if name.endswith("/") else 0o100644) << 16
            archive.writestr(info, data)
        archive.comment = b"fetcher deep-check sample"
    return buffer.getvalue()


def _zip_entry_data(archive: bytes, index: int) -> tuple[int, int]:
    """(offset, length) of the stored data of entry ``index``."""
    with zipfile.ZipFile(io.BytesIO(archive)) as reader:
        info = reader.infolist()[index]
    name_length, extra_length = struct.unpack_from("<HH", archive, info.header_offset + 26)
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


# ------------------------------------------------------------------------------ xbstream


def xbstream_chunk(
    path: str,
    payload: bytes,
    offset: int,
    *,
    sparse_map: Sequence[tuple[int, int]] = (),
    flags: int = 0,
) -> bytes:
    """One payload chunk (``P``), or sparse chunk (``S``) when ``sparse_map`` is given.

    ``sparse_map`` lists (skip, length) pairs; its lengths add up to ``len(payload)``.
    """
    name = path.encode()
    sparse = b"".join(struct.pack("<II", skip, length) for skip, length in sparse_map)
    kind = b"S" if sparse_map else b"P"
    checksum = zlib.crc32(payload, zlib.crc32(sparse))
    header = _XB_MAGIC + bytes([flags]) + kind + struct.pack("<I", len(name)) + name
    if sparse_map:
        header += struct.pack("<I", len(sparse_map))
    return header + struct.pack("<QQI", len(payload), offset, checksum) + sparse + payload


def xbstream_eof(path: str) -> bytes:
    """The chunk (``E``) that closes ``path``."""
    name = path.encode()
    return _XB_MAGIC + b"\x00E" + struct.pack("<I", len(name)) + name


def _good_xbstream(rng: random.Random) -> tuple[bytes, list[tuple[int, int]]]:
    """An xbstream as xtrabackup writes it; returns it and (offset, length) of each payload.

    As in a real backup, ``xtrabackup_logfile`` (the redo log) is open from the first chunk
    to the last, interleaved with the data files.
    """
    log = [rng.randbytes(6_000) for _ in range(3)]
    ibdata = [rng.randbytes(16_384), rng.randbytes(16_384)]
    page = rng.randbytes(4_096)
    pieces: list[tuple[bytes, int]] = []  # (chunk, payload length; 0 for EOF chunks)

    def chunk(path: str, payload: bytes, offset: int, sparse: Sequence[tuple[int, int]] = ()) -> None:
        pieces.append((xbstream_chunk(path, payload, offset, sparse_map=sparse), len(payload)))

    chunk("xtrabackup_logfile", log[0], 0)
    chunk("ibdata1", ibdata[0], 0)
    chunk("ibdata1", ibdata[1], len(ibdata[0]))
    pieces.append((xbstream_eof("ibdata1"), 0))
    chunk("xtrabackup_logfile", log[1], len(log[0]))
    chunk("test/t1.ibd", page + page, 0, sparse=((0, 4_096), (12_288, 4_096)))
    pieces.append((xbstream_eof("test/t1.ibd"), 0))
    chunk("backup-my.cnf", b"[mysqld]\ninnodb_page_size=16384\n", 0)
    pieces.append((xbstream_eof("backup-my.cnf"), 0))
    chunk("xtrabackup_checkpoints", b"backup_type = full-backuped\nto_lsn = 4711\n", 0)
    pieces.append((xbstream_eof("xtrabackup_checkpoints"), 0))
    chunk("xtrabackup_logfile", log[2], len(log[0]) + len(log[1]))
    pieces.append((xbstream_eof("xtrabackup_logfile"), 0))

    out = bytearray()
    payloads: list[tuple[int, int]] = []
    for data, payload_length in pieces:
        out += data
        if payload_length:
            payloads.append((len(out) - payload_length, payload_length))
    return bytes(out), payloads
