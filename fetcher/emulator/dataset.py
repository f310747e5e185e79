"""The emulator's data set: instances, backup sets and the objects behind their URLs.

A data set is a JSON document (``samples/demo.json`` is the built-in one)::

    {"region": "cn-hangzhou",
     "credentials": [{"access_key_id": "...", "access_key_secret": "...",
                      "security_token": null}],
     "instances": [{"DBInstanceId": "rm-...", "Engine": "MySQL", "EngineVersion": "8.0",
                    "DBInstanceType": "Primary",
                    "backups": [{<DescribeBackups fields>,
                                 "object": <object>, "faults": {...},
                                 "databases": [{"DataBase": "db1", "object": <object>}]}],
                    "synthetic": {"count": 10000, "size": 4096}}],
     "synthetic_instances": {"count": 250, "backups": 2}}

An ``<object>`` is ``{"name": "x.tar.gz", "size": 1048576, "seed": "s"}`` (generated),
``{"name": ..., "file": "relative/path"}``, ``{"name": ..., "sample": "good.tar.gz"}``
(a built-in small archive) or ``{"name": ..., "text": "..."}``; ``null`` means the set has no
downloadable file (a Snapshot backup). The API fields ``BackupSize`` and ``Checksum`` are
computed from the object unless the set gives them (``"Checksum": null`` drops it).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fetcher.emulator.content import BytesContent, Content, FileContent, GeneratedContent
from fetcher.errors import UsageError

DEMO_DATA = Path(__file__).with_name("demo.json")

_PRIVATE_KEYS = ("object", "faults", "databases")


@dataclass
class Faults:
    """Per-object fault knobs; tests set them directly, data sets under ``"faults"``."""

    drop_after: int | None = None  # close the connection after this many body bytes...
    drop_times: int = 0  # ...for this many GETs (shared with drop_at)
    # Close the connection when the body reaches this object offset, in GETs whose range
    # holds it (so a drop "at 50%" hits whichever segment carries that byte).
    drop_at: int | None = None
    stall_after: int | None = None  # send this many bytes, then go silent...
    stall_times: int = 0  # ...for this many GETs
    stall_seconds: float = 3600.0
    corrupt_offset: int | None = None  # flip the byte at this object offset...
    corrupt_times: int | None = None  # ...in this many GETs that carry it (None: always)
    change_after_gets: int | None = None  # replace the object after this many GETs
    rate: int | None = None  # bytes per second per connection
    url_ttl: float | None = None  # lifetime of this object's signed URLs
    archived: bool = False  # 403 InvalidObjectState
    ignore_range: bool = False  # answer 200 with the whole object to ranged GETs
    wrong_content_range: bool = False  # 206 whose Content-Range starts elsewhere
    error_status: int = 500  # status of the error burst...
    error_times: int = 0  # ...for this many GETs
    no_crc_header: bool = False
    wrong_crc_header: bool = False  # advertise a CRC that does not match the bytes

    @classmethod
    def from_dict(cls, doc: Any) -> Faults:
        if not doc:
            return cls()
        if not isinstance(doc, dict):
            raise UsageError("data set: 'faults' must be an object")
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise UsageError(f"data set: unknown fault knob(s) {', '.join(sorted(unknown))}")
        return cls(**doc)


@dataclass
class ObjectStats:
    gets: int = 0
    heads: int = 0
    bytes_sent: int = 0
    statuses: list[int] = field(default_factory=list)
    ranges: list[str | None] = field(default_factory=list)
    if_match: list[str | None] = field(default_factory=list)


@dataclass(eq=False)
class EmuObject:
    """One object in the emulated bucket; ``key`` is the raw (encoded) URL path."""

    key: str
    name: str
    database: str | None
    content: Content
    faults: Faults = field(default_factory=Faults)
    stats: ObjectStats = field(default_factory=ObjectStats)
    version: int = 0
    reuploads: int = 0  # same bytes uploaded again this many times (each gives a new ETag)

    @property
    def size(self) -> int:
        return self.content.size

    @property
    def etag(self) -> str:
        if not self.reuploads:
            return self.content.md5_etag
        # OSS ETags depend on how an object was uploaded (multipart or not), not only on
        # its bytes: a re-upload of identical content may well carry a new one.
        digest = hashlib.md5(f"{self.content.md5_etag}#{self.reuploads}".encode(), usedforsecurity=False)
        return f'"{digest.hexdigest().upper()}"'

    @property
    def crc64(self) -> int:
        return self.content.crc64

    def change(self) -> None:
        """Replace the object's bytes (same size, new ETag and CRC64), as a re-upload."""
        self.version += 1
        self.content = GeneratedContent(f"{self.key}#{self.database}#v{self.version}", self.size)

    def reupload(self) -> None:
        """Upload the same bytes again: new ETag, same size and CRC64."""
        self.version += 1
        self.reuploads += 1


