"""``fetcher verify --deep``: structural checks of gzip, tar, zip and xbstream archives.

The samples come from :mod:`fetcher.emulator.archives`; the standard library's own readers
are used as a second opinion on them, so that a builder bug cannot hide a checker bug.
"""

from __future__ import annotations

import bz2
import gzip
import io
import random
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetcher.deep import DeepResult, inspect_archive, inspect_stream
from fetcher.emulator.archives import build_samples, xbstream_chunk, xbstream_eof

SAMPLES = build_samples()
GOOD = {
    "good.tar.gz": "tar.gz",
    "good.gz": "gzip",
    "good.tar": "tar",
    "good.zip": "zip",
    "good.xbstream": "xbstream",
}


def check(data: bytes, name: str = "sample") -> DeepResult:
    return inspect_stream(io.BytesIO(data), display_path=name)


def flip(data: bytes, at: int, mask: int = 0xFF) -> bytes:
    changed = bytearray(data)
    changed[at] ^= mask
    return bytes(changed)


# ------------------------------------------------------------------------------ samples


def test_samples_are_deterministic_and_sized() -> None:
    again = build_samples()
    assert again == SAMPLES
    assert set(SAMPLES) == set(GOOD) | {name.replace("good", "damaged") for name in GOOD}
    for name in GOOD:
        assert 4 * 1024 <= len(SAMPLES[name]) <= 200 * 1024, name
        assert SAMPLES[name.replace("good", "damaged")] != SAMPLES[name]


def test_standard_library_agrees_with_the_samples() -> None:
    with tarfile.open(fileobj=io.BytesIO(SAMPLES["good.tar.gz"])) as archive:
        names = archive.getnames()
        kinds = {member.type for member in archive.getmembers()}
    assert len(names) == 9 and any(len(name) > 100 for name in names)
    assert {tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.REGTYPE} <= kinds
    assert gzip.decompress(SAMPLES["good.tar.gz"]) == SAMPLES["good.tar"]
    assert gzip.decompress(SAMPLES["good.gz"]).count(b"-- Dump completed") == 3
    with pytest.raises(gzip.BadGzipFile, match="CRC"):
        gzip.decompress(SAMPLES["damaged.gz"])
    with pytest.raises(EOFError):
        gzip.decompress(SAMPLES["damaged.tar.gz"])
    with tarfile.open(fileobj=io.BytesIO(SAMPLES["damaged.tar"])) as archive:
        assert len(archive.getnames()) == 3  # tarfile stops at the bad header
    with zipfile.ZipFile(io.BytesIO(SAMPLES["good.zip"])) as archive:
        assert archive.testzip() is None
        assert {info.compress_type for info in archive.infolist()} == {0, 8, 12}
    with zipfile.ZipFile(io.BytesIO(SAMPLES["damaged.zip"])) as archive:
        assert archive.testzip() == "backup/manifest.txt"


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_samples_are_ok(name: str) -> None:
    result = check(SAMPLES[name], name)
    assert result == DeepResult(name, "ok", GOOD[name], "")


@pytest.mark.parametrize(
    ("name", "fmt", "words"),
    [
        ("damaged.tar.gz", "tar.gz", ["truncated", "gzip member 1", "before the end of the deflate stream"]),
        ("damaged.gz", "gzip", ["gzip member 2", "CRC32 mismatch", "trailer says"]),
        ("damaged.tar", "tar", ["tar member 4", "header checksum mismatch", "byte offset 3072", "'backup/db1/'"]),
        ("damaged.zip", "zip", ["zip entry 1", "'backup/manifest.txt'", "CRC32 mismatch"]),
        ("damaged.xbstream", "xbstream", ["xbstream chunk 3", "'ibdata1'", "checksum mismatch"]),
    ],
)
def test_damaged_samples_say_where(name: str, fmt: str, words: list[str]) -> None:
    result = check(SAMPLES[name], name)
    assert (result.structure, result.format) == ("damaged", fmt)
    for word in words:
        assert word in result.detail


def test_inspect_archive_reads_files_and_names_them(tmp_path: Path) -> None:
    path = tmp_path / "backup.tar.gz"
    path.write_bytes(SAMPLES["damaged.gz"])
    result = inspect_archive(path)
    assert (result.path, result.structure) == (str(path), "damaged")
    assert inspect_archive(path, display_path="shown").path == "shown"


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        inspect_archive(tmp_path / "absent.tar.gz")


