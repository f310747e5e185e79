"""The resilience fault matrix: the real CLI against the emulator over 127.0.0.1.

Every case checks three things: the bytes on disk are the emulator object's bytes, the
manifest entry says what happened (status, crc64, reason), and the bytes the emulator
actually served (``ObjectStats``) show that a resume resumed instead of starting over.
Faults are injected inside the emulator's handlers; nothing in the client is patched.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fetcher.download.engine import DownloadConfig
from fetcher.emulator.dataset import EmuObject
from tests.conftest import CliResult, Harness, backup_doc, one_instance_doc, read_manifest

INSTANCE = "rm-test0001"
MiB = 1 << 20
# Above DownloadConfig.segment_threshold (64 MiB): fetched as 4 ranged segments of
# 32 + 16 + 16 + 16 MiB. Generated content costs the emulator no memory or disk.
BIG = 80 * MiB
assert BIG >= DownloadConfig().segment_threshold
SMALL = 3 * MiB


# ----------------------------------------------------------------------------- helpers


def start(make_harness: Any, *backups: dict[str, Any]) -> Harness:
    return make_harness(one_instance_doc(list(backups), instance=INSTANCE))  # type: ignore[no-any-return]


def fetch(h: Harness, dest: Path, *args: str, pre: tuple[str, ...] = ()) -> CliResult:
    """One in-process run of the real CLI (``pre``: global options, before ``fetch``)."""
    return h.run(*pre, "fetch", "--dest", str(dest), "--no-progress", "--instance", INSTANCE, *args)


def spawn_fetch(h: Harness, dest: Path, *args: str, **kw: Any) -> subprocess.Popen[str]:
    """The real CLI as its own process, for kills and signals."""
    return h.spawn("fetch", "--dest", str(dest), "--no-progress", "--instance", INSTANCE, *args, **kw)


def obj(h: Harness, backup_id: str) -> EmuObject:
    return h.emu.find(INSTANCE, backup_id)


def target(h: Harness, dest: Path, backup_id: str) -> Path:
    return dest / INSTANCE / backup_id / obj(h, backup_id).name


def part_of(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def state_of(path: Path) -> Path:
    return path.with_name(path.name + ".part.state")


def claimed(path: Path) -> int:
    """Bytes the resume state beside ``path`` vouches for (0 without a readable state)."""
    try:
        doc = json.loads(state_of(path).read_text(encoding="utf-8"))
        return sum(int(s["done"]) for s in doc["segments"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def entries(dest: Path) -> dict[str, dict[str, Any]]:
    return {f["backup_id"]: f for f in read_manifest(dest)["files"]}


def first_difference(a: bytes, b: bytes) -> int | None:
    """Offset of the first differing byte (None when equal); cheap on 80 MiB."""
    if a == b:
        return None
    n = min(len(a), len(b))
    step = 1 << 16
    for off in range(0, n, step):
        if a[off : off + step] != b[off : off + step]:
            return off + next(i for i in range(step) if a[off + i] != b[off + i])
    return n


def assert_verified(h: Harness, dest: Path, backup_id: str, source: str = "api") -> dict[str, Any]:
    """Final file == the emulator object, manifest says verified with its CRC64, no debris."""
    o = obj(h, backup_id)
    entry = entries(dest)[backup_id]
    path = target(h, dest, backup_id)
    assert entry["path"] == path.relative_to(dest).as_posix()
    data = path.read_bytes()
    diff = first_difference(data, o.content.read(0, o.size))
    assert diff is None, f"{path.name}: {len(data)} bytes on disk, first difference at {diff}"
    assert entry["status"] == "verified", entry
    assert entry["size"] == o.size
    assert entry["crc64"] == entry["crc64_expected"] == str(o.crc64)
    assert entry["crc64_source"] == source
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert "reason" not in entry
    debris = sorted(p.name for p in path.parent.glob(path.name + ".part*"))
    assert debris == [], "no partial or resume state may outlive a verified file"
    return entry


def assert_failed(h: Harness, dest: Path, backup_id: str, *reason: str) -> dict[str, Any]:
    entry = entries(dest)[backup_id]
    assert entry["status"] == "failed", entry
    for words in reason:
        assert words in entry["reason"], entry["reason"]
    assert not target(h, dest, backup_id).exists(), "a failed file must never have its final name"
    return entry


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen[str] | None = None,
               timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"fetcher exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> CliResult:
    out, err = proc.communicate(timeout=timeout)
    return CliResult(proc.returncode, out, err)


def kill_when_claimed(h: Harness, dest: Path, backup_id: str, fraction: float,
                      proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> CliResult:
    """Signal ``proc`` once the state file vouches for ``fraction`` of the object."""
    path = target(h, dest, backup_id)
    size = obj(h, backup_id).size
    wait_until(lambda: claimed(path) >= fraction * size, proc, what=f"{fraction:.0%} checkpointed")
    proc.send_signal(sig)
    return finish(proc)


def no_traceback(r: CliResult) -> None:
    assert "Traceback" not in r.output and "fetcher: internal error" not in r.output, r.output


# ----------------------------------------------------------------------------- dropped connections


@pytest.mark.parametrize("times", [1, 3], ids=["once", "thrice"])
@pytest.mark.parametrize("where", [0.10, 0.50, 0.99], ids=["10%", "50%", "99%"])
@pytest.mark.parametrize("mode", ["single", "segmented"])
def test_dropped_connection_resumes_where_it_broke(
    make_harness: Any, tmp_path: Path, mode: str, where: float, times: int
) -> None:
    size = BIG if mode == "segmented" else SMALL
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    cut = int(size * where) + 4097  # never exactly on a segment boundary
    o.faults.drop_at, o.faults.drop_times = cut, times
    dest = tmp_path / "out"
    r = fetch(h, dest, "--connections", "4" if mode == "segmented" else "1")
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    # Every byte was sent once: the kept bytes were trusted, the retry asked for the rest.
    assert o.stats.bytes_sent == size
    assert o.faults.drop_times == 0, "the fault never fired"
    assert r.stderr.count("connection broken") + r.stderr.count("connection failed") == times
    resumed = [rg for rg in o.stats.ranges if rg is not None and rg.startswith(f"bytes={cut}-")]
    assert len(resumed) == times, o.stats.ranges
    # Every request after the first is pinned to the object's ETag.
    assert o.stats.if_match[0] is None
    assert all(m == o.etag for m in o.stats.if_match[1:]), o.stats.if_match
    if mode == "segmented":
        # Alone in the run, the file gets every idle connection slot: its pieces, each
        # asked for once (plus the resume point), tile the file exactly.
        spans = sorted(
            tuple(int(x) for x in rg[len("bytes="):].split("-"))
            for rg in o.stats.ranges
            if rg is not None and not rg.startswith(f"bytes={cut}-")
        )
        assert len(spans) >= 4, o.stats.ranges
        assert spans[0][0] == 0 and spans[-1][1] == size - 1
        assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:])), spans


# ----------------------------------------------------------------------------- kill -9


def test_kill9_at_half_then_rerun_transfers_the_rest(make_harness: Any, tmp_path: Path) -> None:
    size = 8 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    o.faults.rate = 2 * MiB  # 4 s in all; checkpoints every second
    dest = tmp_path / "out"
    path = target(h, dest, "1")
    r = kill_when_claimed(h, dest, "1", 0.45, spawn_fetch(h, dest, "--connections", "1"))
    assert r.code == -signal.SIGKILL
    kept = claimed(path)
    assert 0.45 * size <= kept < size
    assert part_of(path).is_file() and not path.exists()
    first_run = o.stats.bytes_sent
    o.faults.rate = None
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    second_run = o.stats.bytes_sent - first_run
    assert second_run == size - kept <= 0.6 * size
    assert o.stats.ranges[-1] == f"bytes={kept}-{size - 1}"
    assert o.stats.if_match[-1] == o.etag
    assert "resuming at" in r.stderr


@pytest.mark.parametrize("mode", ["single", "segmented"])
def test_kill9_at_random_moments_always_ends_byte_exact(
    make_harness: Any, tmp_path: Path, mode: str
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    size = BIG if mode == "segmented" else 4 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    dest = tmp_path / "out"
    path = target(h, dest, "1")
    connections = "4" if mode == "segmented" else "1"
    points = sorted(rng.uniform(0.03, 0.9) for _ in range(3 if mode == "single" else 2))
    for point in points:
        # Each kill lands somewhere in a throttled run that resumes what the last one kept.
        o.faults.rate = (20 if mode == "segmented" else 4) * MiB
        sent = o.stats.bytes_sent
        proc = spawn_fetch(h, dest, "--connections", connections)
        wait_until(lambda: o.stats.bytes_sent - sent >= point * size or proc.poll() is not None,
                   timeout=30, what=f"{point:.0%} sent")
        proc.kill()
        r = finish(proc)
        note = f"seed {seed}, kill at {point:.1%}: {r.output}"
        assert r.code in (-signal.SIGKILL, 0), note
        if r.code == 0:
            break  # the download won the race
    kept = claimed(path) if part_of(path).exists() else 0
    o.faults.rate = None
    before = o.stats.bytes_sent
    r = fetch(h, dest, "--connections", connections)
    assert r.code == 0, f"seed {seed}: {r.output}"
    assert_verified(h, dest, "1")
    if kept:
        assert o.stats.bytes_sent - before == size - kept, f"seed {seed}"


def leave_partial(h: Harness, dest: Path, backup_id: str, fraction: float = 0.5,
                  connections: int = 1) -> int:
    """A kept partial + state, cheaply: a run whose connection breaks with --retries 0."""
    o = obj(h, backup_id)
    cut = int(o.size * fraction)
    o.faults.drop_at, o.faults.drop_times = cut, 1
    r = fetch(h, dest, "--retries", "0", "--connections", str(connections), "--backup-id", backup_id)
    assert r.code == 1, r.output
    path = target(h, dest, backup_id)
    kept = claimed(path)
    assert part_of(path).is_file() and not path.exists()
    assert kept == cut if connections == 1 else 0 < kept < o.size
    return kept


def api_refreshes(h: Harness, backup_id: str) -> int:
    """DescribeBackups calls that ask for one set by id (the engine's URL refresh)."""
    return sum(
        1 for c in h.emu.api_state.calls
        if c.action == "DescribeBackups" and c.params.get("BackupId") == backup_id and c.status == 200
    )


# ----------------------------------------------------------------------------- the object changes


def old_checksum_doc(backup_id: str, size: int) -> dict[str, Any]:
    """A set whose API Checksum is pinned to its first content (it will not follow a change)."""
    from fetcher.emulator import dataset

    doc = one_instance_doc([backup_doc(backup_id, size=size)], instance=INSTANCE)
    crc = dataset.load(doc=doc).find(INSTANCE, backup_id).crc64
    return backup_doc(backup_id, size=size, Checksum=str(crc))


def test_object_changed_between_runs(make_harness: Any, tmp_path: Path) -> None:
    size = 4 * MiB
    h = start(
        make_harness,
        backup_doc("1", size=size),  # API Checksum follows the object
        backup_doc("2", size=size, Checksum=None),  # no API Checksum: the CRC header decides
        old_checksum_doc("3", size),  # the API keeps naming the old bytes
    )
    objs = {b: obj(h, b) for b in ("1", "2", "3")}
    old_crc = {b: o.crc64 for b, o in objs.items()}
    for o in objs.values():
        o.faults.rate = MiB  # 4 s each; checkpoints every second
    dest = tmp_path / "out"
    proc = spawn_fetch(h, dest, "--jobs", "3", "--connections", "1")
    paths = {b: target(h, dest, b) for b in objs}
    wait_until(lambda: all(claimed(p) >= 0.2 * size for p in paths.values()), proc, what="three partials")
    proc.kill()
    finish(proc)
    kept = {b: claimed(p) for b, p in paths.items()}
    assert all(0 < k < size for k in kept.values())
    sent = {b: o.stats.bytes_sent for b, o in objs.items()}
    for o in objs.values():
        o.faults.rate = None
        o.change()
    assert all(o.crc64 != old_crc[b] for b, o in objs.items())
    r = fetch(h, dest, "--jobs", "3")
    assert r.code == 1, r.output
    no_traceback(r)
    # 1: the fresh listing names the new bytes; the partial pinned to the old Checksum
    # is dropped before any request, and the new object is fetched whole and verified.
    assert_verified(h, dest, "1", source="api")
    assert objs["1"].stats.bytes_sent - sent["1"] == size
    assert objs["1"].stats.if_match[-1] is None and 412 not in objs["1"].stats.statuses
    # 2: no API Checksum; the resume is refused (412) and the file starts over, checked
    # against the new object's own x-oss-hash-crc64ecma.
    assert_verified(h, dest, "2", source="oss-header")
    assert 412 in objs["2"].stats.statuses
    assert objs["2"].stats.bytes_sent - sent["2"] == size
    # 3: the new bytes can only fail against the old Checksum: failed, nothing under the
    # final name, and the partial of an object that no longer exists is not kept either.
    e = assert_failed(h, dest, "3", "Checksum")
    assert 412 in objs["3"].stats.statuses
    assert not part_of(paths["3"]).exists() and not state_of(paths["3"]).exists()
    # Given up on the first answer's CRC64 header, not after fetching it (twice, as a
    # plain CRC64 mismatch would); on loopback the server may still have pushed it all.
    assert objs["3"].stats.bytes_sent - sent["3"] <= size
    assert objs["3"].stats.statuses[-2:] == [412, 206]
    assert "changed" in e["reason"]


def test_same_bytes_reuploaded_between_runs_still_verifies(make_harness: Any, tmp_path: Path) -> None:
    """New ETag, same content and CRC64 (a re-upload): the API's Checksum still holds."""
    size = 2 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    dest = tmp_path / "out"
    kept = leave_partial(h, dest, "1")
    old_etag = o.etag
    o.reupload()
    assert o.etag != old_etag
    sent = o.stats.bytes_sent
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert 412 in o.stats.statuses
    assert o.stats.bytes_sent - sent == size  # started over: the old partial was pinned to another ETag
    assert kept


@pytest.mark.parametrize("checksum", ["follows", "none", "old"])
@pytest.mark.parametrize("mode", ["single", "segmented"])
def test_object_changed_during_run(make_harness: Any, tmp_path: Path, mode: str, checksum: str) -> None:
    size = BIG if mode == "segmented" else SMALL
    if checksum == "old":
        doc = old_checksum_doc("1", size)
    else:
        doc = backup_doc("1", size=size, **({"Checksum": None} if checksum == "none" else {}))
    h = start(make_harness, doc)
    o = obj(h, "1")
    old_crc = o.crc64
    if mode == "single":
        # The first GET breaks at 50%; the object is replaced before the second one.
        o.faults.drop_at, o.faults.drop_times = size // 2, 1
        o.faults.change_after_gets = 1
    else:
        o.faults.change_after_gets = 2  # replaced while the segments are being fetched
    dest = tmp_path / "out"
    r = fetch(h, dest, "--connections", "4" if mode == "segmented" else "1")
    no_traceback(r)
    assert o.version == 1 and o.crc64 != old_crc
    assert 412 in o.stats.statuses
    if checksum == "old":
        assert r.code == 1, r.output
        assert_failed(h, dest, "1", "Checksum")
        path = target(h, dest, "1")
        assert not part_of(path).exists() and not state_of(path).exists()
        return
    assert r.code == 0, r.output
    assert_verified(h, dest, "1", source="api" if checksum == "follows" else "oss-header")
    if checksum == "follows":
        assert api_refreshes(h, "1") >= 1  # the new Checksum came from a fresh listing
    # Started over once, as one stream, on the new object.
    assert o.stats.ranges[-1] == "bytes=0-" and o.stats.if_match[-1] is None
    if mode == "single":
        assert o.stats.bytes_sent == size // 2 + size  # the old half, then the new whole
    else:
        assert size < o.stats.bytes_sent < 2 * size


# ----------------------------------------------------------------------------- odd answers


@pytest.mark.parametrize("crc_header", [True, False], ids=["crc-header", "no-crc-header"])
def test_200_instead_of_206_on_resume_starts_over(
    make_harness: Any, tmp_path: Path, crc_header: bool
) -> None:
    size = 2 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    o.faults.no_crc_header = not crc_header
    dest = tmp_path / "out"
    kept = leave_partial(h, dest, "1")
    o.faults.ignore_range = True
    sent, gets = o.stats.bytes_sent, o.stats.gets
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    # The resume asked for the rest, pinned; the whole object came back and was taken from
    # byte 0 (never appended at the resume offset).
    assert o.stats.ranges[gets] == f"bytes={kept}-{size - 1}" and o.stats.if_match[gets] == o.etag
    assert o.stats.statuses[gets] == 200
    assert o.stats.bytes_sent - sent == size
    assert o.stats.gets - gets == 1


def test_200_instead_of_206_on_segmented_resume_starts_over(make_harness: Any, tmp_path: Path) -> None:
    h = start(make_harness, backup_doc("1", size=BIG))
    o = obj(h, "1")
    dest = tmp_path / "out"
    leave_partial(h, dest, "1", connections=4)
    o.faults.ignore_range = True
    sent, gets = o.stats.bytes_sent, o.stats.gets
    r = fetch(h, dest, "--connections", "4")
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    # The pinned resumes of the segments got whole objects: one answer cannot serve
    # several segments, so the file started over as one stream.
    assert all(m == o.etag for m in o.stats.if_match[gets:-1])
    assert 200 in o.stats.statuses[gets:-1]
    assert o.stats.ranges[-1] == "bytes=0-" and o.stats.if_match[-1] is None
    assert BIG <= o.stats.bytes_sent - sent < 2 * BIG
    assert "ignored the Range header" in r.stderr


def test_wrong_content_range_is_never_written(make_harness: Any, tmp_path: Path) -> None:
    size = 2 * MiB
    h = start(make_harness, backup_doc("1", size=size), backup_doc("2", size=100_000))
    o = obj(h, "1")
    dest = tmp_path / "out"
    kept = leave_partial(h, dest, "1")
    path = target(h, dest, "1")
    o.faults.wrong_content_range = True
    gets = o.stats.gets
    r = fetch(h, dest, "--retries", "2")
    assert r.code == 1, r.output
    no_traceback(r)
    assert_failed(h, dest, "1", f"asked for bytes from {kept}", f"sent from {kept + 1}")
    assert_verified(h, dest, "2")
    assert o.stats.gets - gets == 3  # first try + 2 retries, all refused by the client
    # Nothing from the misplaced answers reached the partial; it still resumes.
    assert claimed(path) == kept
    o.faults.wrong_content_range = False
    sent = o.stats.bytes_sent
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert o.stats.bytes_sent - sent == size - kept


# ----------------------------------------------------------------------------- URL lifetime


def test_short_lived_url_is_refreshed_and_the_download_continues(make_harness: Any, tmp_path: Path) -> None:
    size = 5 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    o.faults.url_ttl = 2
    o.faults.rate = 2 * MiB  # 2.5 s in all: longer than the URL lives
    cut = int(4.3 * MiB)  # reached after ~2.1 s, when the first URL has expired
    o.faults.drop_at, o.faults.drop_times = cut, 1
    dest = tmp_path / "out"
    r = fetch(h, dest, "--connections", "1")
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert api_refreshes(h, "1") >= 1
    assert o.stats.bytes_sent == size  # continued from where it was, not started over
    assert o.stats.ranges[-1] == f"bytes={cut}-{size - 1}" and o.stats.statuses[-1] == 206


def test_url_refused_as_expired_is_refreshed(make_harness: Any, tmp_path: Path) -> None:
    """The storage's clock runs ahead: URLs look valid here but the server refuses them."""
    size = 4 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    h.emu.store.clock = lambda: time.time() + 30
    o.faults.url_ttl = 1  # by the storage's clock; 31 s by ours
    o.faults.rate = 2 * MiB
    cut = int(3.2 * MiB)  # ~1.6 s in: the storage no longer takes the first URL
    o.faults.drop_at, o.faults.drop_times = cut, 1
    dest = tmp_path / "out"
    r = fetch(h, dest, "--connections", "1")
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert 403 in o.stats.statuses
    assert api_refreshes(h, "1") >= 1
    assert o.stats.bytes_sent == size


def test_client_clock_ahead_of_storage_does_not_exhaust_refreshes(make_harness: Any, tmp_path: Path) -> None:
    """Every URL looks expired by the local clock; the storage accepts them. With a burst
    of 5xx on top, proactive refreshes must not count as refusals and fail the file."""
    h = start(make_harness, backup_doc("1", size=SMALL))
    o = obj(h, "1")
    h.emu.store.clock = lambda: time.time() - 3600  # its URLs "expire" an hour ago here
    o.faults.error_times, o.faults.error_status = 4, 503
    dest = tmp_path / "out"
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert o.stats.statuses[:4] == [503] * 4
    assert o.stats.bytes_sent == SMALL


# ----------------------------------------------------------------------------- 5xx and stalls


def test_5xx_burst_is_retried(make_harness: Any, tmp_path: Path) -> None:
    h = start(make_harness, backup_doc("1", size=SMALL))
    o = obj(h, "1")
    o.faults.error_times, o.faults.error_status = 3, 503
    dest = tmp_path / "out"
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert o.stats.statuses == [503, 503, 503, 206]
    assert o.stats.bytes_sent == SMALL
    assert "retry 3/5" in r.stderr


def test_more_5xx_than_retries_fails_that_file_only(make_harness: Any, tmp_path: Path) -> None:
    h = start(make_harness, backup_doc("1", size=SMALL), backup_doc("2", size=SMALL))
    bad = obj(h, "1")
    bad.faults.error_times, bad.faults.error_status = 50, 500
    dest = tmp_path / "out"
    r = fetch(h, dest, "--retries", "2")
    assert r.code == 1, r.output
    no_traceback(r)
    assert_failed(h, dest, "1", "gave up after 2 retries", "HTTP 500")
    assert_verified(h, dest, "2")
    assert bad.stats.statuses == [500, 500, 500] and bad.stats.bytes_sent == 0
    assert not part_of(target(h, dest, "1")).exists()
    assert "1 verified" in r.stdout and "1 failed" in r.stdout


@pytest.mark.parametrize("mode", ["single", "segmented"])
def test_stalled_transfer_is_aborted_and_resumed(make_harness: Any, tmp_path: Path, mode: str) -> None:
    size = BIG if mode == "segmented" else SMALL
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    # 1 MiB, then silence; long enough that waiting it out would show, short enough
    # that an engine which never gives up on a stall fails here instead of hanging.
    o.faults.stall_after, o.faults.stall_times, o.faults.stall_seconds = MiB, 1, 8.0
    dest = tmp_path / "out"
    began = time.monotonic()
    r = fetch(h, dest, "--connections", "4" if mode == "segmented" else "1", pre=("--timeout", "1"))
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert "stalled: no data for 1s" in r.stderr
    assert time.monotonic() - began < 7
    assert o.stats.bytes_sent == size
    resumed = [rg for rg in o.stats.ranges if rg is not None and rg.startswith(f"bytes={MiB}-")]
    assert len(resumed) == 1, o.stats.ranges


# ----------------------------------------------------------------------------- corrupt objects


@pytest.mark.parametrize(
    ("mode", "times"), [("single", 1), ("single", None), ("segmented", 1)],
    ids=["single-once", "single-always", "segmented-once"],
)
def test_corrupt_byte_is_caught_and_fetched_again(
    make_harness: Any, tmp_path: Path, mode: str, times: int | None
) -> None:
    size = BIG if mode == "segmented" else SMALL
    h = start(make_harness, backup_doc("1", size=size), backup_doc("2", size=100_000))
    o = obj(h, "1")
    o.faults.corrupt_offset, o.faults.corrupt_times = size - 12345, times  # in the last segment
    dest = tmp_path / "out"
    r = fetch(h, dest, "--connections", "4" if mode == "segmented" else "1")
    assert "CRC64 mismatch" in r.stderr and "from scratch" in r.stderr
    # Once more from scratch, never a third time. When file 2 is done, its connection slot
    # takes over half of file 1's largest remaining range; the stream that gave it up had
    # already been sent some of it (socket buffers), hence a bounded excess when segmented.
    slack = 16 * MiB if mode == "segmented" else 0
    assert 2 * size <= o.stats.bytes_sent <= 2 * size + slack
    assert_verified(h, dest, "2")
    if times is None:
        assert r.code == 1, r.output
        e = assert_failed(h, dest, "1", "CRC64 mismatch", str(o.crc64))
        assert e["crc64_expected"] == str(o.crc64) != e["crc64"] and e["crc64_source"] == "api"
        path = target(h, dest, "1")
        assert not part_of(path).exists() and not state_of(path).exists()
        return
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")


def test_corrupt_after_kill_and_resume(make_harness: Any, tmp_path: Path) -> None:
    size = 4 * MiB
    h = start(make_harness, backup_doc("1", size=size), backup_doc("2", size=size))
    once, always = obj(h, "1"), obj(h, "2")
    for o in (once, always):
        o.faults.rate = MiB  # 4 s each; checkpoints every second
    dest = tmp_path / "out"
    paths = {b: target(h, dest, b) for b in ("1", "2")}
    proc = spawn_fetch(h, dest, "--jobs", "2", "--connections", "1")
    wait_until(lambda: all(claimed(p) >= 0.2 * size for p in paths.values()), proc, what="two partials")
    proc.kill()
    finish(proc)
    kept = {b: claimed(p) for b, p in paths.items()}
    sent = {b: obj(h, b).stats.bytes_sent for b in paths}
    bad_at = size - 1000
    assert all(k < bad_at for k in kept.values())
    for o in (once, always):
        o.faults.rate = None
        o.faults.corrupt_offset = bad_at
    once.faults.corrupt_times = 1
    r = fetch(h, dest, "--jobs", "2")
    assert r.code == 1, r.output
    no_traceback(r)
    # The resumed tail carried a bad byte: the state is dropped and the whole file fetched
    # once more from scratch; that copy is good for "1" and bad again for "2".
    assert_verified(h, dest, "1")
    assert once.stats.bytes_sent - sent["1"] == (size - kept["1"]) + size
    e = assert_failed(h, dest, "2", "CRC64 mismatch")
    assert e["crc64_expected"] == str(always.crc64) and e["crc64"] != e["crc64_expected"]
    assert always.stats.bytes_sent - sent["2"] == (size - kept["2"]) + size
    assert not part_of(paths["2"]).exists() and not state_of(paths["2"]).exists()
    assert always.stats.ranges[-1] in ("bytes=0-", f"bytes=0-{size - 1}")


# ----------------------------------------------------------------------------- signals and locks


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_keeps_partial_and_exits_130(make_harness: Any, tmp_path: Path, sig: int) -> None:
    size = 4 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    o.faults.rate = MiB  # 4 s; checkpoints every second
    dest = tmp_path / "out"
    path = target(h, dest, "1")
    r = kill_when_claimed(h, dest, "1", 0.2, spawn_fetch(h, dest, "--connections", "1"), sig=sig)
    assert r.code == 130, r.output
    assert "interrupted" in r.stderr
    no_traceback(r)
    kept = claimed(path)
    assert kept >= 0.2 * size and part_of(path).is_file() and not path.exists()
    # The last checkpoint was written on the way out: everything received is vouched for
    # (the periodic one alone could lag a second, 1 MiB here, behind).
    assert kept >= o.stats.bytes_sent - 512 * 1024
    o.faults.rate = None
    sent = o.stats.bytes_sent
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert o.stats.bytes_sent - sent == size - kept < size


def test_second_run_into_same_dest_refuses(make_harness: Any, tmp_path: Path) -> None:
    size = 2 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    o.faults.rate = MiB  # 2 s: long enough for the second run to try meanwhile
    dest = tmp_path / "out"
    path = target(h, dest, "1")
    first = spawn_fetch(h, dest, "--connections", "1")
    wait_until(lambda: part_of(path).exists(), first, what="the first run to start writing")
    r = fetch(h, dest)
    assert r.code != 0
    assert "already running" in r.stderr and ".fetcher.lock" in r.stderr, r.stderr
    no_traceback(r)
    assert o.stats.gets == 1  # the second run never asked for the object
    assert not (dest / "manifest.json").exists()
    done = finish(first)
    assert done.code == 0, done.output
    assert_verified(h, dest, "1")
    assert o.stats.gets == 1 and o.stats.bytes_sent == size


# ----------------------------------------------------------------------------- damaged resume state


def _truncate_state(path: Path) -> None:
    text = state_of(path).read_bytes()
    state_of(path).write_bytes(text[: len(text) // 2])


def _garbage_state(path: Path) -> None:
    state_of(path).write_bytes(b"\x00\xffnot json at all" + os.urandom(64))


def _part_missing(path: Path) -> None:
    part_of(path).unlink()


def _part_shorter(path: Path) -> None:
    os.truncate(part_of(path), claimed(path) - 1)


def _state_of_another_version(path: Path) -> None:
    doc = json.loads(state_of(path).read_text(encoding="utf-8"))
    doc["version"] = 99
    state_of(path).write_text(json.dumps(doc), encoding="utf-8")


def _segments_do_not_tile(path: Path) -> None:
    doc = json.loads(state_of(path).read_text(encoding="utf-8"))
    doc["segments"][0]["done"] = doc["size"] + 1
    state_of(path).write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize(
    "damage",
    [_truncate_state, _garbage_state, _part_missing, _part_shorter, _state_of_another_version,
     _segments_do_not_tile],
    ids=lambda f: f.__name__.strip("_"),
)
def test_damaged_resume_state_is_not_trusted(
    make_harness: Any, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    size = 2 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    dest = tmp_path / "out"
    leave_partial(h, dest, "1")
    path = target(h, dest, "1")
    # Poison what is kept, so that trusting any of it could not go unnoticed.
    if part_of(path).exists():
        with open(part_of(path), "r+b") as f:
            f.write(b"\xAA" * 4096)
    damage(path)
    gets, sent = o.stats.gets, o.stats.bytes_sent
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert o.stats.bytes_sent - sent == size  # a clean download...
    assert o.stats.ranges[gets] == "bytes=0-" and o.stats.if_match[gets] is None  # ...from byte 0
    assert "CRC64 mismatch" not in r.stderr


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A tmpfs of 8 MiB at DEST (needs root and mount rights; skipped without them)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("ENOSPC cases mount a small tmpfs, which needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the ENOSPC cases: {done.stderr.strip()}")

    def resize(mib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mib}m", str(mnt)], check=True)

    try:
        yield mnt, resize
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill the file system at ``disk`` until about ``leave`` bytes are free."""
    ballast = disk / "ballast"
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return ballast


def test_disk_full_before_the_download_starts(make_harness: Any, small_disk: Any) -> None:
    disk, resize = small_disk
    size = 12 * MiB  # more than the 8 MiB file system holds
    h = start(make_harness, backup_doc("1", size=size), backup_doc("2", size=MiB))
    dest = disk / "out"
    r = fetch(h, dest, "--jobs", "1")
    assert r.code == 1, r.output
    no_traceback(r)
    failed = [line for line in r.stderr.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "disk full" in failed[0], r.stderr
    assert_failed(h, dest, "1", "disk full")
    assert_verified(h, dest, "2")  # the other file fits, and is fetched
    path = target(h, dest, "1")
    assert not part_of(path).exists()  # nothing arrived, so nothing is kept
    assert obj(h, "1").stats.gets == 1  # a full disk is not retried like a network error
    resize(32)
    sent = obj(h, "1").stats.bytes_sent
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert obj(h, "1").stats.bytes_sent - sent == size


def test_disk_full_on_resume_keeps_partial_and_resumes_later(make_harness: Any, small_disk: Any) -> None:
    disk, _ = small_disk
    size = 6 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    dest = disk / "out"
    kept = leave_partial(h, dest, "1")
    path = target(h, dest, "1")
    # Only the kept bytes are on disk: the rest needs space the disk no longer has.
    os.truncate(part_of(path), kept)
    ballast = fill(disk, leave=MiB)
    sent = o.stats.bytes_sent
    r = fetch(h, dest)
    assert r.code == 1, r.output
    no_traceback(r)
    assert "disk full" in r.stderr
    assert all(len(line) < 300 for line in r.stderr.splitlines())
    # Refused before asking for a byte; the partial is kept, vouched for by its state.
    assert not path.exists()
    assert part_of(path).is_file() and claimed(path) == kept
    assert o.stats.bytes_sent == sent
    ballast.unlink()
    kept = claimed(path)
    sent = o.stats.bytes_sent
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert o.stats.bytes_sent - sent == size - kept < size


def test_disk_filling_up_during_a_download(make_harness: Any, small_disk: Any) -> None:
    """Others fill the disk while a download runs: that file fails with one line, what
    arrived is kept with its last checkpoint, and a rerun with space resumes it."""
    disk, _ = small_disk
    size = 3 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    o.faults.rate = MiB  # 3 s: checkpoints at 1 s and 2 s
    dest = disk / "out"
    path = target(h, dest, "1")
    proc = spawn_fetch(h, dest)
    wait_until(lambda: state_of(path).exists() and claimed(path) > 0, proc, what="a checkpoint")
    ballast = fill(disk, leave=0)
    r = finish(proc)
    assert r.code == 1, r.output
    no_traceback(r)
    assert "never retrieved" not in r.stderr
    assert "disk full" in r.stderr
    assert not path.exists()
    kept = claimed(path)
    assert 0 < kept < size and part_of(path).is_file()
    ballast.unlink()
    sent = o.stats.bytes_sent
    o.faults.rate = None
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_verified(h, dest, "1")
    assert o.stats.bytes_sent - sent == size - kept
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# ----------------------------------------------------------------------------- segmented == single


def test_segmented_and_single_stream_give_the_same_bytes(make_harness: Any, tmp_path: Path) -> None:
    h = start(make_harness, backup_doc("1", size=BIG))
    o = obj(h, "1")
    a = fetch(h, tmp_path / "four", "--connections", "4")
    assert a.code == 0, a.output
    seg_ranges = list(o.stats.ranges)
    b = fetch(h, tmp_path / "one", "--connections", "1")
    assert b.code == 0, b.output
    four = assert_verified(h, tmp_path / "four", "1")
    one = assert_verified(h, tmp_path / "one", "1")
    assert (four["crc64"], four["sha256"], four["size"]) == (one["crc64"], one["sha256"], one["size"])
    assert len(seg_ranges) >= 4 and o.stats.ranges[len(seg_ranges):] == ["bytes=0-"]
    assert o.stats.bytes_sent == 2 * BIG



# ----------------------------------------------------------------------------- a kept partial changed on disk


@pytest.mark.parametrize("sha", ["sha256", "no-sha256"])
def test_kept_partial_changed_on_disk_is_not_trusted(make_harness: Any, tmp_path: Path, sha: str) -> None:
    """Bytes kept from an earlier run are checked against the CRC64 their state recorded
    (on the SHA-256 read-back, or by reading them when SHA-256 is off): a partial changed
    on disk between runs never ends up under the final name."""
    size = 3 * MiB
    h = start(make_harness, backup_doc("1", size=size))
    o = obj(h, "1")
    dest = tmp_path / "out"
    kept = leave_partial(h, dest, "1")
    path = target(h, dest, "1")
    with open(part_of(path), "r+b") as f:  # bit rot inside the kept bytes
        f.seek(kept // 2)
        byte = f.read(1)
        f.seek(kept // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    sent = o.stats.bytes_sent
    extra = () if sha == "sha256" else ("--no-sha256",)
    r = fetch(h, dest, *extra)
    assert r.code == 0, r.output
    assert "kept partial changed on disk" in r.stderr
    if sha == "sha256":
        assert_verified(h, dest, "1")  # byte-exact, from a clean start
    else:
        assert path.read_bytes() == o.content.read(0, size)
        entry = entries(dest)["1"]
        assert entry["status"] == "verified" and entry["sha256"] is None
        assert entry["crc64"] == str(o.crc64)
    assert o.stats.bytes_sent - sent >= size  # the whole object again, not just the rest
