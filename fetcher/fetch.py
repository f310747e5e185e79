"""One ``fetch``: list, plan, download, record. The library entry point behind the CLI.

options -> backup sets (API) -> plan (pure) -> transfers (engine) -> manifest
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from fetcher import manifest as mf
from fetcher.api.client import RdsClient
from fetcher.api.models import BackupSet, DBInstance
from fetcher.download.engine import DownloadConfig, Downloader, FileResult, Reporter
from fetcher.download.partfile import local_error
from fetcher.errors import DownloadError, FetcherError, LocalIOError, LockedError, UsageError
from fetcher.filters import BackupFilters
from fetcher.log import event
from fetcher.plan import (
    DatabaseSelection,
    NetworkChoice,
    Plan,
    PlannedFile,
    Skip,
    internal_hosts,
    make_plan,
    replan_file,
)
from fetcher.redact import strip_query

LOCK_NAME = ".fetcher.lock"


@dataclass(frozen=True)
class FetchOptions:
    filters: BackupFilters | None  # None with all_instances (filters without an instance)
    dest: Path
    all_instances: bool = False
    latest: bool = False
    network: NetworkChoice = "auto"
    databases: DatabaseSelection = DatabaseSelection()
    download: DownloadConfig = DownloadConfig()
    dry_run: bool = False
    probe_timeout: float = 1.5


@dataclass
class FetchReport:
    plan: Plan
    results: list[FileResult] = field(default_factory=list)
    already: list[PlannedFile] = field(default_factory=list)  # verified by an earlier run
    elapsed: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def transferred(self) -> int:
        return sum(r.transferred for r in self.results)

    @property
    def skipped(self) -> list[Skip]:
        extra = [
            Skip(r.file.instance_id, r.file.backup_id, r.file.database, r.reason or "")
            for r in self.results
            if r.status == "skipped"
        ]
        return [*self.plan.skipped, *extra]

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0


# ----------------------------------------------------------------------------- listing


async def list_instances(client: RdsClient) -> tuple[list[DBInstance], list[Skip]]:
    """The account's instances in the region; read-only ones are skipped (no own backups)."""
    out: list[DBInstance] = []
    skips: list[Skip] = []
    for inst in await client.describe_instances():
        if inst.read_only:
            skips.append(Skip(inst.instance_id, "", None, "read-only instance (no backups of its own)"))
        else:
            out.append(inst)
    return out, skips


async def list_backups(
    client: RdsClient, filters: BackupFilters, instance_ids: list[str], concurrency: int
) -> list[BackupSet]:
    """Backup sets of several instances, listed concurrently, in instance order."""
    limit = asyncio.Semaphore(max(1, concurrency))

    async def one(iid: str) -> list[BackupSet]:
        async with limit:
            found = await client.describe_backups(filters.for_instance(iid))
        # Some answers omit DBInstanceId on the sets; the request says whose they are.
        return [b if b.instance_id else replace(b, instance_id=iid) for b in found]

    groups = await asyncio.gather(*(one(i) for i in instance_ids))
    return [b for g in groups for b in g]


async def probe_hosts(hosts: set[str], timeout: float) -> dict[str, bool]:
    """TCP-connect each internal host once: reachable means we are inside its VPC."""

    async def probe(hp: str) -> tuple[str, bool]:
        host, _, port = hp.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        except (OSError, asyncio.TimeoutError, ValueError):
            return hp, False
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return hp, True

    results = await asyncio.gather(*(probe(h) for h in sorted(hosts)))
    return dict(results)


# ----------------------------------------------------------------------------- lock


class DestLock:
    """One fetch per DEST: an exclusive, non-blocking flock on ``DEST/.fetcher.lock``."""

    def __init__(self, dest: Path) -> None:
        self.path = dest / LOCK_NAME
        self.fd = -1

    def __enter__(self) -> DestLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise local_error(exc, self.path, "cannot create the lock file") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockedError(
                    f"another fetch is already running into {self.path.parent} "
                    f"(lock {self.path.name}); wait for it to finish"
                ) from None
            # The holder before us may have removed the file after we opened it; lock
            # the file that is there now, not an orphan.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError:
                    pass  # the pid is a courtesy for people; the flock is the lock
                return self
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = -1


# ----------------------------------------------------------------------------- records


def record_of(result: FileResult, now: str) -> mf.FileRecord:
    f = result.file
    b = f.backup
    good = result.status in ("verified", "unverified")
    return mf.FileRecord(
        path=f.rel_path,
        instance=f.instance_id,
        backup_id=f.backup_id,
        database=f.database,
        engine=b.engine or None,
        engine_version=b.engine_version or None,
        backup_type=b.backup_type or None,
        backup_method=b.backup_method or None,
        backup_mode=b.backup_mode or None,
        backup_start=mf.iso_z(b.start),
        backup_end=mf.iso_z(b.end),
        network=f.network,
        url=strip_query(f.url),
        size=result.size,
        crc64=None if result.crc64 is None else str(result.crc64),
        crc64_expected=None if result.crc64_expected is None else str(result.crc64_expected),
        crc64_source=result.crc64_source,
        sha256=result.sha256,
        status="failed" if result.status == "skipped" else result.status,
        verified_at=now if good else None,
        reason=result.reason if not good else None,
    )


def skip_records(skips: list[Skip]) -> list[mf.SkipRecord]:
    return [mf.SkipRecord(s.instance_id, s.backup_id, s.database, s.reason) for s in skips]