@dataclass(eq=False)
class EmuBackup:
    instance_id: str
    fields: dict[str, Any]
    whole: EmuObject | None
    databases: list[EmuObject]

    @property
    def backup_id(self) -> str:
        return str(self.fields.get("BackupId"))

    @property
    def start_time(self) -> str:
        return str(self.fields.get("BackupStartTime") or "")


@dataclass(eq=False)
class EmuInstance:
    fields: dict[str, Any]
    backups: list[EmuBackup]

    @property
    def instance_id(self) -> str:
        return str(self.fields["DBInstanceId"])


@dataclass(frozen=True)
class Credential:
    access_key_id: str
    access_key_secret: str
    security_token: str | None = None


@dataclass(eq=False)
class DataSet:
    region: str
    credentials: list[Credential]
    instances: dict[str, EmuInstance]
    bucket: str = "rdsbak-hz-v3"
    objects: dict[tuple[str, str | None], EmuObject] = field(default_factory=dict)

    def find(self, instance_id: str, backup_id: str, database: str | None = None) -> EmuObject:
        """The object of one set (or of one of its databases), for tests to poke at."""
        for backup in self.instances[instance_id].backups:
            if backup.backup_id == backup_id:
                if database is None and backup.whole is not None:
                    return backup.whole
                for obj in backup.databases:
                    if obj.database == database:
                        return obj
        raise KeyError((instance_id, backup_id, database))


