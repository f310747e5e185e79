"""Pure planning and manifest logic, with plain values."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fetcher import checksum
from fetcher import manifest as mf
from fetcher.api.models import parse_backup
from fetcher.emulator import dataset
from fetcher.errors import UsageError
from fetcher.plan import DatabaseSelection, file_name_from_url, make_plan, replan_file, safe_component

ROOT = Path(__file__).resolve().parent.parent


def raw(backup_id: str, **kw: Any) -> dict[str, Any]:
    doc = {
        "BackupId": backup_id, "DBInstanceId": "rm-1", "BackupStatus": "Success", "IsAvail": 1,
        "BackupType": "FullBackup", "BackupMethod": "Physical", "StorageClass": "0",
        "BackupStartTime": f"2026-11-{int(backup_id) % 28 + 1:02d}T00:00:00Z", "BackupSize": 100,
        "Checksum": "123",
        "BackupDownloadURL": f"http://pub.example/b/{backup_id}/file%20{backup_id}.tar.gz?Expires=1&Signature=s",
        "BackupIntranetDownloadURL": f"http://int-internal.example/b/{backup_id}/file%20{backup_id}.tar.gz?Expires=1",
    }
    doc.update(kw)
    return doc


def sets(*docs: dict[str, Any]) -> list[Any]:
    return [parse_backup(d) for d in docs]


def test_layout_and_expectations() -> None:
    plan = make_plan(sets(raw("11")), network="public")
    (f,) = plan.files
    assert f.rel_path == "rm-1/11/file 11.tar.gz"
    assert f.network == "public" and f.url.startswith("http://pub.example/")
    assert (f.expected_size, f.expected_crc) == (100, 123)
    assert plan.skipped == ()


def test_network_choice() -> None:
    s = sets(raw("11"))
    reach = {"int-internal.example:80": True}
    assert make_plan(s, network="auto", reachable=reach).files[0].network == "internal"
    assert make_plan(s, network="auto", reachable={}).files[0].network == "public"
    assert make_plan(s, network="internal").files[0].network == "internal"
    only_public = sets(raw("12", BackupIntranetDownloadURL=""))
    plan = make_plan(only_public, network="internal")
    assert plan.files == () and plan.skipped[0].reason == "no internal (VPC) URL"
    assert make_plan(only_public, network="auto").files[0].network == "public"


@pytest.mark.parametrize(
    "fields,reason",
    [
        ({"BackupStatus": "Failed"}, "BackupStatus is Failed"),
        ({"IsAvail": 0}, "IsAvail is 0 (backup set unavailable)"),
        ({"StorageClass": "1"}, "archived: restore it first"),
        ({"BackupDownloadURL": None, "BackupIntranetDownloadURL": None, "BackupMethod": "Snapshot"},
         "no download URL (BackupMethod Snapshot)"),
    ],
)
def test_skips_with_reasons(fields: dict[str, Any], reason: str) -> None:
    plan = make_plan(sets(raw("11", **fields)))
    assert plan.files == ()
    assert [(s.backup_id, s.reason) for s in plan.skipped] == [("11", reason)]


def test_latest_is_newest_downloadable() -> None:
    s = sets(
        raw("20", BackupStartTime="2026-11-27T00:00:00Z", BackupStatus="Failed"),
        raw("19", BackupStartTime="2026-11-26T00:00:00Z"),
        raw("18", BackupStartTime="2026-11-25T00:00:00Z"),
        raw("30", DBInstanceId="rm-2", BackupStartTime="2026-11-01T00:00:00Z"),
    )
    plan = make_plan(s, latest=True)
    assert sorted(f.backup_id for f in plan.files) == ["19", "30"]


def test_database_selection_and_unknown_names() -> None:
    links = {"BackupDownloadLinkByDB": {"BackupDownloadLinkByDB": [
        {"DataBase": "shop", "DownloadLink": "http://h/x/set.zip?dbList=shop"},
        {"DataBase": "../../evil", "DownloadLink": "http://h/x/set.zip?dbList=evil"},
    ]}}
    s = sets(raw("11", **links), raw("12"))
    plan = make_plan(s, databases=DatabaseSelection.parse("all"), network="public")
    assert sorted(f.rel_path for f in plan.files) == [
        "rm-1/11/databases/.._.._evil/set.zip", "rm-1/11/databases/shop/set.zip",
    ]
    assert all(f.expected_crc is None and f.expected_size is None for f in plan.files)
    assert [(k.backup_id, k.reason) for k in plan.skipped] == [("12", "no per-database links")]
    named = make_plan(s, databases=DatabaseSelection.parse("shop"), network="public")
    assert [f.database for f in named.files] == ["shop"]
    with pytest.raises(UsageError, match="nope not found.*shop"):
        make_plan(s, databases=DatabaseSelection.parse("nope"))
    both = make_plan(s, databases=DatabaseSelection(whole=True, all_databases=True), network="public")
    assert len(both.files) == 4


@pytest.mark.parametrize(
    "text,expected",
    [("..", "fb"), (".", "fb"), ("", "fb"), ("a/b\\c", "a_b_c"), ("-rf", "_rf"),
     ("x\x00y\nz\x1b[31m", "x_y_z_[31m"), ("数据 é", "数据 é"), ("e\u0301", "é")],
)
def test_safe_component(text: str, expected: str) -> None:
    assert safe_component(text, "fb") == expected


def test_file_names_from_urls() -> None:
    assert file_name_from_url("http://h/a/b/hins%2F..%2Fx.zip?Signature=x", "f") == "hins_.._x.zip"
    assert file_name_from_url("http://h/a/b/", "fallback") == "fallback"
    assert file_name_from_url("http://h/a/%2E%2E", "fallback") == "fallback"
    long = file_name_from_url("http://h/" + "x" * 400, "f")
    assert len(long.encode()) <= 200


def test_colliding_names_are_disambiguated() -> None:
    links = {"BackupDownloadLinkByDB": {"BackupDownloadLinkByDB": [
        {"DataBase": "a/b", "DownloadLink": "http://h/x/set.zip?1"},
        {"DataBase": "a_b", "DownloadLink": "http://h/x/set.zip?2"},
    ]}}
    plan = make_plan(sets(raw("11", **links)), databases=DatabaseSelection.parse("all"), network="public")
    assert sorted(f.rel_path for f in plan.files) == [
        "rm-1/11/databases/a_b/set.zip", "rm-1/11/databases/a_b/set~2.zip",
    ]


def test_replan_keeps_kind_and_takes_fresh_checksum() -> None:
    old = make_plan(sets(raw("11")), network="internal").files[0]
    fresh = parse_backup(raw("11", Checksum="999",
                             BackupIntranetDownloadURL="http://int-internal.example/b/11/file%2011.tar.gz?Expires=9"))
    new = replan_file(old, fresh)
    assert new is not None and new.network == "internal" and new.url.endswith("Expires=9")
    assert new.expected_crc == 999 and new.rel_path == old.rel_path
    assert replan_file(old, parse_backup(raw("11", BackupIntranetDownloadURL=""))) is None


# ----------------------------------------------------------------------------- manifest


def record(path: str, status: str = "verified", **kw: Any) -> mf.FileRecord:
    base: dict[str, Any] = dict(
        path=path, instance="rm-1", backup_id="11", database=None, engine="MySQL",
        engine_version="8.0", backup_type="FullBackup", backup_method="Physical",
        backup_mode="Automated", backup_start="2026-11-27T00:00:00Z",
        backup_end="2026-11-27T00:10:00Z", network="public", url="http://h/p", size=3,
        crc64="1", crc64_expected="1", crc64_source="api", sha256="ab", status=status,
        verified_at="2026-11-27T22:00:00Z",
    )
    base.update(kw)
    return mf.FileRecord(**base)


def test_merge_rules() -> None:
    old = mf.merge(None, [record("a"), record("b")], [mf.SkipRecord("rm-1", "12", None, "BackupStatus is Failed")])
    new = mf.merge(old, [record("b", size=4), record("c", backup_id="12")], [])
    assert [f.path for f in new.files] == ["a", "b", "c"]
    assert new.by_path()["b"].size == 4
    assert new.skipped == ()  # set 12 now has a file
    # A failure never replaces a file that is on disk as recorded.
    kept = mf.merge(new, [record("a", status="failed", reason="CRC64 mismatch")], [])
    assert kept.by_path()["a"].status == "verified"
    added = mf.merge(new, [record("d", status="failed", reason="x", verified_at=None)], [])
    assert added.by_path()["d"].status == "failed"


def test_manifest_round_trip_and_errors(tmp_path: Path) -> None:
    m = mf.merge(None, [record("x/y", database="db", reason=None)], [mf.SkipRecord("rm-1", "9", None, "r")])
    mf.write(tmp_path, m)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["schema"] == "fetcher.manifest/1" and "reason" not in doc["files"][0]
    assert mf.load(tmp_path / "manifest.json").files == m.files
    assert (tmp_path / "SHA256SUMS").read_text() == "ab  x/y\n"
    assert not list(tmp_path.glob(".*.tmp"))
    for bad, msg in (("{", "not valid JSON"), ("[]", "not a fetcher manifest"),
                     ('{"schema": "other"}', "unknown schema"),
                     ('{"schema": "fetcher.manifest/1", "files": [{"path": "a"}]}', "lacks path or status")):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(UsageError, match=msg):
            mf.load(tmp_path / "bad.json")
    with pytest.raises(UsageError, match="no such manifest"):
        mf.load(tmp_path / "absent.json")


def test_verify_reports_every_problem(tmp_path: Path) -> None:
    payloads = {"good": b"hello world", "flipped": b"abcdef", "short": b"0123456789", "gone": b"zz"}
    records = []
    for name, data in payloads.items():
        (tmp_path / name).write_bytes(data)
        records.append(record(name, size=len(data), crc64=str(checksum.crc64_reference(data)),
                              sha256=hashlib.sha256(data).hexdigest()))
    records.append(record("../escape", size=1))
    records.append(record("never", status="failed", reason="CRC64 mismatch"))
    m = mf.merge(None, records, [])
    (tmp_path / "flipped").write_bytes(b"abcdeg")
    (tmp_path / "short").write_bytes(b"01234")
    (tmp_path / "gone").unlink()
    result = mf.verify(m, tmp_path)
    got = sorted((p.path, p.problem) for p in result.problems)
    assert got == [
        ("../escape", "missing"), ("flipped", "crc64"), ("flipped", "sha256"), ("gone", "missing"),
        ("short", "crc64"), ("short", "sha256"), ("short", "size"),
    ]
    assert result.checked == 5 and not result.ok and result.failed_entries == ("never",)


def test_samples_demo_is_the_builtin_data_set() -> None:
    assert (ROOT / "samples" / "demo.json").read_bytes() == dataset.DEMO_DATA.read_bytes()