@pytest.mark.parametrize(
    ("real", "named", "fmt"),
    [("good.tar.gz", "backup.zip", "tar.gz"), ("good.zip", "backup.tar.gz", "zip"), ("good.tar", "x.xb", "tar")],
)
def test_format_comes_from_content_not_name(tmp_path: Path, real: str, named: str, fmt: str) -> None:
    path = tmp_path / named
    path.write_bytes(SAMPLES[real])
    assert inspect_archive(path).format == fmt


# ------------------------------------------------------------------------- unrecognised


@pytest.mark.parametrize(
    ("data", "note"),
    [
        (b"", "empty file"),
        (random.Random(7).randbytes(100_000), "format not recognised"),
        (b"\x00\x01binary" * 100, "format not recognised"),
        (b"-- MySQL dump\nINSERT INTO t VALUES (1);\n" * 100, "plain text"),
        (bz2.compress(b"select 1;\n" * 1000), "bzip2"),
        (b"\x1f", "format not recognised"),
        (bytes(20_480), "format not recognised"),  # zero-filled, not an (empty) tar
    ],
)
def test_unrecognised_is_not_damage(data: bytes, note: str) -> None:
    result = check(data)
    assert (result.structure, result.format) == ("unrecognised", None)
    assert note in result.detail
    if note == "format not recognised":
        assert result.detail == note


# ----------------------------------------------------------------------------- truncation


def _tar_required_end(data: bytes) -> int:
    """Where the end-of-archive marker ends: what follows is record padding."""
    last = len(data.rstrip(b"\0"))
    return -(-last // 512) * 512 + 1024


@pytest.mark.parametrize("name", sorted(GOOD))
def test_truncation_is_damage(name: str) -> None:
    data = SAMPLES[name]
    end = _tar_required_end(data) if name == "good.tar" else len(data)
    cuts = {300, 600, end // 10, end // 3, end // 2, end - 513, end - 512, end - 100}
    cuts |= {end - 9, end - 8, end - 4, end - 1}
    for cut in sorted(cuts):
        result = check(data[:cut])
        assert result.structure == "damaged", (cut, result)
        assert result.format == GOOD[name], (cut, result)
        assert "truncated" in result.detail or name == "good.gz", (cut, result)


def test_tar_record_padding_after_the_end_marker_is_optional() -> None:
    data = SAMPLES["good.tar"]
    end = _tar_required_end(data)
    assert end < len(data)
    assert check(data[:end]).structure == "ok"
    assert check(data[: end - 1]).structure == "damaged"
    lone = check(data[: end - 512])
    assert "one zero block" in lone.detail


def test_truncated_gzip_trailer_is_named() -> None:
    result = check(SAMPLES["good.gz"][:-3])
    assert "trailer incomplete" in result.detail and "gzip member 3" in result.detail


def test_xbstream_cut_at_a_chunk_boundary_leaves_a_file_open() -> None:
    data = SAMPLES["good.xbstream"]
    cut = data.rindex(b"XBSTCK01")  # before the last EOF chunk
    result = check(data[:cut])
    assert result.structure == "damaged"
    assert "no EOF chunk for 'xtrabackup_logfile'" in result.detail


# ------------------------------------------------------------------------ trailing data


@pytest.mark.parametrize("name", ["good.gz", "good.tar.gz", "good.tar", "good.zip"])
def test_trailing_zero_padding_is_accepted(name: str) -> None:
    assert check(SAMPLES[name] + bytes(5000)).structure == "ok"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("good.gz", "after the last member (3)"),
        ("good.tar.gz", "after the last member (1)"),
        ("good.tar", "after the end-of-archive marker"),
        ("good.zip", "after the end of central directory record: non-zero data"),
        ("good.xbstream", "bad chunk magic"),
    ],
)
def test_trailing_garbage_is_damage(name: str, words: str) -> None:
    result = check(SAMPLES[name] + bytes(100) + b"garbage")
    assert result.structure == "damaged"
    assert words in result.detail


# ----------------------------------------------------------------------------------- gzip


def _gzip_member_with_all_header_fields(payload: bytes) -> bytes:
    header = b"\x1f\x8b\x08" + bytes([0x02 | 0x04 | 0x08 | 0x10]) + struct.pack("<I", 1_700_000_000) + b"\x00\x03"
    header += struct.pack("<H", 6) + b"AB\x02\x00hi" + b"dump.sql\x00" + b"nightly\x00"
    header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(payload) + deflate.flush()
    return header + body + struct.pack("<II", zlib.crc32(payload), len(payload))


