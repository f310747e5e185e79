"""Scheduled integrity checks: is the newest full backup there, recent and downloadable?

``assess`` is pure (backup sets, the time and a probe result in; a verdict out). ``probe``
makes the one request per instance the contract allows: a GET of ``Range: bytes=0-0`` on
the newest set's URL (pre-signed URLs are signed for GET, so no HEAD), comparing the
object's ``x-oss-hash-crc64ecma`` and total size with the API's Checksum and BackupSize.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import aiohttp
from yarl import URL

from fetcher.api.client import RdsClient
from fetcher.api.models import BackupSet
from fetcher.checksum import parse_crc
from fetcher.errors import FetcherError
from fetcher.filters import BackupFilters, format_api_time
from fetcher.plan import NetworkChoice, host_port
from fetcher.units import human_duration

ProbeResult = Literal["ok", "mismatch", "unreachable", "skipped"]


@dataclass(frozen=True)
class LatestFull:
    backup_id: str
    end: datetime | None
    age_seconds: float | None
    checksum: bool
    probe: ProbeResult

    def to_json(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "end": self.end.strftime("%Y-%m-%dT%H:%M:%SZ") if self.end else None,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 3),
            "checksum": self.checksum,
            "probe": self.probe,
        }


@dataclass(frozen=True)
class InstanceHealth:
    instance: str
    ok: bool
    latest_full: LatestFull | None
    failed_recent: int
    problems: tuple[str, ...]
    api_error: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "ok": self.ok,
            "latest_full": self.latest_full.to_json() if self.latest_full else None,
            "failed_recent": self.failed_recent,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class CheckReport:
    instances: tuple[InstanceHealth, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.instances)

    @property
    def api_error(self) -> bool:
        return any(i.api_error for i in self.instances)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "instances": [i.to_json() for i in self.instances]}


# ----------------------------------------------------------------------------- pure


def newest_full(backups: Iterable[BackupSet]) -> BackupSet | None:
    full = [b for b in backups if b.status == "Success" and b.backup_type == "FullBackup"]
    if not full:
        return None
    floor = datetime.min.replace(tzinfo=timezone.utc)
    return max(full, key=lambda b: (b.end or b.start or floor, b.start or floor))


def count_failed_recent(backups: Iterable[BackupSet], now: datetime, max_age: float) -> int:
    since = now - timedelta(seconds=max_age)
    count = 0
    for b in backups:
        began = b.start or b.end
        if b.status == "Failed" and began is not None and began >= since:
            count += 1
    return count


def assess(
    instance: str,
    backups: list[BackupSet],
    *,
    now: datetime,
    max_age: float,
    probe: ProbeResult = "skipped",
    probe_detail: str = "",
) -> InstanceHealth:
    """The verdict for one instance from its backup sets (pure)."""
    problems: list[str] = []
    latest = newest_full(backups)
    failed = count_failed_recent(backups, now, max_age)
    summary: LatestFull | None = None
    if latest is None:
        problems.append("no successful full backup")
    else:
        age = (now - latest.end).total_seconds() if latest.end else None
        summary = LatestFull(latest.backup_id, latest.end, age, latest.checksum is not None, probe)
        if age is None:
            problems.append(f"newest full backup {latest.backup_id} has no BackupEndTime")
        elif age > max_age:
            problems.append(
                f"newest full backup {latest.backup_id} is {human_duration(age)} old "
                f"(max {human_duration(max_age)})"
            )
        if latest.checksum is None:
            problems.append(f"newest full backup {latest.backup_id} has no Checksum (not unhealthy)")
        if probe in ("mismatch", "unreachable"):
            problems.append(f"probe {probe}: {probe_detail}" if probe_detail else f"probe {probe}")
    if failed:
        problems.append(f"{failed} failed backup(s) in the last {human_duration(max_age)}")
    healthy = (
        summary is not None
        and summary.age_seconds is not None
        and summary.age_seconds <= max_age
        and failed == 0
        and probe in ("ok", "skipped")
    )
    return InstanceHealth(instance, healthy, summary, failed, tuple(problems))


def api_failure(instance: str, error: FetcherError) -> InstanceHealth:
    return InstanceHealth(instance, False, None, 0, (error.message,), api_error=True)


# ----------------------------------------------------------------------------- probe


class Reachability:
    """TCP-connect each internal host once, however many instances share it."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._known: dict[str, asyncio.Task[dict[str, bool]]] = {}

    async def __call__(self, hp: str) -> bool:
        from fetcher.fetch import probe_hosts

        task = self._known.get(hp)
        if task is None:
            task = asyncio.ensure_future(probe_hosts({hp}, self.timeout))
            self._known[hp] = task
        return (await task).get(hp, False)


async def probe_url(
    backup: BackupSet, network: NetworkChoice, reachable: Reachability
) -> str | None:
    internal, public = backup.internal_url, backup.public_url
    if network == "internal":
        return internal
    if network == "public":
        return public
    if internal and await reachable(host_port(internal)):
        return internal
    return public or internal


