"""CRC-64/XZ (the value OSS calls ``x-oss-hash-crc64ecma``) and SHA-256 helpers.

The hot path uses ``fastcrc`` (SIMD, releases the GIL so that worker threads hash in
parallel). ``crcmod`` is the reference implementation: tests use it as the oracle and it is
the fallback when the fast backend is not importable. ``combine`` joins the CRCs of two
adjacent byte ranges without reading them again (arithmetic over GF(2), as zlib's
``crc32_combine``), which is what lets segmented downloads be checked as they stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache
from typing import Protocol

import crcmod

# CRC-64/XZ in crcmod's terms: polynomial with its x^64 term, reflected, init 0 with xorout,
# which crcmod turns into the usual init=xorout=0xFFFFFFFFFFFFFFFF of the catalogue.
_reference: Callable[..., int] = crcmod.mkCrcFun(
    0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True
)

try:
    import fastcrc as _fastcrc

    _fast_xz: Callable[..., int] | None = _fastcrc.crc64.xz
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    _fast_xz = None

BACKEND = "fastcrc" if _fast_xz is not None else "crcmod"

_REFLECTED_POLY = 0xC96C5795D7870F42  # 0x42F0E1EBA9EA3693 bit-reversed
_X0 = 1 << 63  # the polynomial "1" in reflected representation


def crc64_reference(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-64/XZ by crcmod: slow, independent, the oracle for tests."""
    return int(_reference(bytes(data), crc))


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-64/XZ of ``data``, continuing from ``crc`` (the CRC of the bytes before it)."""
    if _fast_xz is not None:
        return int(_fast_xz(data, initial=crc)) if crc else int(_fast_xz(data))
    return crc64_reference(data, crc)


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial, both in reflected representation."""
    m = _X0
    product = 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ _REFLECTED_POLY if b & 1 else b >> 1


@cache
def _x2n_table() -> tuple[int, ...]:
    """x^(2^k) modulo the polynomial, for k = 0..63."""
    table = [0] * 64
    p = _X0 >> 1  # x^1
    for k in range(64):
        table[k] = p
        p = _multmodp(p, p)
    return tuple(table)


def _x8nmodp(n: int) -> int:
    """x^(8n) modulo the polynomial: the operator that shifts a CRC past n zero bytes."""
    table = _x2n_table()
    p = _X0
    k = 3
    while n:
        if n & 1:
            p = _multmodp(table[k & 63], p)
        n >>= 1
        k += 1
    return p


def combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """CRC of A+B from crc(A), crc(B) and len(B), without the bytes."""
    if length_b < 0:
        raise ValueError("length_b must not be negative")
    if length_b == 0:
        return crc_a
    return _multmodp(_x8nmodp(length_b), crc_a) ^ crc_b


def format_crc(value: int | None) -> str | None:
    """CRC64 as the unsigned decimal string OSS and the manifest use."""
    return None if value is None else str(value)


def parse_crc(text: object) -> int | None:
    """Parse an unsigned decimal CRC64 (API Checksum, OSS header); None when absent or junk."""
    if text is None:
        return None
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        value = text
    else:
        s = str(text).strip()
        if not s.isdigit():
            return None
        value = int(s)
    if 0 <= value < 1 << 64:
        return value
    return None


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


def sha256() -> Hasher:
    return hashlib.sha256()
