"""`fetcher check`: scheduled integrity checks against the emulator."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Harness, backup_doc, demo_doc


def stamp(hours_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def full(backup_id: str, hours_ago: float, **kw: Any) -> dict[str, Any]:
    return backup_doc(backup_id, size=50_000, BackupStartTime=stamp(hours_ago + 0.5),
                      BackupEndTime=stamp(hours_ago), **kw)


def fleet() -> dict[str, Any]:
    doc = demo_doc()
    doc["instances"] = [
        {"DBInstanceId": "rm-healthy", "Engine": "MySQL", "backups": [
            full("101", 3), full("100", 27),
            backup_doc("102", size=1000, BackupType="IncrementalBackup",
                       BackupStartTime=stamp(1), BackupEndTime=stamp(0.9)),
        ]},
        {"DBInstanceId": "rm-stale", "Engine": "MySQL", "backups": [full("201", 40)]},
        {"DBInstanceId": "rm-failing", "Engine": "PostgreSQL", "backups": [
            full("301", 2),
            {**backup_doc("302", BackupStatus="Failed", BackupStartTime=stamp(5), BackupEndTime=stamp(4.9)), "object": None},
            {**backup_doc("303", BackupStatus="Failed", BackupStartTime=stamp(50), BackupEndTime=stamp(49.9)), "object": None},
        ]},
        {"DBInstanceId": "rm-nocrc", "Engine": "SQLServer", "backups": [full("401", 1, Checksum=None)]},
        {"DBInstanceId": "rm-empty", "Engine": "MySQL", "backups": []},
        {"DBInstanceId": "rr-replica", "Engine": "MySQL", "DBInstanceType": "Readonly", "backups": []},
    ]
    return doc


def check(h: Harness, *args: str) -> Any:
    return h.run("check", *args)


def by_instance(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["instance"]: i for i in doc["instances"]}


def test_health_verdicts_json(make_harness: Any) -> None:
    h = make_harness(fleet())
    r = check(h, "--instance", "rm-healthy", "--instance", "rm-stale", "--instance", "rm-failing",
              "--instance", "rm-nocrc", "--instance", "rm-empty", "--format", "json")
    assert r.code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False
    got = by_instance(doc)
    healthy = got["rm-healthy"]
    assert healthy["ok"] is True and healthy["problems"] == [] and healthy["failed_recent"] == 0
    latest = healthy["latest_full"]
    assert latest["backup_id"] == "101" and latest["checksum"] is True and latest["probe"] == "skipped"
    assert 3 * 3600 - 120 < latest["age_seconds"] < 3 * 3600 + 120 and latest["end"].endswith("Z")
    stale = got["rm-stale"]
    assert stale["ok"] is False and stale["problems"] == ["newest full backup 201 is 40h00m old (max 26h00m)"]
    failing = got["rm-failing"]
    assert failing["ok"] is False and failing["failed_recent"] == 1
    nocrc = got["rm-nocrc"]
    assert nocrc["ok"] is True and nocrc["latest_full"]["checksum"] is False
    assert any("no Checksum" in p for p in nocrc["problems"])
    empty = got["rm-empty"]
    assert empty["ok"] is False and empty["latest_full"] is None
    assert empty["problems"] == ["no successful full backup"]


def test_max_age_and_exit_zero_when_all_healthy(make_harness: Any) -> None:
    h = make_harness(fleet())
    r = check(h, "--instance", "rm-healthy", "--instance", "rm-nocrc")
    assert r.code == 0, r.output
    assert "2/2 instance(s) healthy" in r.stdout
    r = check(h, "--instance", "rm-healthy", "--max-age", "2h")
    assert r.code == 1
    r = check(h, "--instance", "rm-stale", "--max-age", "2d")
    assert r.code == 0
    r = check(h, "--instance", "rm-healthy", "--max-age", "soon")
    assert r.code == 2 and "--max-age" in r.stderr


def test_probe_ok_mismatch_unreachable(make_harness: Any) -> None:
    h = make_harness(fleet())
    h.emu.find("rm-failing", "301").faults.wrong_crc_header = True
    r = check(h, "--instance", "rm-healthy", "--instance", "rm-failing", "--probe", "--format", "json")
    got = by_instance(json.loads(r.stdout))
    assert got["rm-healthy"]["latest_full"]["probe"] == "ok" and got["rm-healthy"]["ok"]
    assert got["rm-failing"]["latest_full"]["probe"] == "mismatch"
    assert any("CRC64" in p for p in got["rm-failing"]["problems"])
    obj = h.emu.find("rm-healthy", "101")
    assert obj.stats.gets == 1 and obj.stats.heads == 0 and obj.stats.ranges == ["bytes=0-0"]
    assert obj.stats.bytes_sent == 1
    # Outside the VPC, asking for the internal URL: unreachable.
    h.call(h.emu.set_internal(False))
    r = h.run("--timeout", "2", "check", "--instance", "rm-healthy", "--probe", "--network", "internal",
              "--format", "json")
    got = by_instance(json.loads(r.stdout))
    assert r.code == 1 and got["rm-healthy"]["latest_full"]["probe"] == "unreachable"
    # auto falls back to the public URL, which answers.
    r = check(h, "--instance", "rm-healthy", "--probe", "--format", "json")
    assert r.code == 0 and by_instance(json.loads(r.stdout))["rm-healthy"]["latest_full"]["probe"] == "ok"


def test_size_mismatch_is_a_probe_mismatch(make_harness: Any) -> None:
    doc = fleet()
    doc["instances"][0]["backups"][0]["BackupSize"] = 49_999
    h = make_harness(doc)
    r = check(h, "--instance", "rm-healthy", "--probe", "--format", "json")
    got = by_instance(json.loads(r.stdout))["rm-healthy"]
    assert got["latest_full"]["probe"] == "mismatch" and any("size" in p for p in got["problems"])


def test_prometheus_output_parses(make_harness: Any) -> None:
    h = make_harness(fleet())
    r = check(h, "--instance", "rm-healthy", "--instance", "rm-stale", "--instance", "rm-empty",
              "--probe", "--format", "prometheus")
    assert r.code == 1
    families = {f.name: f for f in text_string_to_metric_families(r.stdout)}
    assert set(families) == {
        "fetcher_backup_latest_full_age_seconds", "fetcher_backup_check_ok",
        "fetcher_backup_failed_recent", "fetcher_backup_probe_ok",
    }
    for name in families:
        assert r.stdout.count(f"# TYPE {name} ") == 1
    ok = {s.labels["db_instance"]: s.value for s in families["fetcher_backup_check_ok"].samples}
    assert ok == {"rm-healthy": 1.0, "rm-stale": 0.0, "rm-empty": 0.0}
    age = {s.labels["db_instance"]: s.value for s in families["fetcher_backup_latest_full_age_seconds"].samples}
    assert age["rm-empty"] == float("inf") and 39 * 3600 < age["rm-stale"] < 41 * 3600
    probe = {s.labels["db_instance"]: s.value for s in families["fetcher_backup_probe_ok"].samples}
    assert probe == {"rm-healthy": 1.0, "rm-stale": 1.0}
    assert all(set(s.labels) == {"db_instance"} for f in families.values() for s in f.samples)
    assert all(s.timestamp is None for f in families.values() for s in f.samples)


def test_unknown_instance_among_several_exit_3(make_harness: Any) -> None:
    h = make_harness(fleet())
    r = check(h, "--instance", "rm-healthy", "--instance", "rm-nope", "--format", "json")
    assert r.code == 3
    got = by_instance(json.loads(r.stdout))
    assert got["rm-healthy"]["ok"] is True
    assert "InvalidDBInstanceId.NotFound" in got["rm-nope"]["problems"][0]


def test_all_instances_over_several_pages(make_harness: Any) -> None:
    doc = fleet()
    doc["synthetic_instances"] = {"count": 230, "backups": 2}
    h = make_harness(doc)
    r = check(h, "--all-instances", "--max-age", "1000d", "--format", "json")
    doc_out = json.loads(r.stdout)
    names = [i["instance"] for i in doc_out["instances"]]
    # 6 + 230 instances over 3 pages of DescribeDBInstances; read-only ones skipped.
    assert len(names) == len(set(names)) == 5 + 230 - 23
    assert "rr-replica" not in names and "rm-synth00009" not in names
    pages = sorted(int(c.params["PageNumber"]) for c in h.emu.api_state.calls if c.action == "DescribeDBInstances")
    assert pages == [1, 2, 3]
    assert r.code == 1  # rm-empty and rm-failing are unhealthy
    r = check(h, "--all-instances", "--max-age", "1000d")
    assert "rr-replica" in r.stdout and "read-only" in r.stdout


def test_usage(make_harness: Any) -> None:
    h = make_harness(fleet())
    assert check(h).code == 2
    assert check(h, "--instance", "rm-healthy", "--all-instances").code == 2
    r = check(h, "--instance", "bad id")
    assert r.code == 2 and "--instance" in r.stderr