async def probe(
    session: aiohttp.ClientSession, backup: BackupSet, url: str | None, timeout: float
) -> tuple[ProbeResult, str]:
    """One GET of byte 0: does the URL answer, and is the object what the API says?"""
    if not url:
        return "unreachable", "no download URL"
    try:
        async with session.get(
            URL(url, encoded=True), headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"},
            timeout=aiohttp.ClientTimeout(total=timeout * 2, sock_connect=timeout, sock_read=timeout),
        ) as resp:
            await resp.read()
            status = resp.status
            crc = parse_crc(resp.headers.get("x-oss-hash-crc64ecma"))
            content_range = resp.headers.get("Content-Range", "")
            length = resp.headers.get("Content-Length")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return "unreachable", f"{exc.__class__.__name__}"
    if status not in (200, 206):
        return "unreachable", f"HTTP {status}"
    total: int | None = None
    if status == 206 and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1].strip()
        total = int(tail) if tail.isdigit() else None
    elif status == 200 and length and length.isdigit():
        total = int(length)
    mismatches = []
    if backup.checksum is not None and crc != backup.checksum:
        mismatches.append(f"object CRC64 {crc if crc is not None else 'missing'} != API Checksum {backup.checksum}")
    if backup.size is not None and backup.size > 0 and total != backup.size:
        mismatches.append(f"object size {total} != BackupSize {backup.size}")
    if mismatches:
        return "mismatch", "; ".join(mismatches)
    return "ok", ""


# ----------------------------------------------------------------------------- the run


async def check_instance(
    client: RdsClient,
    session: aiohttp.ClientSession,
    instance: str,
    *,
    now: datetime,
    max_age: float,
    do_probe: bool,
    network: NetworkChoice,
    reachable: Reachability,
    timeout: float,
) -> InstanceHealth:
    try:
        full = await client.describe_backups(
            BackupFilters(instance, status="Success", backup_type="FullBackup")
        )
        since = now - timedelta(seconds=max_age)
        failed = await client.describe_backups(
            BackupFilters(
                instance, status="Failed", start=format_api_time(since),
                end=format_api_time(now + timedelta(minutes=1)),
            )
        )
    except FetcherError as exc:
        return api_failure(instance, exc)
    backups = [*full, *failed]
    result: ProbeResult = "skipped"
    detail = ""
    latest = newest_full(backups)
    if do_probe and latest is not None:
        url = await probe_url(latest, network, reachable)
        result, detail = await probe(session, latest, url, timeout)
    return assess(instance, backups, now=now, max_age=max_age, probe=result, probe_detail=detail)


# ----------------------------------------------------------------------------- output


def prometheus_text(report: CheckReport) -> str:
    """node_exporter textfile metrics: each family once, labelled db_instance, no timestamps."""

    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    def num(value: float) -> str:
        if math.isinf(value):
            return "+Inf"
        return repr(float(value)) if not float(value).is_integer() else str(int(value))

    families: list[tuple[str, str, list[tuple[str, float]]]] = [
        ("fetcher_backup_latest_full_age_seconds",
         "Seconds since the newest successful full backup ended (+Inf when there is none).", []),
        ("fetcher_backup_check_ok", "1 when the instance passed every check, else 0.", []),
        ("fetcher_backup_failed_recent", "Backups with BackupStatus Failed started within --max-age.", []),
        ("fetcher_backup_probe_ok", "1 when the newest full backup's URL answered with the expected "
                                    "CRC64 and size, 0 when not (absent when not probed).", []),
    ]
    for inst in report.instances:
        if inst.api_error:
            families[1][2].append((inst.instance, 0))
            continue
        latest = inst.latest_full
        age = latest.age_seconds if latest and latest.age_seconds is not None else math.inf
        families[0][2].append((inst.instance, age))
        families[1][2].append((inst.instance, 1 if inst.ok else 0))
        families[2][2].append((inst.instance, inst.failed_recent))
        if latest is not None and latest.probe != "skipped":
            families[3][2].append((inst.instance, 1 if latest.probe == "ok" else 0))
    lines: list[str] = []
    for name, help_text, samples in families:
        if not samples:
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for instance, value in samples:
            lines.append(f'{name}{{db_instance="{esc(instance)}"}} {num(value)}')
    return "\n".join(lines) + "\n"


def table_text(report: CheckReport) -> str:
    head = f"{'INSTANCE':<24} {'OK':<3} {'LATEST FULL':<12} {'AGE':>8} {'CRC':<3} {'PROBE':<11} {'FAILED':>6}"
    lines = [head]
    for i in report.instances:
        lf = i.latest_full
        age = human_duration(lf.age_seconds) if lf and lf.age_seconds is not None else "-"
        lines.append(
            f"{i.instance[:24]:<24} {'yes' if i.ok else 'NO':<3} {(lf.backup_id if lf else '-')[:12]:<12} "
            f"{age:>8} {('yes' if lf and lf.checksum else 'no'):<3} {(lf.probe if lf else '-'):<11} "
            f"{i.failed_recent:>6}"
        )
        for p in i.problems:
            lines.append(f"    - {p}")
    for instance, reason in report.skipped:
        lines.append(f"{instance[:24]:<24} skipped: {reason}")
    healthy = sum(1 for i in report.instances if i.ok)
    lines.append(f"{healthy}/{len(report.instances)} instance(s) healthy")
    return "\n".join(lines)
