import os
import random

from hypothesis import given, settings, strategies as st

from fetcher import checksum


def test_check_values_from_protocol() -> None:
    assert checksum.crc64(b"") == 0
    assert checksum.crc64(b"123456789") == 11051210869376104954 == 0x995DC9BBDF1939FA
    assert checksum.crc64(b"hello world") == 5981764153023615706
    assert checksum.crc64(b"12345") == 6748440630437108969
    assert checksum.crc64(b"67890") == 6285347597771850461
    assert checksum.combine(6748440630437108969, 6285347597771850461, 5) == 12811388247244714686
    assert checksum.crc64(b"1234567890") == 12811388247244714686


def test_reference_agrees_with_fast_backend() -> None:
    data = os.urandom(1 << 20)
    assert checksum.crc64(data) == checksum.crc64_reference(data)
    assert checksum.crc64(memoryview(data)[7:]) == checksum.crc64_reference(data[7:])


def test_continuation_matches_whole() -> None:
    data = os.urandom(100_000)
    crc = 0
    for i in range(0, len(data), 7777):
        crc = checksum.crc64(data[i : i + 7777], crc)
    assert crc == checksum.crc64_reference(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.data())
def test_combine_on_random_splits(data: bytes, draw: st.DataObject) -> None:
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    crc = 0
    for a, b in zip(bounds, bounds[1:]):
        crc = checksum.combine(crc, checksum.crc64_reference(data[a:b]), b - a)
    assert crc == checksum.crc64_reference(data)


def test_combine_large_lengths() -> None:
    # A 2 TB file's segments combine in microseconds and stay exact: check the shift
    # operator against an explicit zero run for a size crcmod can still do.
    rng = random.Random(7)
    a = bytes(rng.getrandbits(8) for _ in range(1000))
    zeros = bytes(3 << 20)
    assert checksum.combine(
        checksum.crc64_reference(a), checksum.crc64_reference(zeros), len(zeros)
    ) == checksum.crc64_reference(a + zeros)
    assert 0 <= checksum.combine(123, 456, 2 << 40) < 1 << 64


def test_parse_crc() -> None:
    assert checksum.parse_crc("18358304391234567890") == 18358304391234567890
    assert checksum.parse_crc(12) == 12
    assert checksum.parse_crc(" 12 ") == 12
    for junk in (None, "", "1835830439**********", "-1", str(1 << 64), True, "0x12"):
        assert checksum.parse_crc(junk) is None
