"""Plain typed models of DescribeBackups answers, parsed by pure code.

The API is loose: numbers arrive as strings or numbers (the document's sample and the SDK
disagree), fields may be missing or null, URLs may be empty, and the per-database links are
nested twice (``BackupDownloadLinkByDB.BackupDownloadLinkByDB[]``). Parsing accepts all of
that and keeps the raw object for ``list --format json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fetcher.checksum import parse_crc
from fetcher.errors import ApiError


@dataclass(frozen=True)
class DatabaseLink:
    database: str
    public_url: str | None
    internal_url: str | None


@dataclass(frozen=True)
class BackupSet:
    backup_id: str
    instance_id: str
    status: str
    backup_type: str
    backup_method: str
    backup_mode: str
    start: datetime | None
    end: datetime | None
    size: int | None
    checksum: int | None
    is_avail: bool
    storage_class: str
    engine: str
    engine_version: str
    public_url: str | None
    internal_url: str | None
    databases: tuple[DatabaseLink, ...]
    raw: dict[str, Any] = field(compare=False, repr=False)

    @property
    def archived(self) -> bool:
        return self.storage_class == "1"


@dataclass(frozen=True)
class BackupPage:
    page_number: int
    page_record_count: int
    total_record_count: int
    items: tuple[BackupSet, ...]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _url(value: Any) -> str | None:
    text = _text(value)
    if not text or text.lower() in {"null", "none"}:
        return None
    return text


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return None


def parse_api_time(value: Any) -> datetime | None:
    """``2019-02-03T12:20:00Z`` or ``2019-02-03T12:20Z`` (both occur) to an aware datetime."""
    text = _text(value)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _list_under(container: Any, key: str) -> list[Any]:
    """``{"Backup": [...]}`` -> [...]; also accepts a bare list, a single object, or null."""
    if container is None:
        return []
    if isinstance(container, dict):
        inner = container.get(key)
        if inner is None:
            return []
        if isinstance(inner, list):
            return inner
        if isinstance(inner, dict):
            return [inner]
        return []
    if isinstance(container, list):
        return container
    return []


def parse_database_links(raw: Any) -> tuple[DatabaseLink, ...]:
    links: list[DatabaseLink] = []
    for item in _list_under(raw, "BackupDownloadLinkByDB"):
        if not isinstance(item, dict):
            continue
        name = _text(item.get("DataBase"))
        if not name:
            continue
        links.append(
            DatabaseLink(
                database=name,
                public_url=_url(item.get("DownloadLink")),
                internal_url=_url(item.get("IntranetDownloadLink")),
            )
        )
    return tuple(links)


def parse_backup(raw: dict[str, Any]) -> BackupSet:
    backup_id = _text(raw.get("BackupId"))
    if not backup_id:
        raise ApiError("InvalidResponse", "a backup set in the response has no BackupId")
    is_avail = _int(raw.get("IsAvail"))
    return BackupSet(
        backup_id=backup_id,
        instance_id=_text(raw.get("DBInstanceId")),
        status=_text(raw.get("BackupStatus")),
        backup_type=_text(raw.get("BackupType")),
        backup_method=_text(raw.get("BackupMethod")),
        backup_mode=_text(raw.get("BackupMode")),
        start=parse_api_time(raw.get("BackupStartTime")),
        end=parse_api_time(raw.get("BackupEndTime")),
        size=_int(raw.get("BackupSize")),
        checksum=parse_crc(raw.get("Checksum")),
        # Absent IsAvail is not evidence of unavailability; only an explicit 0 is.
        is_avail=is_avail is None or is_avail != 0,
        storage_class=_text(raw.get("StorageClass")),
        engine=_text(raw.get("Engine")),
        engine_version=_text(raw.get("EngineVersion")),
        public_url=_url(raw.get("BackupDownloadURL")),
        internal_url=_url(raw.get("BackupIntranetDownloadURL")),
        databases=parse_database_links(raw.get("BackupDownloadLinkByDB")),
        raw=raw,
    )


def parse_backup_page(doc: Any) -> BackupPage:
    """One DescribeBackups response document to a page of backup sets."""
    if not isinstance(doc, dict):
        raise ApiError("InvalidResponse", "DescribeBackups did not return a JSON object")
    items = _list_under(doc.get("Items"), "Backup")
    backups = tuple(parse_backup(item) for item in items if isinstance(item, dict))
    return BackupPage(
        page_number=_int(doc.get("PageNumber")) or 1,
        page_record_count=_int(doc.get("PageRecordCount")) or len(backups),
        total_record_count=_int(doc.get("TotalRecordCount")) or 0,
        items=backups,
    )


@dataclass(frozen=True)
class DBInstance:
    instance_id: str
    engine: str
    engine_version: str
    instance_type: str  # Primary, Readonly, Guard, Temp
    region: str
    raw: dict[str, Any] = field(compare=False, repr=False)

    @property
    def read_only(self) -> bool:
        return self.instance_type.lower() == "readonly"


@dataclass(frozen=True)
class InstancePage:
    page_number: int
    total_record_count: int
    items: tuple[DBInstance, ...]


def parse_instance_page(doc: Any) -> InstancePage:
    """One DescribeDBInstances response document."""
    if not isinstance(doc, dict):
        raise ApiError("InvalidResponse", "DescribeDBInstances did not return a JSON object")
    out: list[DBInstance] = []
    for item in _list_under(doc.get("Items"), "DBInstance"):
        if not isinstance(item, dict):
            continue
        iid = _text(item.get("DBInstanceId"))
        if not iid:
            continue
        out.append(
            DBInstance(
                instance_id=iid,
                engine=_text(item.get("Engine")),
                engine_version=_text(item.get("EngineVersion")),
                instance_type=_text(item.get("DBInstanceType")),
                region=_text(item.get("RegionId")),
                raw=item,
            )
        )
    return InstancePage(
        page_number=_int(doc.get("PageNumber")) or 1,
        total_record_count=_int(doc.get("TotalRecordCount")) or 0,
        items=tuple(out),
    )
