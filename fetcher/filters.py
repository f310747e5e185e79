"""Validation of the list/fetch filters, before any request is sent (pure).

Each filter maps 1:1 onto a DescribeBackups parameter. Bad values raise ``UsageError`` naming
the option, so the CLI exits 2 without having talked to the API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone

from fetcher.errors import UsageError

BACKUP_STATUSES = ("Success", "Failed")
BACKUP_MODES = ("Automated", "Manual")
BACKUP_TYPES = ("FullBackup", "IncrementalBackup")

API_TIME_FORMAT = "%Y-%m-%dT%H:%MZ"

# Instance ids are short ASCII tokens (rm-..., pgm-..., pc-...); refuse anything that could
# not be one rather than sending it, so a typo is caught with a clear message.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def parse_time(text: str, option: str) -> datetime:
    """Any ISO 8601 time (with or without offset; none means UTC) or a bare date, to UTC.

    ``yyyy-MM-ddTHH:mmZ`` is the API's own form; offsets are converted; a bare date is UTC
    midnight.
    """
    value = text.strip()
    if not value:
        raise UsageError(f"{option}: empty time")
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            d = date.fromisoformat(value)
            return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise UsageError(
            f"{option}: {text!r} is not a time; use e.g. 2026-11-27T16:00Z, "
            "2026-11-27T18:00+02:00 or 2026-11-27"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def format_api_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(API_TIME_FORMAT)


def _choice(value: str | None, option: str, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    for choice in choices:
        if value.lower() == choice.lower():
            return choice
    raise UsageError(f"{option}: {value!r} is not one of {', '.join(choices)}")


def _identifier(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not _ID_RE.match(value):
        raise UsageError(f"{option}: {value!r} is not a valid identifier")
    return value


def validate_instance_id(value: str, option: str = "--instance") -> str:
    checked = _identifier(value, option)
    assert checked is not None
    return checked


@dataclass(frozen=True)
class BackupFilters:
    instance_id: str
    backup_id: str | None = None
    status: str | None = None
    mode: str | None = None
    backup_type: str | None = None
    start: str | None = None  # already yyyy-MM-ddTHH:mmZ
    end: str | None = None
    resource_group: str | None = None

    def params(self) -> dict[str, str]:
        """DescribeBackups parameters, without paging."""
        out = {"DBInstanceId": self.instance_id}
        for key, value in (
            ("BackupId", self.backup_id),
            ("BackupStatus", self.status),
            ("BackupMode", self.mode),
            ("BackupType", self.backup_type),
            ("StartTime", self.start),
            ("EndTime", self.end),
            ("ResourceGroupId", self.resource_group),
        ):
            if value is not None:
                out[key] = value
        return out

    def for_instance(self, instance_id: str) -> BackupFilters:
        return BackupFilters(
            instance_id, self.backup_id, self.status, self.mode, self.backup_type,
            self.start, self.end, self.resource_group,
        )

    def for_backup(self, backup_id: str) -> BackupFilters:
        """Only the instance and the id: used to refresh one set's URLs."""
        return BackupFilters(self.instance_id, backup_id=backup_id)


def build_filters(
    *,
    instance_id: str,
    backup_id: str | None = None,
    status: str | None = None,
    mode: str | None = None,
    backup_type: str | None = None,
    start: str | None = None,
    end: str | None = None,
    resource_group: str | None = None,
) -> BackupFilters:
    """Validate raw option values into filters; raises UsageError naming the option."""
    iid = validate_instance_id(instance_id)
    start_dt = parse_time(start, "--start") if start is not None else None
    end_dt = parse_time(end, "--end") if end is not None else None
    start_s = format_api_time(start_dt) if start_dt else None
    end_s = format_api_time(end_dt) if end_dt else None
    # Compare what is sent: the API's minute resolution could make two distinct inputs equal.
    if start_s and end_s and end_s <= start_s:
        raise UsageError(f"--end ({end_s}) must be later than --start ({start_s})")
    return BackupFilters(
        instance_id=iid,
        backup_id=_identifier(backup_id, "--backup-id"),
        status=_choice(status, "--status", BACKUP_STATUSES),
        mode=_choice(mode, "--mode", BACKUP_MODES),
        backup_type=_choice(backup_type, "--type", BACKUP_TYPES),
        start=start_s,
        end=end_s,
        resource_group=_identifier(resource_group, "--resource-group"),
    )
