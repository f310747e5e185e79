"""`fetcher verify` on real archives, and `fetcher demo` end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_INSTANCE, Harness, read_manifest


@pytest.fixture
def archive(harness: Harness, tmp_path: Path) -> Path:
    dest = tmp_path / "archive"
    r = harness.run("fetch", "--dest", str(dest), "--no-progress", "--instance", DEMO_INSTANCE,
                    "--databases", "all")
    assert r.code == 0, r.output
    r = harness.run("fetch", "--dest", str(dest), "--no-progress", "--instance", DEMO_INSTANCE)
    assert r.code == 0, r.output
    return dest


def files_of(dest: Path) -> list[dict[str, Any]]:
    return read_manifest(dest)["files"]  # type: ignore[no-any-return]


def test_verify_good_archive(harness: Harness, archive: Path) -> None:
    r = harness.run("verify", str(archive / "manifest.json"))
    assert r.code == 0, r.output
    assert "verified 6 file(s): all intact" in r.stdout
    r = harness.run("verify", str(archive), "--format", "json")  # a folder works too
    doc = json.loads(r.stdout)
    assert r.code == 0 and doc["ok"] is True and doc["checked"] == 6 and doc["problems"] == []


def test_verify_offline_without_credentials(harness: Harness, archive: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_", "FETCHER_"))}
    env["FETCHER_ENDPOINT"] = "http://127.0.0.1:9"
    r = harness.run("verify", str(archive / "manifest.json"), env=env)
    assert r.code == 0, r.output


def test_verify_flipped_truncated_deleted(harness: Harness, archive: Path) -> None:
    f = files_of(archive)
    flipped, truncated, deleted = (archive / f[0]["path"], archive / f[1]["path"], archive / f[2]["path"])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    with open(truncated, "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 1)
    deleted.unlink()
    r = harness.run("verify", str(archive / "manifest.json"), "--format", "json")
    assert r.code == 1
    doc = json.loads(r.stdout)
    problems = sorted((p["path"], p["problem"]) for p in doc["problems"])
    assert problems == sorted([
        (f[0]["path"], "crc64"), (f[0]["path"], "sha256"),
        (f[1]["path"], "size"), (f[1]["path"], "crc64"), (f[1]["path"], "sha256"),
        (f[2]["path"], "missing"),
    ])
    assert doc["ok"] is False and doc["checked"] == 6
    r = harness.run("verify", str(archive / "manifest.json"))
    assert r.code == 1
    assert "MISSING" in r.stdout and "CRC64" in r.stdout and "SIZE" in r.stdout
    assert "6 problem(s) in 3 file(s)" in r.stdout


def test_verify_lists_failed_entries_as_notes(harness: Harness, archive: Path) -> None:
    doc = read_manifest(archive)
    doc["files"].append({**doc["files"][0], "path": "rm-x/1/never.zip", "status": "failed",
                         "reason": "CRC64 mismatch", "verified_at": None})
    (archive / "manifest.json").write_text(json.dumps(doc))
    r = harness.run("verify", str(archive / "manifest.json"))
    assert r.code == 0, r.output
    assert "NOTE" in r.stdout and "never.zip" in r.stdout


@pytest.mark.parametrize("content", ["{broken", '{"schema": "nope"}', ""])
def test_verify_unreadable_manifest_exit_2(harness: Harness, tmp_path: Path, content: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(content)
    r = harness.run("verify", str(path))
    assert r.code == 2 and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    r = harness.run("verify", str(tmp_path / "nothing.json"))
    assert r.code == 2 and "no such manifest" in r.stderr


def test_demo_end_to_end(harness: Harness, tmp_path: Path) -> None:
    dest = tmp_path / "demo-out"
    r = harness.run("demo", "--dest", str(dest), "--no-progress")
    assert r.code == 0, r.output
    m = read_manifest(dest)
    assert len(m["files"]) == 6 and all(f["status"] == "verified" for f in m["files"])
    assert {f["database"] for f in m["files"]} == {None, "shop", "订单", "analytics"}
    assert "verify: 6 file(s) re-read from disk, all intact" in r.stdout
    # Run again: everything is already there.
    r = harness.run("demo", "--dest", str(dest), "--no-progress")
    assert r.code == 0 and "6 already present" in r.stdout