def already_have(record: mf.FileRecord | None, planned: PlannedFile, dest: Path) -> bool:
    """Is the file already archived, verified, with the size and checksum the API names?"""
    if record is None or not record.vouched:
        return False
    if planned.expected_size is not None and record.size != planned.expected_size:
        return False
    if planned.expected_crc is not None and record.crc64 != str(planned.expected_crc):
        return False
    if planned.expected_crc is None and record.status != "verified" and record.crc64_source == "api":
        return False
    try:
        return (dest / record.path).stat().st_size == record.size
    except OSError:
        return False


# ----------------------------------------------------------------------------- the run


async def build_plan(
    client: RdsClient, options: FetchOptions
) -> Plan:
    filters = options.filters
    instance_skips: list[Skip] = []
    if options.all_instances:
        instances, instance_skips = await list_instances(client)
        ids = [i.instance_id for i in instances]
        base = filters or BackupFilters(instance_id="")
    else:
        if filters is None:
            raise UsageError("--instance is required (or --all-instances)")
        ids, base = [filters.instance_id], filters
    backups = await list_backups(client, base, ids, options.download.jobs)
    reachable: dict[str, bool] = {}
    if options.network == "auto":
        hosts = internal_hosts(backups)
        if hosts:
            reachable = await probe_hosts(hosts, options.probe_timeout)
            for hp, ok in sorted(reachable.items()):
                event("network.probe", f"internal host {hp}: {'reachable' if ok else 'not reachable, using public URLs'}",
                      level=logging.DEBUG, host=hp, reachable=ok)
    plan = make_plan(
        backups, databases=options.databases, network=options.network,
        reachable=reachable, latest=options.latest,
    )
    return Plan(plan.files, (*instance_skips, *plan.skipped))


def make_refresher(client: RdsClient) -> Callable[[PlannedFile], Awaitable[PlannedFile | None]]:
    async def refresh(file: PlannedFile) -> PlannedFile | None:
        try:
            fresh = await client.describe_backup(file.instance_id, file.backup_id)
        except FetcherError as exc:
            raise DownloadError(f"cannot refresh the download URL: {exc.message}") from None
        return None if fresh is None else replan_file(file, fresh)

    return refresh


async def run_fetch(
    client: RdsClient,
    session: aiohttp.ClientSession,
    options: FetchOptions,
    *,
    plan: Plan | None = None,
    reporter_factory: Callable[[Plan], Reporter] | None = None,
) -> FetchReport:
    """List, plan and (unless dry-run) download into ``options.dest``; write the manifest."""
    began = time.monotonic()
    if plan is None:
        plan = await build_plan(client, options)
    report = FetchReport(plan)
    if options.dry_run:
        return report
    dest = options.dest
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--dest: cannot create {dest}: {exc.strerror}") from None
    with DestLock(dest):
        old = mf.load_if_present(dest / mf.MANIFEST_NAME)
        known = old.by_path() if old else {}
        todo: list[PlannedFile] = []
        for f in plan.files:
            if already_have(known.get(f.rel_path), f, dest):
                report.already.append(f)
                event("file.present", f"already verified: {f.rel_path}", level=logging.DEBUG,
                      path=f.rel_path, instance=f.instance_id, backup_id=f.backup_id,
                      database=f.database)
            else:
                todo.append(f)
        for s in plan.skipped:
            event("set.skipped", f"skipped {s.instance_id}/{s.backup_id}"
                  f"{'/' + s.database if s.database else ''}: {s.reason}",
                  instance=s.instance_id, backup_id=s.backup_id, database=s.database,
                  reason=s.reason)

        records: list[mf.FileRecord] = []
        run_skips: list[Skip] = list(plan.skipped)
        last_write = time.monotonic()
        write_lock = asyncio.Lock()
        sums = options.download.sha256

        async def save() -> None:
            snapshot = mf.merge(old, list(records), skip_records(run_skips))
            try:
                await asyncio.to_thread(mf.write, dest, snapshot, sha256sums=sums)
            except OSError as exc:
                raise local_error(exc, dest / mf.MANIFEST_NAME, "cannot write the manifest") from None

        async def on_result(result: FileResult) -> None:
            nonlocal last_write
            if result.status == "skipped":
                f = result.file
                run_skips.append(Skip(f.instance_id, f.backup_id, f.database, result.reason or ""))
            else:
                records.append(record_of(result, mf.utc_now()))
            # Keep the manifest current, so finished files survive a crash of the run.
            if time.monotonic() - last_write >= 2.0:
                async with write_lock:
                    last_write = time.monotonic()
                    try:
                        await save()
                    except LocalIOError as exc:
                        # Not worth stopping the other transfers for; the final write
                        # tries again and reports it.
                        event("manifest.retry", f"{exc.message}; trying again at the end",
                              level=logging.WARNING, reason=exc.message)

        reporter = reporter_factory(replace(plan, files=tuple(todo))) if reporter_factory else None
        downloader = Downloader(
            session, options.download, reporter=reporter, refresh=make_refresher(client),
            on_result=on_result,
        )
        interrupted = False
        try:
            report.results = await downloader.run(todo, dest)
        except BaseException:
            interrupted = True
            raise
        finally:
            close = getattr(reporter, "close", None)
            if close is not None:
                close()
            async with write_lock:
                try:
                    await asyncio.shield(save())
                except LocalIOError as exc:
                    if not interrupted:
                        raise
                    # Do not mask why the run stopped (Ctrl-C: exit 130); say it, though.
                    event("manifest.failed", exc.message, level=logging.ERROR, reason=exc.message)
    report.elapsed = time.monotonic() - began
    return report
