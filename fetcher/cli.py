"""The ``fetcher`` command line: parse options, call the library, map errors to exit codes.

Exit codes (one table, see ``fetcher.errors``): 0 all done and good; 1 some file failed or
verify found a problem; 2 bad usage or input; 3 API or credential error; 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, NoReturn, TypeVar

import click

from fetcher import __version__
from fetcher import log as logmod
from fetcher.api import DEFAULT_ENDPOINT
from fetcher.api.models import BackupSet
from fetcher.credentials import Credentials, profile_region, resolve
from fetcher.errors import (
    EXIT_API,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    FetcherError,
    Interrupted,
    UsageError,
)
from fetcher.filters import BACKUP_MODES, BACKUP_STATUSES, BACKUP_TYPES, BackupFilters, build_filters
from fetcher.log import event
from fetcher.redact import SCRUB
from fetcher.units import human_duration, human_size, parse_rate

if TYPE_CHECKING:  # aiohttp takes ~0.3 s to import: only the commands that talk load it
    from fetcher.api.client import ClientConfig, RdsClient

T = TypeVar("T")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclass
class Globals:
    endpoint: str
    region: str | None
    profile: str | None
    signature: str
    timeout: float
    verbose: int
    quiet: bool
    log_format: str

    def client_config(self, region: str) -> ClientConfig:
        from fetcher.api.client import ClientConfig

        base = float(os.environ.get("FETCHER_BACKOFF_BASE", "0.5") or 0.5)
        return ClientConfig(
            endpoint=self.endpoint, region=region, signature=self.signature,
            timeout=self.timeout, backoff_base=base,
        )

    def resolve_region(self) -> str:
        return self.region or profile_region(self.profile) or "cn-hangzhou"


# ----------------------------------------------------------------------------- running


def run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine; SIGINT/SIGTERM cancel it cleanly and become ``Interrupted``."""

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, task.cancel)
                installed.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):
                pass  # not the main thread (tests, embedding): no handler
        try:
            return await make()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(guarded())
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise Interrupted("interrupted; partial files are kept and resume on the next run") from None


@asynccontextmanager
async def api_client(g: Globals, creds: Credentials) -> AsyncIterator[RdsClient]:
    import aiohttp

    region = g.resolve_region()
    connector = aiohttp.TCPConnector(limit=32, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector, trust_env=True) as session:

        def on_retry(error: FetcherError, attempt: int, delay: float) -> None:
            event("api.retry", f"API: {error.message}; retry {attempt} in {delay:.1f}s",
                  level=logging.WARNING, reason=error.message, attempt=attempt)

        from fetcher.api.client import RdsClient

        yield RdsClient(session, creds, g.client_config(region), on_retry=on_retry)


def credentials(g: Globals) -> Credentials:
    creds = resolve(g.profile)
    SCRUB.add(creds.secrets())
    event("credentials", f"credentials from {creds.source}", level=logging.DEBUG)
    return creds


# ----------------------------------------------------------------------------- group


@click.group(context_settings=CONTEXT)
@click.option("--endpoint", envvar="FETCHER_ENDPOINT", default=DEFAULT_ENDPOINT, show_default=True,
              metavar="URL", help="RDS API endpoint (env FETCHER_ENDPOINT).")
@click.option("--region", envvar="ALIBABA_CLOUD_REGION_ID", default=None, metavar="ID",
              help="RegionId sent with each call (env ALIBABA_CLOUD_REGION_ID; default: the "
                   "profile's region, else cn-hangzhou).")
@click.option("--profile", envvar="ALIBABA_CLOUD_PROFILE", default=None, metavar="NAME",
              help="Profile of ~/.aliyun/config.json (env ALIBABA_CLOUD_PROFILE).")
@click.option("--signature", type=click.Choice(["v3", "v1"]), default="v3", show_default=True,
              help="v3: ACS3-HMAC-SHA256; v1: HMAC-SHA1.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              metavar="SECONDS", help="Connect/read timeout per request; a download that "
                                      "gets no byte for this long is retried.")