def test_gzip_header_fields_and_header_crc() -> None:
    member = _gzip_member_with_all_header_fields(b"select 1;\n" * 500)
    assert gzip.decompress(member) == b"select 1;\n" * 500
    assert check(member + SAMPLES["good.gz"]) == DeepResult("sample", "ok", "gzip", "")
    renamed = member.replace(b"dump.sql", b"dump.sqk")
    result = check(renamed)
    assert result.structure == "damaged" and "header CRC16 mismatch" in result.detail


def test_gzip_corrupt_deflate_data_is_located() -> None:
    data = SAMPLES["good.tar.gz"]
    early = check(flip(data, 12))
    assert early.structure == "damaged"
    assert early.detail.startswith("gzip member 1 (at byte 0): corrupt deflate data (")
    assert "detected in compressed bytes 10-" in early.detail


def test_gzip_damage_is_named_before_its_symptom_in_the_tar() -> None:
    # The flipped byte inflates to garbage that the tar parser sees first; the cause is
    # still the gzip member, and its CRC says so.
    result = check(flip(SAMPLES["good.tar.gz"], 5000))
    assert (result.structure, result.format) == ("damaged", "tar.gz")
    assert result.detail.startswith("gzip member 1 (at byte 0): CRC32 mismatch at byte offset ")
    assert "; first symptom: tar member 5: header checksum mismatch" in result.detail
    assert "of the uncompressed stream" in result.detail


def test_sound_gzip_around_a_damaged_tar_blames_the_tar() -> None:
    result = check(gzip.compress(SAMPLES["damaged.tar"], mtime=0))
    assert (result.structure, result.format) == ("damaged", "tar.gz")
    assert result.detail.startswith("tar member 4: header checksum mismatch at byte offset 3072 of the")


def test_long_names_are_shortened_in_messages() -> None:
    payload = b"z" * 2000
    info = tarfile.TarInfo("d/" + "n" * 300 + "/tail.ibd")
    info.size = len(payload)
    data = info.tobuf(tarfile.GNU_FORMAT) + payload
    detail = check(data[:-500]).detail
    assert "nnn...nnn" in detail and "tail.ibd'" in detail and len(detail) < 250


def test_gzip_isize_mismatch() -> None:
    data = bytearray(SAMPLES["good.tar.gz"])
    data[-4] ^= 0x01
    result = check(bytes(data))
    assert "length mismatch" in result.detail


def test_gzip_of_xbstream_and_of_text() -> None:
    assert check(gzip.compress(SAMPLES["good.xbstream"], mtime=0)).format == "xbstream.gz"
    damaged = check(gzip.compress(SAMPLES["damaged.xbstream"], mtime=0))
    assert (damaged.structure, damaged.format) == ("damaged", "xbstream.gz")
    assert "of the uncompressed stream" in damaged.detail
    tiny = check(gzip.compress(b"hello", mtime=0))
    assert (tiny.structure, tiny.format) == ("ok", "gzip")


class _ZeroReader(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._left)
        buffer[:count] = bytes(count)
        self._left -= count
        return count


