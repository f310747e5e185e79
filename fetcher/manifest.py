"""The verified manifest: read, merge, write atomically, and verify offline.

``manifest.json`` covers every file fetched into DEST by any run. It is rewritten whole
(temporary file, fsync, rename) so that it is always a complete JSON document. Merging and
comparing are pure; ``verify`` reads the files and returns a result value the CLI renders.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from fetcher import __version__, checksum
from fetcher.errors import UsageError

SCHEMA = "fetcher.manifest/1"
MANIFEST_NAME = "manifest.json"
SHA256SUMS_NAME = "SHA256SUMS"

FileStatus = Literal["verified", "unverified", "failed"]


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_z(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class FileRecord:
    path: str
    instance: str
    backup_id: str
    database: str | None
    engine: str | None
    engine_version: str | None
    backup_type: str | None
    backup_method: str | None
    backup_mode: str | None
    backup_start: str | None
    backup_end: str | None
    network: str | None
    url: str | None  # never with a query string
    size: int | None
    crc64: str | None
    crc64_expected: str | None
    crc64_source: str | None
    sha256: str | None
    status: FileStatus
    verified_at: str | None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        if doc["reason"] is None:
            del doc["reason"]
        return doc

    @property
    def vouched(self) -> bool:
        """Does this entry claim a file is on disk exactly as recorded?"""
        return self.status in ("verified", "unverified")


@dataclass(frozen=True)
class SkipRecord:
    instance: str
    backup_id: str
    database: str | None
    reason: str

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.instance, self.backup_id, self.database)


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileRecord, ...] = ()
    skipped: tuple[SkipRecord, ...] = ()
    updated_at: str = field(default_factory=utc_now)

    def by_path(self) -> dict[str, FileRecord]:
        return {f.path: f for f in self.files}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "tool": {"name": "fetcher", "version": __version__},
            "updated_at": self.updated_at,
            "files": [f.to_json() for f in self.files],
            "skipped": [asdict(s) for s in self.skipped],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------- parsing


_FILE_FIELDS = {f.name for f in fields(FileRecord)}
_REQUIRED = {"path", "status"}


def parse(doc: Any, source: str = "manifest") -> Manifest:
    """A decoded manifest to a Manifest; UsageError naming the problem otherwise."""
    if not isinstance(doc, dict):
        raise UsageError(f"{source}: not a fetcher manifest (expected a JSON object)")
    if doc.get("schema") != SCHEMA:
        raise UsageError(f"{source}: unknown schema {doc.get('schema')!r} (expected {SCHEMA})")
    files_doc = doc.get("files")
    if not isinstance(files_doc, list):
        raise UsageError(f"{source}: 'files' is not a list")
    files: list[FileRecord] = []
    for i, item in enumerate(files_doc):
        if not isinstance(item, dict) or not _REQUIRED <= set(item):
            raise UsageError(f"{source}: files[{i}] lacks path or status")
        if item.get("status") not in ("verified", "unverified", "failed"):
            raise UsageError(f"{source}: files[{i}] has an unknown status {item.get('status')!r}")
        values = {k: item.get(k) for k in _FILE_FIELDS}
        if not isinstance(values["path"], str) or not values["path"]:
            raise UsageError(f"{source}: files[{i}] has no usable path")
        size = values["size"]
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise UsageError(f"{source}: files[{i}] has a bad size")
        files.append(FileRecord(**values))  # type: ignore[arg-type]
    skipped: list[SkipRecord] = []
    for i, item in enumerate(doc.get("skipped") or []):
        if not isinstance(item, dict):
            raise UsageError(f"{source}: skipped[{i}] is not an object")
        skipped.append(
            SkipRecord(
                str(item.get("instance", "")), str(item.get("backup_id", "")),
                item.get("database"), str(item.get("reason", "")),
            )
        )
    return Manifest(tuple(files), tuple(skipped), str(doc.get("updated_at") or utc_now()))


def load(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the manifest ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return parse(doc, str(path))


def load_if_present(path: Path) -> Manifest | None:
    return load(path) if path.exists() else None


# ----------------------------------------------------------------------------- merging


def merge(
    old: Manifest | None,
    files: Iterable[FileRecord],
    skipped: Iterable[SkipRecord],
    *,
    now: str | None = None,
) -> Manifest:
    """Fold a run's results into the manifest so far (pure).

    A new record replaces the old one for the same path, except that a ``failed`` record
    never replaces a good one: that file was not touched and is still as recorded. A skip
    is dropped once a file for the same set (and database) exists.
    """
    merged = dict(old.by_path()) if old else {}
    for record in files:
        previous = merged.get(record.path)
        if record.status == "failed" and previous is not None and previous.vouched:
            continue
        merged[record.path] = record
    skips: dict[tuple[str, str, str | None], SkipRecord] = {}
    for s in (*(old.skipped if old else ()), *skipped):
        skips[s.key] = s
    have = {(f.instance, f.backup_id, f.database) for f in merged.values() if f.vouched}
    have_sets = {(i, b) for i, b, _ in have}
    kept = [
        s for k, s in skips.items()
        if k not in have and not (k[2] is None and (k[0], k[1]) in have_sets)
    ]
    ordered = tuple(sorted(merged.values(), key=lambda r: r.path))
    return Manifest(ordered, tuple(kept), now or utc_now())


def sha256sums_text(manifest: Manifest) -> str:
    lines = [
        f"{f.sha256}  {f.path}\n"
        for f in manifest.files
        if f.vouched and f.sha256 and "\n" not in f.path and "\\" not in f.path
    ]
    return "".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write(dest: Path, manifest: Manifest, *, sha256sums: bool = True) -> None:
    """Write ``manifest.json`` (and ``SHA256SUMS``) atomically into DEST."""
    _atomic_write(dest / MANIFEST_NAME, manifest.dumps())
    if sha256sums:
        _atomic_write(dest / SHA256SUMS_NAME, sha256sums_text(manifest))
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# ----------------------------------------------------------------------------- verification

Problem = Literal["missing", "size", "crc64", "sha256"]


@dataclass(frozen=True)
class VerifyProblem:
    path: str
    problem: Problem
    detail: str


@dataclass(frozen=True)
class VerifyResult:
    checked: int
    problems: tuple[VerifyProblem, ...]
    failed_entries: tuple[str, ...]  # never archived; a note, not a problem

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "problems": [{"path": p.path, "problem": p.problem, "detail": p.detail} for p in self.problems],
            "failed_entries": list(self.failed_entries),
        }


def resolve_inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` if ``rel`` is a plain relative path that stays inside root."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(part in ("..", "") for part in pure.parts) or "\\" in rel:
        return None
    return root.joinpath(*pure.parts)


def hash_file(path: Path, want_sha256: bool) -> tuple[int, int, str | None]:
    """(size, CRC64, SHA-256 hex or None) in one read of the file."""
    crc = 0
    size = 0
    sha = hashlib.sha256() if want_sha256 else None
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            crc = checksum.crc64(chunk, crc)
            if sha is not None:
                sha.update(chunk)
            size += n
    return size, crc, sha.hexdigest() if sha is not None else None


def check_record(root: Path, record: FileRecord) -> list[VerifyProblem]:
    """Every problem of one vouched file (pure apart from reading it)."""
    path = resolve_inside(root, record.path)
    if path is None:
        return [VerifyProblem(record.path, "missing", "path is not inside the manifest's folder")]
    try:
        st = path.stat()
    except FileNotFoundError:
        return [VerifyProblem(record.path, "missing", "file not found")]
    except OSError as exc:
        return [VerifyProblem(record.path, "missing", f"cannot stat: {exc.strerror}")]
    if not path.is_file():
        return [VerifyProblem(record.path, "missing", "not a regular file")]
    problems: list[VerifyProblem] = []
    if record.size is not None and st.st_size != record.size:
        problems.append(
            VerifyProblem(record.path, "size", f"size {st.st_size}, manifest says {record.size}")
        )
    try:
        size, crc, sha = hash_file(path, want_sha256=bool(record.sha256))
    except OSError as exc:
        return [*problems, VerifyProblem(record.path, "missing", f"cannot read: {exc.strerror}")]
    if record.crc64 is not None and str(crc) != record.crc64:
        problems.append(
            VerifyProblem(record.path, "crc64", f"CRC64 {crc}, manifest says {record.crc64}")
        )
    if record.sha256 and sha != record.sha256:
        problems.append(VerifyProblem(record.path, "sha256", "SHA-256 differs from the manifest"))
    return problems


def verify(manifest: Manifest, root: Path, *, threads: int = 2) -> VerifyResult:
    """Re-check every file the manifest vouches for; report all problems, not the first."""
    vouched = [f for f in manifest.files if f.vouched]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        found = list(pool.map(lambda r: check_record(root, r), vouched))
    problems = tuple(p for group in found for p in group)
    failed = tuple(f.path for f in manifest.files if f.status == "failed")
    return VerifyResult(len(vouched), problems, failed)
