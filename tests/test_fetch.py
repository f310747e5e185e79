"""The main job end to end: the real CLI against the emulator over 127.0.0.1."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any


from fetcher import checksum
from tests.conftest import (
    DEMO_INSTANCE,
    Harness,
    all_text_under,
    backup_doc,
    one_instance_doc,
    read_manifest,
)


def fetch(h: Harness, dest: Path, *args: str, **kw: Any) -> Any:
    return h.run("fetch", "--dest", str(dest), "--no-progress", *args, **kw)


def object_bytes(h: Harness, instance: str, backup: str, database: str | None = None) -> bytes:
    obj = h.emu.find(instance, backup, database)
    return obj.content.read(0, obj.size)


def test_demo_instance_layout_bytes_and_manifest(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    r = fetch(harness, dest, "--instance", DEMO_INSTANCE, "--databases", "whole")
    assert r.code == 0, r.output
    m = read_manifest(dest)
    assert m["schema"] == "fetcher.manifest/1"
    assert m["tool"] == {"name": "fetcher", "version": "0.1.0"}
    assert m["updated_at"].endswith("Z")
    paths = sorted(f["path"] for f in m["files"])
    assert paths == [
        "rm-bp1demo4mysql80/900000101/hins18676859_20261124093000_logical.sql.gz",
        "rm-bp1demo4mysql80/900000104/hins18676859_20261127060003_inc.xb",
        "rm-bp1demo4mysql80/900000105/hins18676859_20261127180005.tar.gz",
    ]
    for entry in m["files"]:
        data = (dest / entry["path"]).read_bytes()
        assert data == object_bytes(harness, entry["instance"], entry["backup_id"])
        assert entry["status"] == "verified"
        assert entry["size"] == len(data)
        assert entry["crc64"] == str(checksum.crc64_reference(data))
        assert entry["crc64_expected"] == entry["crc64"]
        assert entry["crc64_source"] == "api"
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["engine"] == "MySQL" and entry["engine_version"] == "8.0"
        assert entry["database"] is None
        assert "?" not in entry["url"] and entry["url"].startswith("http://127.0.0.")
        assert entry["verified_at"].endswith("Z") and entry["backup_start"].endswith("Z")
        assert entry["network"] in ("internal", "public")
    skipped = {(s["backup_id"], s["reason"]) for s in m["skipped"]}
    assert ("900000103", "BackupStatus is Failed") in skipped
    assert ("900000102", "IsAvail is 0 (backup set unavailable)") in skipped
    # Nothing but final files remain: no part files, no state, no lock.
    leftovers = [p.name for p in dest.rglob("*") if p.is_file() and (".part" in p.name or p.name.startswith("."))]
    assert leftovers == []
    assert "3 verified" in r.stdout and "0 failed" in r.stdout and "2 skipped" in r.stdout


def test_sha256sums_passes_sha256sum_check(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    r = fetch(harness, dest, "--instance", DEMO_INSTANCE, "--databases", "all")
    assert r.code == 0, r.output
    sums = (dest / "SHA256SUMS").read_text(encoding="utf-8")
    assert len(sums.splitlines()) == 3
    if shutil.which("sha256sum"):
        done = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=dest, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count(": OK") == 3


def test_per_database_links_and_unknown_database(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    r = fetch(harness, dest, "--instance", DEMO_INSTANCE, "--databases", "shop,订单")
    assert r.code == 0, r.output
    m = read_manifest(dest)
    by_db = {f["database"]: f for f in m["files"]}
    assert set(by_db) == {"shop", "订单"}
    shop = by_db["shop"]
    assert shop["path"] == "rm-bp1demo4mysql80/900000105/databases/shop/hins18676859_20261127180005.zip"
    assert shop["crc64_source"] == "oss-header" and shop["status"] == "verified"
    assert (dest / shop["path"]).read_bytes() == object_bytes(harness, DEMO_INSTANCE, "900000105", "shop")
    assert (dest / by_db["订单"]["path"]).is_file()
    # A name in none of the sets: exit 2, listing what exists, nothing fetched.
    calls = len(harness.emu.api_state.calls)
    r = fetch(harness, tmp_path / "other", "--instance", DEMO_INSTANCE, "--databases", "nope,shop")
    assert r.code == 2
    assert "nope" in r.stderr and "analytics" in r.stderr and "shop" in r.stderr
    assert not (tmp_path / "other").exists()
    assert len(harness.emu.api_state.calls) == calls + 1  # the listing only


def test_hostile_names_stay_inside_dest(make_harness: Any, tmp_path: Path) -> None:
    doc = one_instance_doc(
        [
            {
                # The API's own objects name the instance and set; neither is trusted.
                **backup_doc("../../../etc", name="../../passwd", DBInstanceId="../../rm-x"),
                "databases": [
                    {"DataBase": "../../evil", "object": {"size": 5000}},
                    {"DataBase": "-rf", "object": {"size": 4000}},
                    {"DataBase": "数据库 é", "object": {"size": 3000}},
                    {"DataBase": "..", "object": {"size": 2000}},
                    {"DataBase": "a\nb\x00c", "object": {"size": 1000}},
                ],
            }
        ],
        instance="rm-x",
    )
    h = make_harness(doc)
    root = tmp_path / "jail"
    dest = root / "dest"
    r = fetch(h, dest, "--instance", "../rm-x")
    assert r.code == 2 and "--instance" in r.stderr  # refused before any request
    assert h.emu.api_state.calls == []
    r = fetch(h, dest, "--instance", "rm-x", "--databases", "all")
    assert r.code == 0, r.output
    r = fetch(h, dest, "--instance", "rm-x", "--databases", "whole")
    assert r.code == 0, r.output
    written = [p for p in root.rglob("*") if p.is_file()]
    assert written and all(dest in p.parents for p in written)
    m = read_manifest(dest)
    assert len(m["files"]) == 6
    for f in m["files"]:
        parts = f["path"].split("/")
        assert all(p not in ("", ".", "..") and not p.startswith("-") for p in parts)
        assert not any(ch in f["path"] for ch in "\\\n\x00")
        data = (dest / f["path"]).read_bytes()
        assert data == object_bytes(h, "rm-x", "../../../etc", f["database"])
    assert any("数据库 é" in f["path"] for f in m["files"])
    assert any(f["path"].startswith(".._.._rm-x/.._.._.._etc/") for f in m["files"])


def test_internal_public_auto(make_harness: Any, tmp_path: Path) -> None:
    doc = one_instance_doc([backup_doc("1", size=300_000)])
    h = make_harness(doc)
    for network, expect in (("internal", "internal"), ("public", "public"), ("auto", "internal")):
        dest = tmp_path / network
        r = fetch(h, dest, "--instance", "rm-test0001", "--network", network)
        assert r.code == 0, r.output
        entry = read_manifest(dest)["files"][0]
        assert entry["network"] == expect
        host = "127.0.0.2" if expect == "internal" else "127.0.0.1"
        assert entry["url"].startswith(f"http://{host}:")
    # Outside the VPC: the internal listener is off; auto falls back to public.
    h.call(h.emu.set_internal(False))
    dest = tmp_path / "auto-off"
    r = fetch(h, dest, "--instance", "rm-test0001", "--network", "auto")
    assert r.code == 0, r.output
    assert read_manifest(dest)["files"][0]["network"] == "public"
    dest = tmp_path / "internal-off"
    r = fetch(h, dest, "--instance", "rm-test0001", "--network", "internal", "--retries", "1")
    assert r.code == 1
    entry = read_manifest(dest)["files"][0]
    assert entry["status"] == "failed" and "connection" in entry["reason"]
    assert not (dest / entry["path"]).exists()


def test_corrupt_object_fails_and_never_gets_final_name(make_harness: Any, tmp_path: Path) -> None:
    doc = one_instance_doc([backup_doc("1", size=2_000_000), backup_doc("2", size=500_000)])
    h = make_harness(doc)
    bad = h.emu.find("rm-test0001", "1")
    bad.faults.corrupt_offset = 1_234_567
    dest = tmp_path / "out"
    r = fetch(h, dest, "--instance", "rm-test0001")
    assert r.code == 1
    m = read_manifest(dest)
    entries = {f["backup_id"]: f for f in m["files"]}
    assert entries["1"]["status"] == "failed"
    assert "CRC64 mismatch" in entries["1"]["reason"]
    assert entries["2"]["status"] == "verified"
    assert not (dest / entries["1"]["path"]).exists()
    assert not list(dest.rglob("*.part")) and not list(dest.rglob("*.state"))
    # Downloaded twice (the clean retry), then given up.
    assert bad.stats.bytes_sent == 2 * 2_000_000
    assert "FAILED" in r.stderr and "1 failed" in r.stdout


def test_corrupt_once_then_clean_redownload_succeeds(make_harness: Any, tmp_path: Path) -> None:
    h = make_harness(one_instance_doc([backup_doc("1", size=1_500_000)]))
    obj = h.emu.find("rm-test0001", "1")
    obj.faults.corrupt_offset = 10
    obj.faults.corrupt_times = 1
    dest = tmp_path / "out"
    r = fetch(h, dest, "--instance", "rm-test0001")
    assert r.code == 0, r.output
    entry = read_manifest(dest)["files"][0]
    assert entry["status"] == "verified"
    assert (dest / entry["path"]).read_bytes() == obj.content.read(0, obj.size)
    assert obj.stats.bytes_sent == 2 * 1_500_000


def test_dropped_connection_then_success(make_harness: Any, tmp_path: Path) -> None:
    h = make_harness(one_instance_doc([backup_doc("1", size=3_000_000)]))
    obj = h.emu.find("rm-test0001", "1")
    obj.faults.drop_after = 1_000_000
    obj.faults.drop_times = 1
    dest = tmp_path / "out"
    r = fetch(h, dest, "--instance", "rm-test0001")
    assert r.code == 0, r.output
    entry = read_manifest(dest)["files"][0]
    assert (dest / entry["path"]).read_bytes() == obj.content.read(0, obj.size)
    # Resumed from where it broke: only the rest was sent again.
    assert obj.stats.bytes_sent == 3_000_000
    assert obj.stats.ranges[-1] == "bytes=1000000-2999999"
    assert "retry 1/5" in r.stderr


def test_rerun_downloads_nothing(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    assert fetch(harness, dest, "--instance", DEMO_INSTANCE, "--databases", "all").code == 0
    before = {k: o.stats.bytes_sent for k, o in harness.emu.data.objects.items()}
    first = read_manifest(dest)
    r = fetch(harness, dest, "--instance", DEMO_INSTANCE, "--databases", "all")
    assert r.code == 0, r.output
    after = {k: o.stats.bytes_sent for k, o in harness.emu.data.objects.items()}
    assert before == after
    assert "3 already present" in r.stdout
    second = read_manifest(dest)
    assert [f["path"] for f in second["files"]] == [f["path"] for f in first["files"]]
    assert [f["verified_at"] for f in second["files"]] == [f["verified_at"] for f in first["files"]]
    # A whole-set run into the same DEST adds to the manifest, keeping the earlier files.
    r = fetch(harness, dest, "--instance", DEMO_INSTANCE)
    assert r.code == 0
    assert len(read_manifest(dest)["files"]) == 6


def test_dry_run_plans_without_writing(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    r = fetch(harness, dest, "--instance", DEMO_INSTANCE, "--dry-run", "--databases", "all")
    assert r.code == 0, r.output
    assert not dest.exists()
    lines = r.stdout.splitlines()
    assert any("databases/shop/hins18676859_20261127180005.zip" in line and "3.0 MiB" not in line for line in lines)
    assert any(line.startswith("skip") and "BackupStatus is Failed" in line for line in lines)
    assert "plan: 3 file(s)" in r.stdout
    assert "Signature=" not in r.output and "Expires=" not in r.output
    assert all(o.stats.gets == 0 for o in harness.emu.data.objects.values())


def test_latest_picks_newest_downloadable(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    r = fetch(harness, dest, "--instance", DEMO_INSTANCE, "--latest")
    assert r.code == 0, r.output
    files = read_manifest(dest)["files"]
    assert [f["backup_id"] for f in files] == ["900000105"]
    r = fetch(harness, tmp_path / "b", "--instance", DEMO_INSTANCE, "--latest", "--type", "IncrementalBackup")
    assert [f["backup_id"] for f in read_manifest(tmp_path / "b")["files"]] == ["900000104"]


def test_unverified_and_require_checksum(make_harness: Any, tmp_path: Path) -> None:
    doc = one_instance_doc([backup_doc("1", size=100_000, Checksum=None)])
    h = make_harness(doc)
    h.emu.find("rm-test0001", "1").faults.no_crc_header = True
    r = fetch(h, tmp_path / "a", "--instance", "rm-test0001")
    assert r.code == 0, r.output
    entry = read_manifest(tmp_path / "a")["files"][0]
    assert entry["status"] == "unverified" and entry["crc64_source"] is None
    assert entry["crc64_expected"] is None and entry["crc64"] is not None and entry["sha256"]
    r = fetch(h, tmp_path / "b", "--instance", "rm-test0001", "--require-checksum")
    assert r.code == 1
    entry = read_manifest(tmp_path / "b")["files"][0]
    assert entry["status"] == "failed" and "require-checksum" in entry["reason"]
    assert not (tmp_path / "b" / entry["path"]).exists()


def test_no_sha256(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    r = fetch(harness, dest, "--instance", DEMO_INSTANCE, "--no-sha256")
    assert r.code == 0
    assert not (dest / "SHA256SUMS").exists()
    assert all(f["sha256"] is None and f["status"] == "verified" for f in read_manifest(dest)["files"])


def test_limit_rate_keeps_within_ten_percent(make_harness: Any, tmp_path: Path) -> None:
    h = make_harness(one_instance_doc([backup_doc("1", size=3 << 20), backup_doc("2", size=3 << 20)]))
    dest = tmp_path / "out"
    rate = 1 << 20  # 1 MiB/s in total over two files at once
    began = time.monotonic()
    r = fetch(h, dest, "--instance", "rm-test0001", "--limit-rate", "1M")
    elapsed = time.monotonic() - began
    assert r.code == 0, r.output
    achieved = (6 << 20) / elapsed
    assert 0.9 * rate <= achieved <= 1.1 * rate, achieved


def test_secrets_never_leak(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    cred = harness.emu.data.credentials[1]  # STS: secret and token
    env = harness.env(credential=1)
    outputs = []
    for args in (
        ("-vv", "fetch", "--dest", str(dest), "--no-progress", "--instance", DEMO_INSTANCE, "--databases", "all"),
        ("-vv", "--log-format", "json", "fetch", "--dest", str(dest), "--instance", DEMO_INSTANCE),
        ("-v", "fetch", "--dest", str(dest), "--instance", DEMO_INSTANCE, "--dry-run"),
        ("-v", "list", "--instance", DEMO_INSTANCE),
        ("-v", "list", "--instance", "rm-nope"),
    ):
        r = harness.run(*args, env=env)
        outputs.append(r.output)
    text = "\n".join(outputs) + all_text_under(dest)
    for secret in (cred.access_key_secret, cred.security_token or "", harness.emu.store._secret.decode()):
        assert secret and secret not in text
    assert "Signature=" not in text
    assert "OSSAccessKeyId=" not in text


def test_missing_instance_argument_is_usage_error(harness: Harness, tmp_path: Path) -> None:
    r = fetch(harness, tmp_path / "x")
    assert r.code == 2 and "--instance" in r.stderr
    r = fetch(harness, tmp_path / "x", "--instance", DEMO_INSTANCE, "--limit-rate", "fast")
    assert r.code == 2 and "--limit-rate" in r.stderr
    r = fetch(harness, tmp_path / "x", "--instance", DEMO_INSTANCE, "--jobs", "0")
    assert r.code == 2 and "--jobs" in r.stderr
    assert harness.emu.api_state.calls == []


def test_all_instances_one_manifest(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "fleet"
    r = fetch(harness, dest, "--all-instances", "--latest", "--jobs", "2")
    assert r.code == 0, r.output
    m = read_manifest(dest)
    got = {(f["instance"], f["backup_id"]) for f in m["files"]}
    assert got == {("rm-bp1demo4mysql80", "900000105"), ("pgm-bp1demo4pg14", "910000202"),
                   ("rm-bp1demo4mssql19", "920000301"), ("rm-bp1demo4drill", "930000410")}
    reasons = {s["instance"]: s["reason"] for s in m["skipped"]}
    assert reasons["rr-bp1demo4mysqlro"] == "read-only instance (no backups of its own)"
    mssql = next(f for f in m["files"] if f["instance"] == "rm-bp1demo4mssql19")
    assert mssql["status"] == "verified" and mssql["crc64_source"] == "oss-header"
    # Without --latest every set is considered: the archived and snapshot ones are skipped.
    r = fetch(harness, dest, "--all-instances")
    assert r.code == 0, r.output
    reasons = {(s["instance"], s["backup_id"]): s["reason"] for s in read_manifest(dest)["skipped"]}
    assert reasons[("pgm-bp1demo4pg14", "910000201")] == "archived: restore it first"
    assert reasons[("rm-bp1demo4mssql19", "920000302")] == "no download URL (BackupMethod Snapshot)"


def test_archived_object_answering_invalid_object_state_is_skipped(make_harness: Any, tmp_path: Path) -> None:
    # StorageClass says standard, but the object answers 403 InvalidObjectState.
    h = make_harness(one_instance_doc([backup_doc("1", size=10_000), backup_doc("2", size=10_000)]))
    h.emu.find("rm-test0001", "1").faults.archived = True
    dest = tmp_path / "out"
    r = fetch(h, dest, "--instance", "rm-test0001")
    assert r.code == 0, r.output
    m = read_manifest(dest)
    assert [f["backup_id"] for f in m["files"]] == ["2"]
    assert [(s["backup_id"], s["reason"]) for s in m["skipped"]] == [("1", "archived: restore it first")]
