"""Parsing and printing of sizes, rates and durations (pure)."""

from __future__ import annotations

import re

from fetcher.errors import UsageError

_BINARY = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_rate(text: str, option: str = "--limit-rate") -> int:
    """``500K``, ``50M``, ``1G`` (binary units, as aria2c), or plain bytes per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt]?)(?:i?[Bb])?(?:/s)?\s*", text)
    if not m:
        raise UsageError(f"{option}: {text!r} is not a rate; use e.g. 500K, 50M or 1G")
    value = int(float(m.group(1)) * _BINARY[m.group(2).upper()])
    if value <= 0:
        raise UsageError(f"{option}: the rate must be greater than zero")
    return value


def parse_duration(text: str, option: str = "--max-age") -> float:
    """``90m``, ``26h``, ``7d``, ``30s`` (or combinations like ``1d12h``) to seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip().lower())
    rebuilt = "".join(f"{n}{u}" for n, u in parts)
    if not parts or rebuilt != re.sub(r"\s+", "", text.strip().lower()):
        raise UsageError(f"{option}: {text!r} is not a duration; use e.g. 90m, 26h or 7d")
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    seconds = sum(float(n) * scale[u] for n, u in parts)
    if seconds <= 0:
        raise UsageError(f"{option}: the duration must be greater than zero")
    return seconds


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
