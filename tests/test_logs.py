"""`--log-format json`: one JSON object per stderr line, the documented events, no secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import DEMO_INSTANCE, Harness, backup_doc, one_instance_doc


def events(stderr: str) -> list[dict[str, Any]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line must be JSON


def test_fetch_events(harness: Harness, tmp_path: Path) -> None:
    r = harness.run("--log-format", "json", "fetch", "--dest", str(tmp_path / "d"),
                    "--instance", DEMO_INSTANCE, "--databases", "all")
    assert r.code == 0, r.output
    evs = events(r.stderr)
    names = [e["event"] for e in evs]
    assert names.count("file.start") == 3 and names.count("file.verified") == 3
    assert names[-1] == "summary"
    for e in evs:
        assert e["ts"].endswith("Z") and e["level"] in ("debug", "info", "warning", "error")
    verified = [e for e in evs if e["event"] == "file.verified"]
    for e in verified:
        assert e["instance"] == DEMO_INSTANCE and e["backup_id"] == "900000105"
        assert e["database"] in ("shop", "订单", "analytics") and e["path"].endswith(".zip")
        assert isinstance(e["bytes"], int)
    skipped = [e for e in evs if e["event"] == "set.skipped"]
    assert {e["backup_id"] for e in skipped} == {"900000104", "900000103", "900000102", "900000101"}
    assert all(e["reason"] for e in skipped)
    summary = evs[-1]
    assert summary["verified"] == 3 and summary["failed"] == 0 and summary["bytes"] == 6 << 20


def test_retry_and_failure_events(make_harness: Any, tmp_path: Path) -> None:
    h = make_harness(one_instance_doc([backup_doc("1", size=400_000), backup_doc("2", size=300_000)]))
    flaky = h.emu.find("rm-test0001", "1")
    flaky.faults.drop_after, flaky.faults.drop_times = 100_000, 1
    broken = h.emu.find("rm-test0001", "2")
    broken.faults.corrupt_offset = 5
    r = h.run("--log-format", "json", "fetch", "--dest", str(tmp_path / "d"), "--instance", "rm-test0001")
    assert r.code == 1
    evs = events(r.stderr)
    retry = [e for e in evs if e["event"] == "file.retry"]
    assert any(e["backup_id"] == "1" and "connection" in e["reason"] for e in retry)
    failed = [e for e in evs if e["event"] == "file.failed"]
    assert len(failed) == 1 and failed[0]["backup_id"] == "2" and "CRC64 mismatch" in failed[0]["reason"]
    assert evs[-1]["event"] == "summary" and evs[-1]["failed"] == 1


def test_json_logs_carry_no_secrets_or_signed_urls(harness: Harness, tmp_path: Path) -> None:
    harness.emu.find(DEMO_INSTANCE, "900000105").faults.url_ttl = 1  # forces URL refreshes
    r = harness.run("-vv", "--log-format", "json", "fetch", "--dest", str(tmp_path / "d"),
                    "--instance", DEMO_INSTANCE, env=harness.env(credential=1))
    assert r.code == 0, r.output
    cred = harness.emu.data.credentials[1]
    assert cred.access_key_secret not in r.stderr and (cred.security_token or "x") not in r.stderr
    assert "Signature=" not in r.stderr and "Expires=" not in r.stderr
    assert all(isinstance(e, dict) for e in events(r.stderr))
    assert any(e["event"] == "file.refresh" for e in events(r.stderr))