def test_memory_stays_bounded_on_highly_compressible_input(tmp_path: Path) -> None:
    size = 96 << 20
    path = tmp_path / "zeros.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as packed, tarfile.open(fileobj=packed, mode="w") as archive:
        info = tarfile.TarInfo("ibdata1")
        info.size = size
        archive.addfile(info, io.BufferedReader(_ZeroReader(size)))
    assert path.stat().st_size < size // 100
    tracemalloc.start()
    try:
        result = inspect_archive(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.structure == "ok" and result.format == "tar.gz"
    assert peak < 8 << 20, peak


def test_larger_tar_gz_written_to_disk(tmp_path: Path) -> None:
    rng = random.Random(3)
    text = gzip.decompress(SAMPLES["good.gz"])
    path = tmp_path / "big.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as packed, tarfile.open(fileobj=packed, mode="w") as archive:
        for index, blob in enumerate([text * 80, rng.randbytes(18 << 20), bytes(5 << 20), text[:12345]]):
            info = tarfile.TarInfo(f"backup/part{index}")
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    data = path.read_bytes()
    assert len(data) > 18 << 20
    assert inspect_archive(path) == DeepResult(str(path), "ok", "tar.gz", "")
    path.write_bytes(flip(data, len(data) // 2))
    assert inspect_archive(path).structure == "damaged"


# ------------------------------------------------------------------------------------ tar


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = b""
    for info, data in members:
        out += info.tobuf() + data + bytes(-len(data) % 512)
    return out + bytes(1024)


def _header_with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def test_pax_size_record_overrides_the_header_size() -> None:
    # How tar stores members over 8 GiB: the ustar size field cannot hold them.
    payload = bytes(range(256)) * 9
    info = tarfile.TarInfo("big.ibd")
    info.size = 0
    info.pax_headers = {"size": str(len(payload))}
    data = info.tobuf(tarfile.PAX_FORMAT) + payload + bytes(-len(payload) % 512) + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getmembers()[0].size == len(payload)
    assert check(data).structure == "ok"
    without_pax = data[1024:]  # the same member, ustar size 0: its data reads as a header
    assert check(without_pax).structure == "damaged"


def test_base256_size_field() -> None:
    payload = b"x" * 1000
    block = bytearray(tarfile.TarInfo("data").tobuf(tarfile.GNU_FORMAT))
    block[124:136] = b"\x80" + (1000).to_bytes(11, "big")
    data = _header_with_checksum(block) + payload + bytes(24) + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getmembers()[0].size == 1000
    assert check(data).structure == "ok"


def test_plain_tar_on_disk_seeks_over_large_members(tmp_path: Path) -> None:
    big = tarfile.TarInfo("ibdata1")
    big.size = 9 << 20
    small = tarfile.TarInfo("xtrabackup_checkpoints")
    small.size = 10
    data = _tar((big, bytes(big.size)), (small, b"to_lsn = 1"))
    path = tmp_path / "backup.tar"
    path.write_bytes(data)
    assert inspect_archive(path) == DeepResult(str(path), "ok", "tar", "")
    for cut, words in [
        (5 << 20, "inside the data of tar member 1 ('ibdata1')"),
        (512 + (9 << 20) + 100, "inside a header block"),
        (len(data) - 1024, "end-of-archive marker missing; stream ends at byte offset"),
    ]:
        path.write_bytes(data[:cut])
        seeking = inspect_archive(path)
        assert seeking.structure == "damaged" and words in seeking.detail, (cut, seeking)
        assert f"byte offset {cut}" in seeking.detail
        reading = inspect_stream(_Unseekable(data[:cut]))  # type: ignore[arg-type]
        assert reading.detail == seeking.detail


def test_old_gnu_sparse_member_with_extension_block() -> None:
    block = bytearray(tarfile.TarInfo("disk.img").tobuf(tarfile.GNU_FORMAT))
    block[156] = ord("S")
    block[124:136] = b"%011o\x00" % 1024  # bytes stored: the two data regions
    block[386:410] = b"%011o\x00%011o\x00" % (0, 512)
    block[482] = 1  # an extension block follows
    block[483:495] = b"%011o\x00" % 8192  # the file's real size
    extension = bytearray(512)
    extension[0:24] = b"%011o\x00%011o\x00" % (4096, 512)
    payload = b"s" * 1024
    after = tarfile.TarInfo("after.txt")
    after.size = 3
    data = _header_with_checksum(block) + bytes(extension) + payload + after.tobuf() + b"abc" + bytes(509 + 1024)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getnames() == ["disk.img", "after.txt"]
    assert check(data) == DeepResult("sample", "ok", "tar", "")
    assert "inside the data of tar member 1 ('disk.img')" in check(data[:1024 + 100]).detail


def test_tar_lone_zero_block_and_dangling_extension_header() -> None:
    one = tarfile.TarInfo("a")
    two = tarfile.TarInfo("b")
    data = one.tobuf() + bytes(512) + two.tobuf() + bytes(1024)
    assert "lone zero block" in check(data).detail
    dangling = tarfile.TarInfo("L" * 200).tobuf(tarfile.GNU_FORMAT)[:-512]
    result = check(dangling)
    assert result.structure == "damaged" and "extension header" in result.detail


def test_tar_bad_size_field() -> None:
    block = bytearray(tarfile.TarInfo("a").tobuf())
    block[124:136] = b"0000000009x\x00"
    result = check(_header_with_checksum(block) + bytes(1024))
    assert "invalid size field" in result.detail


def test_tar_truncated_inside_data_names_the_member() -> None:
    payload = b"y" * 5000
    info = tarfile.TarInfo("db/big.ibd")
    info.size = len(payload)
    data = _tar((info, payload))
    result = check(data[: 512 + 3000])
    assert "inside the data of tar member 1 ('db/big.ibd')" in result.detail
    padding = check(data[: 512 + 5000 + 10])
    assert "padding" in padding.detail


# ------------------------------------------------------------------------------------ zip


def _zip(entries: list[tuple[str, bytes, int]], comment: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, method in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            archive.writestr(info, data)
        archive.comment = comment
    return buffer.getvalue()


def _entry_data(data: bytes, index: int) -> tuple[int, int]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.infolist()[index]
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def test_zip_deflated_entry_flip_with_intact_directory() -> None:
    data = SAMPLES["good.zip"]
    at, length = _entry_data(data, 2)
    result = check(flip(data, at + length // 2))
    assert result.structure == "damaged"
    assert "zip entry 3 ('backup/orders.sql')" in result.detail


def test_zip_bzip2_entry_flip() -> None:
    data = SAMPLES["good.zip"]
    at, length = _entry_data(data, 4)
    result = check(flip(data, at + length // 2))
    assert result.structure == "damaged" and "zip entry 5" in result.detail


def test_zip_local_header_must_match_the_directory() -> None:
    data = SAMPLES["good.zip"]
    at, _ = _entry_data(data, 0)
    renamed = data[: at - 3] + b"tXt" + data[at:]
    assert "names 'backup/manifest.tXt'" in check(renamed).detail


def test_zip_unsupported_method_is_ok_with_a_note() -> None:
    data = _zip([("a.txt", b"a" * 1000, zipfile.ZIP_DEFLATED), ("b.xz", b"b" * 1000, zipfile.ZIP_LZMA)])
    result = check(data)
    assert (result.structure, result.format) == ("ok", "zip")
    assert result.detail == (
        "1 of 2 entries not checked: zip entry 2 ('b.xz'): compression method 14 not supported, CRC not checked"
    )


def test_zip_empty_archive_and_comment() -> None:
    assert check(_zip([], comment=b"nothing here")) == DeepResult("sample", "ok", "zip", "")


def _as_zip64(data: bytes) -> bytes:
    """The same archive with zip64 end records, as writers use past 65535 entries or 4 GiB."""
    eocd = data.rindex(b"PK\x05\x06")
    _, _, _, count, total, cd_size, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", data, eocd)
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, total, cd_size, cd_offset)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd, 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:eocd] + record + locator + end


def test_zip64_end_records() -> None:
    data = _as_zip64(SAMPLES["good.zip"][: -len(b"fetcher deep-check sample")])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None and len(archive.infolist()) == 5
    assert check(data) == DeepResult("sample", "ok", "zip", "")
    damaged = _as_zip64(SAMPLES["damaged.zip"][: -len(b"fetcher deep-check sample")])
    assert "zip entry 1" in check(damaged).detail


def test_zip_entry_count_mismatch() -> None:
    data = bytearray(SAMPLES["good.zip"])
    eocd = bytes(data).rindex(b"PK\x05\x06")
    data[eocd + 10] = 6
    assert "central directory has 5 entries, its end record says 6" in check(bytes(data)).detail


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._inner.readinto(buffer)


def test_zip_needs_a_seekable_stream_but_others_do_not() -> None:
    result = inspect_stream(_Unseekable(SAMPLES["good.zip"]))  # type: ignore[arg-type]
    assert (result.structure, result.format) == ("unrecognised", None)
    assert "non-seekable" in result.detail
    for name in ("good.tar.gz", "good.xbstream", "good.tar"):
        assert inspect_stream(_Unseekable(SAMPLES[name])).structure == "ok"  # type: ignore[arg-type]


def test_zip_after_other_bytes_in_the_stream() -> None:
    stream = io.BytesIO(b"header-not-part-of-it" + SAMPLES["good.zip"])
    stream.seek(21)
    assert inspect_stream(stream).structure == "ok"


# ------------------------------------------------------------------------------- xbstream


def test_xbstream_sparse_map_is_checksummed() -> None:
    data = SAMPLES["good.xbstream"]
    at = data.index(b"XBSTCK01\x00S")
    path_length = struct.unpack_from("<I", data, at + 10)[0]
    sparse_map = at + 14 + path_length + 4 + 20
    result = check(flip(data, sparse_map + 2))
    assert "'test/t1.ibd'" in result.detail and "checksum mismatch" in result.detail


def test_xbstream_chunk_types() -> None:
    unknown = b"XBSTCK01\x00Q" + struct.pack("<I", 1) + b"a" + struct.pack("<QQI", 3, 0, 0) + b"abc"
    assert "unknown chunk type 0x51" in check(unknown + xbstream_eof("a")).detail
    ignorable = b"XBSTCK01\x01Q" + unknown[10:]
    stream = xbstream_chunk("a", b"data", 0) + ignorable + xbstream_eof("a")
    assert check(stream).structure == "ok"
    too_long = b"XBSTCK01\x00P" + struct.pack("<I", 600) + b"p" * 600
    assert "path length 600 too large" in check(too_long).detail


def test_xbstream_empty_payload_and_missing_eof() -> None:
    assert check(xbstream_chunk("empty", b"", 0) + xbstream_eof("empty")).structure == "ok"
    result = check(xbstream_chunk("a", b"1", 0) + xbstream_chunk("b", b"2", 0) + xbstream_eof("b"))
    assert result.structure == "damaged" and "no EOF chunk for 'a'" in result.detail


# ------------------------------------------------------------------------------- fuzzing


def _xbstream_payloads(data: bytes) -> Iterator[range]:
    """Checksummed byte ranges (sparse map and payload) of every chunk, parsed independently."""
    pos = 0
    while pos < len(data):
        kind = data[pos + 9 : pos + 10]
        pos += 14 + struct.unpack_from("<I", data, pos + 10)[0]
        if kind == b"E":
            continue
        sparse = 0
        if kind == b"S":
            sparse = struct.unpack_from("<I", data, pos)[0]
            pos += 4
        length = struct.unpack_from("<Q", data, pos)[0]
        pos += 20
        yield range(pos, pos + 8 * sparse + length)
        pos += 8 * sparse + length


def _tar_member_headers(data: bytes) -> Iterator[range]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            yield range(member.offset_data - 512, member.offset_data)


def _checked_positions() -> list[tuple[str, int]]:
    """Bytes where any change must be noticed: covered by a CRC or a header checksum."""
    positions: list[tuple[str, int]] = []
    for chunk in _xbstream_payloads(SAMPLES["good.xbstream"]):
        positions += [("good.xbstream", at) for at in chunk]
    for header in _tar_member_headers(SAMPLES["good.tar"]):
        positions += [("good.tar", at) for at in header if not 148 <= at - header.start < 156]
    zip_data = SAMPLES["good.zip"]
    for index in (0, 2, 3, 4):
        start, length = _entry_data(zip_data, index)
        positions += [("good.zip", at) for at in range(start, start + length)]
    # Deflate data of the single-member tar.gz, and every trailer byte.
    positions += [("good.tar.gz", at) for at in range(10, len(SAMPLES["good.tar.gz"]))]
    return positions


CHECKED = _checked_positions()


def test_checked_regions_parse_as_expected() -> None:
    assert len(list(_xbstream_payloads(SAMPLES["good.xbstream"]))) == 8
    assert len(list(_tar_member_headers(SAMPLES["good.tar"]))) == 9


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(SAMPLES)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=4),
    keep=st.one_of(st.none(), st.floats(0, 1)),
)
def test_random_damage_never_raises(name: str, edits: list[tuple[float, int]], keep: float | None) -> None:
    data = SAMPLES[name]
    for where, mask in edits:
        data = flip(data, int(where * len(data)), mask)
    if keep is not None:
        data = data[: int(keep * len(data))]
    result = check(data)
    assert result.structure in ("ok", "damaged", "unrecognised")
    if result.structure == "damaged":
        assert result.detail
    if result.structure == "unrecognised":
        assert result.format is None


@settings(max_examples=300, deadline=None)
@given(target=st.sampled_from(CHECKED))
def test_a_changed_byte_in_checked_data_is_never_ok(target: tuple[str, int]) -> None:
    # Every bit flipped: a changed deflate byte always changes some bit that matters (a
    # byte is never all padding), and CRC32 catches every single-byte change.
    name, at = target
    result = check(flip(SAMPLES[name], at, 0xFF))
    assert result.structure == "damaged", (name, at, result)