@click.option("-v", "--verbose", count=True, help="More detail (repeat for more).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final summary.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one JSON event per line on stderr.")
@click.version_option(__version__, prog_name="fetcher")
@click.pass_context
def cli(ctx: click.Context, endpoint: str, region: str | None, profile: str | None,
        signature: str, timeout: float, verbose: int, quiet: bool, log_format: str) -> None:
    """Get ApsaraDB RDS backups off Alibaba Cloud and prove they are intact.

    \b
    Credentials: ALIBABA_CLOUD_ACCESS_KEY_ID + ALIBABA_CLOUD_ACCESS_KEY_SECRET
    (+ ALIBABA_CLOUD_SECURITY_TOKEN), else a profile of ~/.aliyun/config.json.

    \b
    Exit codes: 0 done, every file verified (or unverified); 1 a file failed or
    verify found a problem; 2 bad usage or input; 3 API or credential error;
    130 interrupted (partial files are kept and resume).
    """
    logmod.setup(verbose, quiet, log_format)
    ctx.obj = Globals(endpoint, region, profile, signature, timeout, verbose, quiet, log_format)


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--backup-id", metavar="ID", help="Only this backup set (BackupId)."),
        click.option("--status", type=click.Choice(BACKUP_STATUSES, case_sensitive=False),
                     metavar="|".join(BACKUP_STATUSES), help="BackupStatus."),
        click.option("--mode", type=click.Choice(BACKUP_MODES, case_sensitive=False),
                     metavar="|".join(BACKUP_MODES), help="BackupMode."),
        click.option("--type", "backup_type", type=click.Choice(BACKUP_TYPES, case_sensitive=False),
                     metavar="|".join(BACKUP_TYPES), help="BackupType."),
        click.option("--start", metavar="TIME", help="StartTime: ISO 8601 (offset converted "
                     "to UTC; none means UTC) or a date."),
        click.option("--end", metavar="TIME", help="EndTime, later than --start."),
        click.option("--resource-group", metavar="ID", help="ResourceGroupId."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def make_filters(instance: str, **kw: Any) -> BackupFilters:
    return build_filters(
        instance_id=instance, backup_id=kw.get("backup_id"), status=kw.get("status"),
        mode=kw.get("mode"), backup_type=kw.get("backup_type"), start=kw.get("start"),
        end=kw.get("end"), resource_group=kw.get("resource_group"),
    )


# ----------------------------------------------------------------------------- list


def _when(b: BackupSet) -> tuple[str, str]:
    if b.start is None:
        return "-", "-"
    start = b.start.strftime("%Y-%m-%d %H:%M")
    if b.end is None:
        return start, "-"
    days = (b.end.date() - b.start.date()).days
    end = b.end.strftime("%H:%M") + (f"+{days}d" if days else "")
    return start, end


def backup_table(backups: list[BackupSet]) -> str:
    """Readable at 80 columns: id, type, method, status, start, end, size, engine."""
    header = f"{'BACKUP ID':<10} {'TYPE':<4} {'METHOD':<8} {'STATUS':<7} {'START (UTC)':<16} " \
             f"{'END':<8} {'SIZE':>9} ENGINE"
    lines = [header]
    for b in backups:
        kind = {"FullBackup": "full", "IncrementalBackup": "incr"}.get(b.backup_type, b.backup_type[:4] or "-")
        start, end = _when(b)
        status = b.status or "-"
        if b.status == "Success" and not b.is_avail:
            status = "Unavail"
        engine = f"{b.engine} {b.engine_version}".strip() or "-"
        if len(engine) > 11:
            engine = engine[:10] + "…"
        lines.append(
            f"{b.backup_id[:10]:<10} {kind:<4} {(b.backup_method or '-')[:8]:<8} {status[:7]:<7} "
            f"{start:<16} {end:<8} {human_size(b.size):>9} {engine}"
        )
    return "\n".join(lines)


@cli.command("list", context_settings=CONTEXT)
@click.option("--instance", required=True, metavar="ID", help="DBInstanceId.")
@filter_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl"]), default="table",
              show_default=True, help="json/jsonl print the API's objects unchanged (with "
                                      "their signed URLs).")
@click.pass_obj
def list_cmd(g: Globals, /, instance: str, fmt: str, **filters: Any) -> int:
    """List backup sets (every page of DescribeBackups)."""
    spec = make_filters(instance, **filters)
    creds = credentials(g)

    async def go() -> list[BackupSet]:
        async with api_client(g, creds) as client:
            return await client.describe_backups(spec)

    backups = run(go)
    if fmt == "json":
        click.echo(json.dumps([b.raw for b in backups], ensure_ascii=False, indent=2))
    elif fmt == "jsonl":
        for b in backups:
            click.echo(json.dumps(b.raw, ensure_ascii=False))
    else:
        click.echo(backup_table(backups))
        total = sum(b.size or 0 for b in backups)
        click.echo(f"{len(backups)} backup set(s), {human_size(total)}", err=True)
    return EXIT_OK


