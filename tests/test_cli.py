"""The command line as users and scripts see it: list, usage errors, credentials, emulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_INSTANCE, Harness, one_instance_doc


def test_list_table_fits_80_columns(harness: Harness) -> None:
    r = harness.run("list", "--instance", DEMO_INSTANCE)
    assert r.code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["BACKUP", "ID", "TYPE", "METHOD"]
    assert len(lines) == 6
    assert all(len(line) <= 80 for line in lines), lines
    row = next(line for line in lines if line.startswith("900000105"))
    assert "full" in row and "Physical" in row and "Success" in row and "24.0 MiB" in row
    assert "2026-11-27 18:00" in row and "MySQL 8.0" in row
    assert "Unavail" in next(line for line in lines if line.startswith("900000102"))
    assert "http" not in r.stdout  # the table never shows URLs
    assert "5 backup set(s)" in r.stderr


def test_list_json_is_the_api_objects(harness: Harness) -> None:
    r = harness.run("list", "--instance", DEMO_INSTANCE, "--format", "json")
    assert r.code == 0, r.output
    items = json.loads(r.stdout)
    assert [i["BackupId"] for i in items] == ["900000105", "900000104", "900000103", "900000102", "900000101"]
    first = items[0]
    assert first["BackupDownloadURL"].startswith("http://127.0.0.1:") and "Signature=" in first["BackupDownloadURL"]
    assert first["BackupDownloadLinkByDB"]["BackupDownloadLinkByDB"][0]["DataBase"] == "shop"
    assert first["BackupSize"] == 25165824 and first["Checksum"].isdigit()
    r2 = harness.run("list", "--instance", DEMO_INSTANCE, "--format", "jsonl")
    lines = [json.loads(line) for line in r2.stdout.splitlines()]
    assert [i["BackupId"] for i in lines] == [i["BackupId"] for i in items]


def test_list_merges_all_pages(make_harness: Any) -> None:
    h = make_harness(one_instance_doc([], synthetic={"count": 250, "size": 8}))
    r = h.run("list", "--instance", "rm-test0001", "--format", "json")
    assert r.code == 0
    assert len({i["BackupId"] for i in json.loads(r.stdout)}) == 250


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--status", "Done"], "--status"),
        (["--mode", "sometimes"], "--mode"),
        (["--type", "Full"], "--type"),
        (["--start", "yesterday"], "--start"),
        (["--end", "2026-02-30"], "--end"),
        (["--start", "2026-11-27", "--end", "2026-11-26"], "--end"),
        (["--backup-id", "a b"], "--backup-id"),
        (["--format", "xml"], "--format"),
    ],
)
def test_bad_filters_exit_2_without_a_request(harness: Harness, args: list[str], needle: str) -> None:
    r = harness.run("list", "--instance", DEMO_INSTANCE, *args)
    assert r.code == 2
    assert needle in r.stderr
    assert "Traceback" not in r.output
    assert harness.emu.api_state.calls == []


def test_missing_credentials_exit_3(harness: Harness) -> None:
    env = {k: v for k, v in harness.env().items() if not k.startswith("ALIBABA_CLOUD_ACCESS")}
    r = harness.run("list", "--instance", DEMO_INSTANCE, env=env)
    assert r.code == 3
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in r.stderr and "config.json" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert harness.emu.api_state.calls == []


def test_profile_file_is_used(harness: Harness) -> None:
    cred = harness.emu.data.credentials[1]
    config = harness.home / ".aliyun" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"current": "sts", "profiles": [
        {"name": "sts", "mode": "StsToken", "access_key_id": cred.access_key_id,
         "access_key_secret": cred.access_key_secret, "sts_token": cred.security_token,
         "region_id": "cn-hangzhou"},
        {"name": "ram", "mode": "RamRoleArn", "access_key_id": "a", "access_key_secret": "b"},
    ]}), encoding="utf-8")
    env = {k: v for k, v in harness.env().items() if not k.startswith("ALIBABA_CLOUD_")}
    r = harness.run("list", "--instance", DEMO_INSTANCE, env=env)
    assert r.code == 0, r.output
    assert harness.emu.api_state.calls[-1].status == 200
    r = harness.run("--profile", "ram", "list", "--instance", DEMO_INSTANCE, env=env)
    assert r.code == 3 and "RamRoleArn" in r.stderr


def test_api_error_shows_code_message_request_id(harness: Harness) -> None:
    r = harness.run("list", "--instance", "rm-doesnotexist")
    assert r.code == 3
    line = r.stderr.strip()
    assert "InvalidDBInstanceId.NotFound" in line and "does not exist" in line and "RequestId" in line
    request_id = harness.emu.api_state.calls[-1]
    assert request_id.code == "InvalidDBInstanceId.NotFound"
    assert len(line.splitlines()) == 1


def test_wrong_secret_exit_3(harness: Harness) -> None:
    env = harness.env(ALIBABA_CLOUD_ACCESS_KEY_SECRET="definitely-wrong")
    r = harness.run("list", "--instance", DEMO_INSTANCE, env=env)
    assert r.code == 3 and "SignatureDoesNotMatch" in r.stderr
    assert "definitely-wrong" not in r.output


def test_unreachable_endpoint_exit_3(harness: Harness) -> None:
    env = harness.env(FETCHER_ENDPOINT="http://127.0.0.1:9")
    r = harness.run("--timeout", "1", "list", "--instance", DEMO_INSTANCE, env=env)
    assert r.code == 3 and "cannot reach the API" in r.stderr


def test_throttled_list_recovers_and_says_so(harness: Harness) -> None:
    harness.emu.api_state.faults.throttle_next = 2
    r = harness.run("list", "--instance", DEMO_INSTANCE)
    assert r.code == 0
    assert r.stderr.count("Throttling.User") == 2


def test_v1_signature_option(harness: Harness) -> None:
    r = harness.run("--signature", "v1", "list", "--instance", DEMO_INSTANCE, "--format", "jsonl")
    assert r.code == 0 and harness.emu.api_state.calls[-1].signature == "v1"


def test_help_and_version(harness: Harness) -> None:
    r = harness.run("--help")
    assert r.code == 0 and "Exit codes" in r.stdout
    for cmd in ("list", "fetch", "verify", "emulator", "demo"):
        r = harness.run(cmd, "--help")
        assert r.code == 0 and "Usage:" in r.stdout
    assert "0.1.0" in harness.run("--version").stdout
    r = harness.run("frobnicate")
    assert r.code == 2 and "No such command" in r.stderr


def test_python_dash_m_and_emulator_ready_file(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fetcher", "emulator", "--port", "0", "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        info = json.loads(ready.read_text(encoding="utf-8"))
        assert info["endpoint"].startswith("http://127.0.0.1:")
        assert info["region"] == "cn-hangzhou" and DEMO_INSTANCE in info["instances"]
        env = {**os.environ, "FETCHER_ENDPOINT": info["endpoint"],
               "ALIBABA_CLOUD_ACCESS_KEY_ID": info["access_key_id"],
               "ALIBABA_CLOUD_ACCESS_KEY_SECRET": info["access_key_secret"]}
        done = subprocess.run(
            [sys.executable, "-m", "fetcher", "list", "--instance", DEMO_INSTANCE, "--format", "json"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert len(json.loads(done.stdout)) == 5
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == info
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
