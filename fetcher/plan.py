"""Planning (pure): from backup sets and options to the files to fetch and the sets to skip.

Decides, per file: which URL (internal or public, whole set or per-database link), where it
goes under DEST (every component made safe: nothing can escape DEST whatever the API
returns), and what size and CRC64 to expect. Sets that cannot be downloaded are skipped with
the reason recorded. Reachability of internal hosts is measured elsewhere and passed in.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Literal
from urllib.parse import unquote, urlsplit

from fetcher.api.models import BackupSet
from fetcher.errors import UsageError

Network = Literal["internal", "public"]
NetworkChoice = Literal["auto", "internal", "public"]

_MAX_COMPONENT_BYTES = 200  # room for ".part.state.tmp" under the usual 255-byte limit


@dataclass(frozen=True)
class DatabaseSelection:
    """``whole`` (the set's own file), ``all`` per-database links, or named databases."""

    whole: bool = True
    all_databases: bool = False
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> DatabaseSelection:
        value = text.strip()
        if value.lower() == "whole":
            return cls()
        if value.lower() == "all":
            return cls(whole=False, all_databases=True)
        names = frozenset(n.strip() for n in value.split(",") if n.strip())
        if not names:
            raise UsageError("--databases: give whole, all, or database names separated by commas")
        return cls(whole=False, names=names)

    @property
    def per_database(self) -> bool:
        return self.all_databases or bool(self.names)

    def wants(self, database: str) -> bool:
        return self.all_databases or database in self.names


@dataclass(frozen=True)
class PlannedFile:
    instance_id: str
    backup_id: str
    database: str | None
    network: Network
    url: str = field(repr=False)  # a secret: signed
    rel_path: str  # relative to DEST, "/" separators
    expected_size: int | None
    expected_crc: int | None  # the API's Checksum; None for per-database links
    backup: BackupSet = field(repr=False, compare=False)

    @property
    def key(self) -> str:
        return self.rel_path

    def with_url(self, url: str, backup: BackupSet) -> PlannedFile:
        return replace(
            self,
            url=url,
            backup=backup,
            expected_crc=backup.checksum if self.database is None else None,
            expected_size=self.expected_size if self.database is not None else _size(backup),
        )


@dataclass(frozen=True)
class Skip:
    instance_id: str
    backup_id: str
    database: str | None
    reason: str


@dataclass(frozen=True)
class Plan:
    files: tuple[PlannedFile, ...]
    skipped: tuple[Skip, ...]

    @property
    def known_bytes(self) -> int:
        return sum(f.expected_size or 0 for f in self.files)


# ----------------------------------------------------------------------------- paths


def safe_component(text: str, fallback: str) -> str:
    """One path component that cannot escape, hide as an option, or break a terminal."""
    value = unicodedata.normalize("NFC", text)
    value = "".join(
        "_" if ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch
        for ch in value
    ).strip()
    if value in ("", ".", ".."):
        value = fallback
    if value.startswith("-"):
        value = "_" + value[1:]
    encoded = value.encode("utf-8")
    if len(encoded) > _MAX_COMPONENT_BYTES:
        value = encoded[:_MAX_COMPONENT_BYTES].decode("utf-8", "ignore")
    return value


def file_name_from_url(url: str, fallback: str) -> str:
    """The last segment of the URL path, percent-decoded, made safe."""
    path = urlsplit(url).path
    last = path.rsplit("/", 1)[-1] if path else ""
    return safe_component(unquote(last, errors="replace"), fallback)


def _dedupe(path: str, used: set[str]) -> str:
    if path not in used:
        used.add(path)
        return path
    head, _, name = path.rpartition("/")
    stem, dot, ext = name.partition(".")
    n = 2
    while True:
        candidate = f"{head}/{stem}~{n}{dot}{ext}"
        if candidate not in used:
            used.add(candidate)
            return candidate
        n += 1


# ----------------------------------------------------------------------------- planning


def _size(backup: BackupSet) -> int | None:
    return backup.size if backup.size is not None and backup.size > 0 else None


def _pick_url(
    public: str | None,
    internal: str | None,
    choice: NetworkChoice,
    reachable: Mapping[str, bool],
) -> tuple[Network, str] | str:
    """(network, url), or a skip reason."""
    if choice == "internal":
        return ("internal", internal) if internal else "no internal (VPC) URL"
    if choice == "public":
        return ("public", public) if public else "no public URL"
    if internal and reachable.get(host_port(internal), False):
        return "internal", internal
    if public:
        return "public", public
    if internal:
        return "internal", internal  # the only way there is; let the transfer say if it fails
    return "no download URL"


def host_port(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def internal_hosts(backups: Iterable[BackupSet]) -> set[str]:
    """Every internal host:port the plan might use (to probe once each)."""
    out: set[str] = set()
    for b in backups:
        for url in [b.internal_url, *(d.internal_url for d in b.databases)]:
            if url:
                out.add(host_port(url))
    return out


def _unavailable(backup: BackupSet) -> str | None:
    if backup.status != "Success":
        return f"BackupStatus is {backup.status or 'missing'}"
    if not backup.is_avail:
        return "IsAvail is 0 (backup set unavailable)"
    if backup.archived:
        return "archived: restore it first"
    return None


def _sort_key(backup: BackupSet) -> datetime:
    return backup.start or datetime.min.replace(tzinfo=timezone.utc)


def check_database_names(backups: Iterable[BackupSet], selection: DatabaseSelection) -> None:
    """Named databases must exist in at least one matching set (else exit 2, naming them)."""
    if not selection.names:
        return
    existing = sorted({d.database for b in backups for d in b.databases})
    missing = sorted(selection.names - set(existing))
    if missing:
        raise UsageError(
            f"--databases: {', '.join(missing)} not found in the matching backup sets; "
            f"databases that exist: {', '.join(existing) or 'none (no per-database links)'}"
        )


def make_plan(
    backups: Iterable[BackupSet],
    *,
    databases: DatabaseSelection = DatabaseSelection(),
    network: NetworkChoice = "auto",
    reachable: Mapping[str, bool] | None = None,
    latest: bool = False,
) -> Plan:
    """Decide every file and skip. Pure: same inputs, same plan."""
    reachable = reachable or {}
    backups = list(backups)
    check_database_names(backups, databases)
    files: list[PlannedFile] = []
    skipped: list[Skip] = []
    used: set[str] = set()

    def files_of(backup: BackupSet) -> tuple[list[PlannedFile], list[Skip]]:
        out: list[PlannedFile] = []
        skips: list[Skip] = []
        reason = _unavailable(backup)
        if reason:
            return out, [Skip(backup.instance_id, backup.backup_id, None, reason)]
        instance_dir = safe_component(backup.instance_id, "instance")
        set_dir = f"{instance_dir}/{safe_component(backup.backup_id, 'backup')}"
        if databases.whole:
            picked = _pick_url(backup.public_url, backup.internal_url, network, reachable)
            if isinstance(picked, str):
                why = picked if picked != "no download URL" else (
                    f"no download URL (BackupMethod {backup.backup_method or 'unknown'})"
                )
                skips.append(Skip(backup.instance_id, backup.backup_id, None, why))
            else:
                kind, url = picked
                name = file_name_from_url(url, f"backup-{backup.backup_id}")
                out.append(
                    PlannedFile(
                        backup.instance_id, backup.backup_id, None, kind, url,
                        f"{set_dir}/{name}", _size(backup), backup.checksum, backup,
                    )
                )
        if databases.per_database:
            wanted = [d for d in backup.databases if databases.wants(d.database)]
            if not wanted and not databases.whole:
                why = (
                    "no per-database links"
                    if not backup.databases
                    else "none of the requested databases"
                )
                skips.append(Skip(backup.instance_id, backup.backup_id, None, why))
            for link in wanted:
                picked = _pick_url(link.public_url, link.internal_url, network, reachable)
                if isinstance(picked, str):
                    skips.append(Skip(backup.instance_id, backup.backup_id, link.database, picked))
                    continue
                kind, url = picked
                db_dir = safe_component(link.database, "database")
                name = file_name_from_url(url, f"{link.database}.bak")
                out.append(
                    PlannedFile(
                        backup.instance_id, backup.backup_id, link.database, kind, url,
                        f"{set_dir}/databases/{db_dir}/{name}", None, None, backup,
                    )
                )
        return out, skips

    if latest:
        by_instance: dict[str, list[BackupSet]] = {}
        for b in backups:
            by_instance.setdefault(b.instance_id, []).append(b)
        chosen: list[BackupSet] = []
        for group in by_instance.values():
            for b in sorted(group, key=_sort_key, reverse=True):
                candidate, _ = files_of(b)
                if candidate:
                    chosen.append(b)
                    break
        backups = chosen

    for backup in backups:
        planned, skips = files_of(backup)
        skipped.extend(skips)
        for f in planned:
            files.append(replace(f, rel_path=_dedupe(f.rel_path, used)))
    return Plan(tuple(files), tuple(skipped))


def replan_file(old: PlannedFile, fresh: BackupSet) -> PlannedFile | None:
    """The same file (same kind of URL, same database) from a fresh listing of its set."""
    if old.database is None:
        url = fresh.internal_url if old.network == "internal" else fresh.public_url
    else:
        link = next((d for d in fresh.databases if d.database == old.database), None)
        if link is None:
            return None
        url = link.internal_url if old.network == "internal" else link.public_url
    if not url:
        return None
    return old.with_url(url, fresh)