# ----------------------------------------------------------------------------- fetch


def _fetch_summary(report: Any) -> str:
    elapsed = max(report.elapsed, 1e-6)
    rate = report.transferred / elapsed
    return (
        f"{report.count('verified')} verified, {report.count('unverified')} unverified, "
        f"{report.count('failed')} failed, {len(report.skipped)} skipped, "
        f"{len(report.already)} already present; {human_size(report.transferred)} in "
        f"{human_duration(elapsed)} ({human_size(int(rate))}/s)"
    )


def _print_plan(plan: Any, dest: Path) -> None:
    for f in plan.files:
        click.echo(f"{f.network:<8} {human_size(f.expected_size):>10}  {dest / f.rel_path}")
    for s in plan.skipped:
        what = "/".join(x for x in (s.instance_id, s.backup_id, s.database) if x)
        click.echo(f"{'skip':<8} {'':>10}  {what}: {s.reason}")
    unknown = sum(1 for f in plan.files if f.expected_size is None)
    tail = f" (+{unknown} of unknown size)" if unknown else ""
    click.echo(
        f"plan: {len(plan.files)} file(s), {human_size(plan.known_bytes)}{tail}; "
        f"{len(plan.skipped)} skipped; nothing downloaded (--dry-run)"
    )


def execute_fetch(g: Globals, creds: Credentials, options: Any, progress: bool) -> Any:
    """Run one fetch with the CLI's reporter; returns the FetchReport."""
    import aiohttp

    from fetcher.fetch import run_fetch
    from fetcher.progress import CliReporter

    bars = progress and sys.stderr.isatty() and not g.quiet and g.log_format == "text"

    def reporter(plan: Any) -> CliReporter:
        return CliReporter(bars, len(plan.files), plan.known_bytes or None)

    async def go() -> Any:
        dl = options.download
        connector = aiohttp.TCPConnector(
            limit=max(8, dl.jobs * dl.connections + 4), ttl_dns_cache=300,
        )
        async with api_client(g, creds) as client, aiohttp.ClientSession(
            connector=connector, trust_env=True, auto_decompress=False,
            read_bufsize=512 << 10,
        ) as session:
            return await run_fetch(client, session, options, reporter_factory=reporter)

    return run(go)


@cli.command(context_settings=CONTEXT)
@click.option("--instance", metavar="ID", help="DBInstanceId (or --all-instances).")
@click.option("--all-instances", is_flag=True, help="Every instance of the account in --region.")
@filter_options
@click.option("--latest", is_flag=True, help="Only the newest matching set that is Success and "
                                              "downloadable (per instance).")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=Path("backups"),
              show_default=True, help="Archive root; created if missing.")
@click.option("--network", type=click.Choice(["auto", "internal", "public"]), default="auto",
              show_default=True, help="auto: internal (VPC) URL when its host answers a TCP "
                                      "connect, else public.")