def _quote_segment(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _make_content(spec: dict[str, Any], base: Path) -> Content:
    if "file" in spec:
        path = (base / str(spec["file"])).resolve()
        if not path.is_file():
            raise UsageError(f"data set: object file {path} does not exist")
        return FileContent(path)
    if "sample" in spec:
        from fetcher.emulator.archives import build_samples

        samples = build_samples()
        name = str(spec["sample"])
        if name not in samples:
            raise UsageError(f"data set: unknown sample {name!r} ({', '.join(sorted(samples))})")
        return BytesContent(samples[name])
    if "text" in spec:
        return BytesContent(str(spec["text"]).encode())
    if "size" in spec:
        size = int(spec["size"])
        if size < 0:
            raise UsageError("data set: object size must not be negative")
        return GeneratedContent(str(spec.get("seed", spec.get("name", "object"))), size)
    raise UsageError("data set: an object needs one of size, file, sample or text")


class _Builder:
    def __init__(self, base: Path, bucket: str) -> None:
        self.base = base
        self.bucket = bucket
        self.objects: dict[tuple[str, str | None], EmuObject] = {}

    def obj(
        self, spec: Any, instance_id: str, backup_id: str, database: str | None, faults: Any
    ) -> EmuObject | None:
        if spec is None:
            return None
        if not isinstance(spec, dict):
            raise UsageError(f"data set: object of backup {backup_id} must be an object or null")
        name = str(spec.get("name") or f"{backup_id}.bak")
        custins = str(spec.get("prefix") or f"custins{zlib.crc32(instance_id.encode()) % 10**8}")
        key = f"/{self.bucket}/{_quote_segment(custins)}/{backup_id}/{_quote_segment(name)}"
        seed_spec = dict(spec)
        seed_spec.setdefault("seed", f"{instance_id}/{backup_id}/{database}/{name}")
        obj = EmuObject(
            key=key,
            name=name,
            database=database,
            content=_make_content(seed_spec, self.base),
            faults=Faults.from_dict(faults),
        )
        if (key, database) in self.objects:
            raise UsageError(f"data set: two objects at {key} (database {database})")
        self.objects[(key, database)] = obj
        return obj

    def backup(self, instance: dict[str, Any], raw: dict[str, Any]) -> EmuBackup:
        iid = str(instance["DBInstanceId"])
        fields_ = {k: v for k, v in raw.items() if k not in _PRIVATE_KEYS}
        fields_.setdefault("DBInstanceId", iid)
        for key in ("Engine", "EngineVersion", "ResourceGroupId"):
            if key in instance:
                fields_.setdefault(key, instance[key])
        bid = str(fields_.get("BackupId") or "")
        if not bid:
            raise UsageError(f"data set: a backup of {iid} has no BackupId")
        whole = self.obj(raw.get("object"), iid, bid, None, raw.get("faults"))
        dbs: list[EmuObject] = []
        for db in raw.get("databases") or []:
            name = str(db.get("DataBase") or "")
            spec = db.get("object")
            if spec is not None and whole is not None:
                spec = {"name": whole.name, **spec}
            o = self.obj(spec, iid, bid, name, db.get("faults"))
            if o is not None:
                dbs.append(o)
        return EmuBackup(iid, fields_, whole, dbs)


def synthetic_backups(instance_id: str, count: int, size: int, engine: str) -> list[dict[str, Any]]:
    """``count`` plausible backup sets, one a day going back, all small generated objects."""
    out: list[dict[str, Any]] = []
    base = datetime(2026, 11, 27, 16, 0, tzinfo=timezone.utc)
    for i in range(count):
        start = base - timedelta(hours=6 * i)
        end = start + timedelta(minutes=20)
        bid = str(500000000 + i)
        full = i % 4 == 0
        out.append(
            {
                "BackupId": bid,
                "BackupStatus": "Success",
                "BackupType": "FullBackup" if full else "IncrementalBackup",
                "BackupMethod": "Physical",
                "BackupMode": "Automated" if i % 7 else "Manual",
                "BackupStartTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "BackupEndTime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "IsAvail": 1,
                "StorageClass": "0",
                "BackupInitiator": "System",
                "Engine": engine,
                "object": {
                    "name": f"hins{i}_{start.strftime('%Y%m%d%H%M%S')}.tar.gz",
                    "size": size,
                    "seed": f"synthetic/{instance_id}/{i}",
                },
            }
        )
    return out


def load(path: Path | None = None, doc: dict[str, Any] | None = None) -> DataSet:
    """Load a data set file (default: the built-in demo data) or an already-decoded one."""
    base = Path.cwd()
    if doc is None:
        what = "--data" if path is not None else "the built-in demo data set"
        path = path or DEMO_DATA
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{what}: cannot read {path}: {exc}") from None
        base = path.parent
    if not isinstance(doc, dict):
        raise UsageError("data set: the document must be a JSON object")
    creds = [
        Credential(str(c["access_key_id"]), str(c["access_key_secret"]), c.get("security_token"))
        for c in doc.get("credentials") or []
    ]
    if not creds:
        raise UsageError("data set: at least one entry under 'credentials' is needed")
    builder = _Builder(base, str(doc.get("bucket") or "rdsbak-hz-v3"))
    instances: dict[str, EmuInstance] = {}
    raw_instances = list(doc.get("instances") or [])
    synth = doc.get("synthetic_instances")
    if synth:
        engines = ("MySQL", "PostgreSQL", "SQLServer", "MariaDB")
        for i in range(int(synth.get("count", 0))):
            engine = engines[i % len(engines)]
            iid = f"rm-synth{i:05d}"
            raw_instances.append(
                {
                    "DBInstanceId": iid,
                    "Engine": engine,
                    "EngineVersion": "8.0",
                    "DBInstanceType": "Readonly" if i % 10 == 9 else "Primary",
                    "backups": []
                    if i % 10 == 9
                    else synthetic_backups(iid, int(synth.get("backups", 1)), 1024, engine),
                }
            )
    for raw in raw_instances:
        if not isinstance(raw, dict) or not raw.get("DBInstanceId"):
            raise UsageError("data set: every instance needs a DBInstanceId")
        iid = str(raw["DBInstanceId"])
        if iid in instances:
            raise UsageError(f"data set: instance {iid} appears twice")
        inst_fields = {k: v for k, v in raw.items() if k not in ("backups", "synthetic")}
        inst_fields.setdefault("DBInstanceType", "Primary")
        backup_docs = list(raw.get("backups") or [])
        synthetic = raw.get("synthetic")
        if synthetic:
            backup_docs += synthetic_backups(
                iid, int(synthetic.get("count", 0)), int(synthetic.get("size", 1024)),
                str(raw.get("Engine", "MySQL")),
            )
        backups = [builder.backup(raw, b) for b in backup_docs]
        seen: set[str] = set()
        for b in backups:
            if b.backup_id in seen:
                raise UsageError(f"data set: backup {b.backup_id} of {iid} appears twice")
            seen.add(b.backup_id)
        # Newest first, as the API lists them.
        backups.sort(key=lambda b: b.start_time, reverse=True)
        instances[iid] = EmuInstance(inst_fields, backups)
    return DataSet(
        region=str(doc.get("region") or "cn-hangzhou"),
        credentials=creds,
        instances=instances,
        bucket=builder.bucket,
        objects=builder.objects,
    )