@click.option("--databases", default="whole", show_default=True, metavar="whole|all|NAME[,NAME]",
              help="whole: the set's own file; all: every per-database link; or these databases.")
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Files downloaded at once.")
@click.option("--connections", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Ranged connections for one large file.")
@click.option("--limit-rate", metavar="RATE", help="Total bytes per second, e.g. 500K, 50M, 1G.")
@click.option("--retries", type=click.IntRange(0, 100), default=5, show_default=True,
              help="Attempts per file after a network error, with backoff.")
@click.option("--no-sha256", is_flag=True, help="Skip SHA-256 (and SHA256SUMS).")
@click.option("--require-checksum", is_flag=True, help="A file with no CRC64 to check counts "
                                                       "as failed.")
@click.option("--dry-run", is_flag=True, help="Print the plan; download and write nothing.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.pass_obj
def fetch(g: Globals, /, instance: str | None, all_instances: bool, latest: bool, dest: Path,
          network: str, databases: str, jobs: int, connections: int, limit_rate: str | None,
          retries: int, no_sha256: bool, require_checksum: bool, dry_run: bool,
          no_progress: bool, **filters: Any) -> int:
    """Download backup sets, verify every file's CRC64, write the manifest."""
    from fetcher.download.engine import DownloadConfig
    from fetcher.fetch import FetchOptions
    from fetcher.plan import DatabaseSelection

    if bool(instance) == all_instances:
        raise UsageError("give exactly one of --instance ID or --all-instances")
    spec = make_filters(instance or "all", **filters)
    rate = parse_rate(limit_rate) if limit_rate else None
    selection = DatabaseSelection.parse(databases)
    base = float(os.environ.get("FETCHER_BACKOFF_BASE", "0.5") or 0.5)
    options = FetchOptions(
        filters=spec if instance else BackupFilters(instance_id="", **{
            k: getattr(spec, k) for k in ("backup_id", "status", "mode", "backup_type",
                                           "start", "end", "resource_group")}),
        dest=dest,
        all_instances=all_instances,
        latest=latest,
        network=network,  # type: ignore[arg-type]
        databases=selection,
        dry_run=dry_run,
        download=DownloadConfig(
            jobs=jobs, connections=connections, retries=retries, limit_rate=rate,
            sha256=not no_sha256, require_checksum=require_checksum,
            connect_timeout=g.timeout, stall_timeout=g.timeout, backoff_base=base,
        ),
    )
    creds = credentials(g)
    report = execute_fetch(g, creds, options, progress=not no_progress)
    if dry_run:
        _print_plan(report.plan, dest)
        return EXIT_OK
    summary = _fetch_summary(report)
    # In JSON mode the summary is an event for log shippers; in text mode it goes to stdout.
    event("summary", summary, level=logging.INFO if g.log_format == "json" else logging.DEBUG,
          verified=report.count("verified"),
          unverified=report.count("unverified"), failed=report.count("failed"),
          skipped=len(report.skipped), already=len(report.already), bytes=report.transferred,
          elapsed=round(report.elapsed, 3))
    click.echo(summary)
    return EXIT_OK if report.ok else EXIT_FAILED


# ----------------------------------------------------------------------------- verify


@cli.command(context_settings=CONTEXT)
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--deep", is_flag=True, help="Also check each archive's own structure (gzip, "
                                           "tar, zip, xbstream), streaming, nothing extracted.")
@click.pass_obj
def verify(g: Globals, /, manifest_path: Path, fmt: str, deep: bool) -> int:
    """Re-check every file a manifest vouches for, offline (size, CRC64, SHA-256)."""
    from fetcher import manifest as mf

    path = manifest_path / mf.MANIFEST_NAME if manifest_path.is_dir() else manifest_path
    manifest = mf.load(path)
    result = mf.verify(manifest, path.parent)
    deep_results: list[Any] = []
    if deep:
        from concurrent.futures import ThreadPoolExecutor

        from fetcher.deep import inspect_archive

        broken = {p.path for p in result.problems}
        todo = [
            (target, rec.path) for rec in manifest.files
            if rec.vouched and rec.path not in broken
            and (target := mf.resolve_inside(path.parent, rec.path)) is not None
        ]
        # zlib and CRC32 release the GIL: two archives at once use both cores.
        with ThreadPoolExecutor(max_workers=2) as pool:
            deep_results = list(pool.map(lambda t: inspect_archive(t[0], display_path=t[1]), todo))
    damaged = [d for d in deep_results if d.structure == "damaged"]
    if fmt == "json":
        doc = result.to_json()
        if deep:
            doc["deep"] = [
                {"path": d.path, "structure": d.structure, "format": d.format, "detail": d.detail}
                for d in deep_results
            ]
            doc["ok"] = doc["ok"] and not damaged
        click.echo(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        for p in result.problems:
            click.echo(f"{p.problem.upper():<8} {p.path}: {p.detail}")
        for d in deep_results:
            note = f" ({d.detail})" if d.detail else ""
            label = {"ok": f"structure ok{note}", "damaged": f"damaged: {d.detail}",
                     "unrecognised": f"format not recognised{note}"}[d.structure]
            fmt_name = f" ({d.format})" if d.format else ""
            click.echo(f"{'DEEP':<8} {d.path}{fmt_name}: {label}")
        for name in result.failed_entries:
            click.echo(f"{'NOTE':<8} {name}: recorded as failed, never archived")
        files_with = len({p.path for p in result.problems})
        inside = f"; {len(damaged)} damaged archive(s) inside" if damaged else ""
        if result.ok:
            click.echo(f"verified {result.checked} file(s): all intact{inside}")
        else:
            click.echo(
                f"verified {result.checked} file(s): {len(result.problems)} problem(s) in "
                f"{files_with} file(s){inside}"
            )
    return EXIT_OK if result.ok and not damaged else EXIT_FAILED


# ----------------------------------------------------------------------------- check


@cli.command(context_settings=CONTEXT)
@click.option("--instance", "instances", multiple=True, metavar="ID",
              help="DBInstanceId to check (repeat for several).")
@click.option("--all-instances", is_flag=True, help="Every instance of the account in --region.")
@click.option("--max-age", default="26h", show_default=True, metavar="DURATION",
              help="Newest full backup must be younger than this (90m, 26h, 7d); failed backups "
                   "started within it count against the instance.")
@click.option("--probe", is_flag=True, help="One 1-byte GET per instance: the URL answers and the "
                                            "object's CRC64 and size match the API.")
@click.option("--network", type=click.Choice(["auto", "internal", "public"]), default="auto",
              show_default=True, help="Which URL --probe uses.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "prometheus"]), default="table",
              show_default=True, help="prometheus: node_exporter textfile metrics.")
@click.pass_obj
def check(g: Globals, /, instances: tuple[str, ...], all_instances: bool, max_age: str,
          probe: bool, network: str, fmt: str) -> int:
    """Health of each instance's newest full backup; downloads nothing.

    \b
    Exit 0 when every instance is healthy, 1 when any is not, 3 on API errors.
    """
    from datetime import datetime, timezone

    import aiohttp

    from fetcher import check as chk
    from fetcher.fetch import list_instances
    from fetcher.filters import validate_instance_id
    from fetcher.units import parse_duration

    if bool(instances) == all_instances:
        raise UsageError("give --instance ID (one or more) or --all-instances")
    ids = [validate_instance_id(i) for i in instances]
    seconds = parse_duration(max_age)
    creds = credentials(g)

    async def go() -> chk.CheckReport:
        async with api_client(g, creds) as client, aiohttp.ClientSession(trust_env=True) as session:
            skipped: list[tuple[str, str]] = []
            todo = list(dict.fromkeys(ids))
            if all_instances:
                found, skips = await list_instances(client)
                todo = [i.instance_id for i in found]
                skipped = [(s.instance_id, s.reason) for s in skips]
            now = datetime.now(timezone.utc)
            reachable = chk.Reachability(timeout=1.5)
            limit = asyncio.Semaphore(8)

            async def one(iid: str) -> chk.InstanceHealth:
                async with limit:
                    return await chk.check_instance(
                        client, session, iid, now=now, max_age=seconds, do_probe=probe,
                        network=network, reachable=reachable, timeout=g.timeout,  # type: ignore[arg-type]
                    )

            results = await asyncio.gather(*(one(i) for i in todo))
            return chk.CheckReport(tuple(results), tuple(skipped))

    report = run(go)
    for inst in report.instances:
        level = logging.INFO if inst.ok else logging.WARNING
        event("check.instance", f"{inst.instance}: {'healthy' if inst.ok else '; '.join(inst.problems)}",
              level=level if g.log_format == "json" else logging.DEBUG, instance=inst.instance,
              ok=inst.ok, problems=list(inst.problems))
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    elif fmt == "prometheus":
        click.echo(chk.prometheus_text(report), nl=False)
    else:
        click.echo(chk.table_text(report))
    if report.api_error:
        return EXIT_API
    return EXIT_OK if report.ok else EXIT_FAILED


# ----------------------------------------------------------------------------- emulator


@cli.command(context_settings=CONTEXT)
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Data set JSON (default: the built-in demo data).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="API port (0: any free port).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Written (atomically) with the connection details once ready.")
@click.option("--internal/--no-internal", default=True, show_default=True,
              help="Serve the internal (VPC) object listener on 127.0.0.2.")
@click.option("--url-ttl", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Lifetime of signed download URLs, seconds.")
@click.option("--public-base-url", default=None, metavar="URL",
              help="Hand out public URLs on this base instead (e.g. an nginx with the files).")
@click.option("--internal-base-url", default=None, metavar="URL",
              help="Hand out internal URLs on this base instead.")
def emulator(data: Path | None, host: str, port: int, ready_file: Path | None, internal: bool,
             url_ttl: float, public_base_url: str | None, internal_base_url: str | None) -> int:
    """Serve the RDS API + object storage emulator until SIGINT/SIGTERM."""
    from fetcher.emulator import Emulator
    from fetcher.emulator import dataset
    from fetcher.emulator.server import write_ready_file

    data_set = dataset.load(data)

    async def serve() -> None:
        emu = Emulator(
            data_set, host=host, port=port, internal=internal, url_ttl=url_ttl,
            public_base=public_base_url, internal_base=internal_base_url,
        )
        await emu.start()
        info = emu.ready_info()
        if ready_file is not None:
            write_ready_file(ready_file, info)
        click.echo(json.dumps(info), nl=True)
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await emu.stop()

    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    asyncio.run(serve())
    return EXIT_OK


# ----------------------------------------------------------------------------- demo


@cli.command(context_settings=CONTEXT)
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo-backups"), show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.pass_obj
def demo(g: Globals, /, dest: Path, no_progress: bool) -> int:
    """Fetch the demo instance from a built-in emulator, then verify the archive."""
    from fetcher import manifest as mf
    from fetcher.download.engine import DownloadConfig
    from fetcher.emulator import Emulator, EmulatorThread
    from fetcher.fetch import FetchOptions
    from fetcher.plan import DatabaseSelection

    instance = "rm-bp1demo4mysql80"
    began = time.monotonic()
    with EmulatorThread(Emulator()) as emu:
        cred = emu.data.credentials[0]
        creds = Credentials(cred.access_key_id, cred.access_key_secret, source="demo emulator")
        local = Globals(emu.endpoint, emu.data.region, None, g.signature, g.timeout,
                        g.verbose, g.quiet, g.log_format)
        click.echo(f"demo: emulator at {emu.endpoint}; fetching {instance} into {dest}/", err=True)
        options = FetchOptions(
            filters=build_filters(instance_id=instance),
            dest=dest,
            databases=DatabaseSelection(whole=True, all_databases=True),
            download=DownloadConfig(connect_timeout=g.timeout, stall_timeout=g.timeout),
        )
        report = execute_fetch(local, creds, options, progress=not no_progress)
    manifest = mf.load(dest / mf.MANIFEST_NAME)
    result = mf.verify(manifest, dest)
    click.echo(f"\nmanifest {dest / mf.MANIFEST_NAME}:")
    for rec in manifest.files:
        click.echo(f"  {rec.status:<10} {human_size(rec.size):>10}  crc64 {rec.crc64 or '-':<20}  {rec.path}")
    for s in manifest.skipped:
        what = "/".join(x for x in (s.instance, s.backup_id, s.database) if x)
        click.echo(f"  {'skipped':<10} {'':>10}  {what}: {s.reason}")
    click.echo(f"\nfetch:  {_fetch_summary(report)}")
    click.echo(
        f"verify: {result.checked} file(s) re-read from disk, "
        + ("all intact" if result.ok else f"{len(result.problems)} problem(s)")
    )
    click.echo(f"demo finished in {human_duration(time.monotonic() - began)}; try: "
               f"fetcher verify {dest / mf.MANIFEST_NAME}")
    return EXIT_OK if report.ok and result.ok else EXIT_FAILED


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry: run the CLI and turn every outcome into one exit code."""
    verbose = any(a in ("-v", "--verbose", "-vv") for a in (argv or sys.argv[1:]))
    try:
        code = cli.main(args=argv, prog_name="fetcher", standalone_mode=False)
        code = code if isinstance(code, int) else EXIT_OK
    except click.exceptions.Abort:
        click.echo("fetcher: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code if exc.exit_code != 1 else EXIT_USAGE
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except FetcherError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        click.echo(f"fetcher: {SCRUB(exc.message)}{hint}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("fetcher: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        code = EXIT_OK
    except Exception as exc:  # a bug: say so in one line, details with -v
        if verbose:
            import traceback

            traceback.print_exc()
        click.echo(f"fetcher: internal error: {SCRUB(f'{exc.__class__.__name__}: {exc}')} "
                   "(run with -v for details)", err=True)
        code = EXIT_FAILED
    sys.exit(code)
