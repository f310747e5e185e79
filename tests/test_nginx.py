"""The engine against a real HTTP server nobody here wrote: nginx serving the backup files.

The emulator plays the RDS API only: its DescribeBackups hands out URLs that point at an
nginx (loopback, random ports, its own prefix, config, pid and temp folders) serving the
same files at the same paths, ``/<bucket>/<prefix>/<backup id>/<name>``, with the Checksum
the emulator computes from those very files. nginx ignores the query string.

nginx listens twice on the same root: ``fast`` at full speed, ``slow`` with every connection
capped at ``SLOW_RATE`` so that a kill lands mid-transfer. A rerun goes through a fresh
emulator whose URLs point at ``fast``: the resume state is keyed on the object, not the URL.
Under ``/<bucket>/noetag/`` nginx sends no ETag at all. Its access log (one JSON line per
request: port, path, status, body bytes, Range, If-Match, ETag sent) shows what the engine
asked and what it was served, as ``ObjectStats`` does for the emulator.

What nginx does differently from OSS and from the emulator (each one is asserted below):

* no ``x-oss-hash-crc64ecma``: files verify against the API's Checksum only;
* a strong ETag ``"<mtime hex>-<size hex>"``, whole seconds: If-Match is honoured (412), but
  a same-size replacement within the same second keeps the ETag, so tests move the mtime;
* a range that starts at or past the end: 416 with ``Content-Range: bytes */<size>``; a
  reversed one: 416 too (OSS and the emulator: 200 with the whole object, for both);
* HEAD is answered (OSS refuses HEAD on a URL signed for GET); error bodies are HTML;
* a file shortened while it is being sent: nginx drops the connection (the emulator used to
  end the answer short of its Content-Length, leaving the client waiting: fixed in oss.py);
* a file replaced on disk is a new object at once (new size and ETag). The emulator used to
  keep the size, ETag and CRC64 it first saw, serving new bytes under the old ETag: fixed
  in ``FileContent``.

Engine bugs these showed, fixed: a 416 to a resume failed the file instead of starting over;
with no ETag, the bounded first answer was taken for a broken connection; after a 412 with a
stale Checksum and no CRC64 header, the new object was fetched twice.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from fetcher import checksum
from fetcher.emulator.content import GeneratedContent
from tests.conftest import CliResult, Harness, backup_doc, one_instance_doc, read_manifest
from tests.test_resilience import claimed, first_difference, no_traceback, wait_until

BUCKET = "rdsbak-hz-v3"  # the demo data set's bucket
INSTANCE = "rm-nginx0001"
MiB = 1 << 20
BIG = 80 * MiB  # above the segment threshold: split over several connections
SLOW_RATE = 10 * MiB  # bytes per second per connection on the slow port
_ids = itertools.count(700000001)


# ----------------------------------------------------------------------------- nginx


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Logged:
    """One request as nginx's access log has it."""

    port: int
    uri: str  # decoded path
    status: int
    bytes: int  # body bytes sent
    range: str
    if_match: str
    etag: str  # the ETag nginx sent ("" for none)


@dataclass(frozen=True)
class Served:
    """A file nginx serves at the path the emulator's URL for it names."""

    backup_id: str
    prefix: str
    name: str
    path: Path

    @property
    def uri(self) -> str:
        return f"/{BUCKET}/{self.prefix}/{self.backup_id}/{self.name}"

    def listed(self, **fields: Any) -> dict[str, Any]:
        """The backup set that lists this file (Checksum computed from it unless given)."""
        doc = backup_doc(self.backup_id, **fields)
        doc["object"] = {"name": self.name, "file": str(self.path), "prefix": self.prefix}
        return doc


class Nginx:
    """nginx in the foreground (``daemon off``), loopback only, everything under ``home``."""

    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self.home = home
        self.www = home / "www"
        self.log = home / "logs" / "access.log"
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        temp = "\n".join(
            f"    {kind}_temp_path {self.home / 'tmp' / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        fields = (
            '{"port":$server_port,"uri":"$uri","status":$status,"bytes":$body_bytes_sent,'
            '"range":"$http_range","if_match":"$http_if_match","etag":"$sent_http_etag"}'
        )

        def server(port: int, rate: str) -> str:
            return f"""
    server {{
        listen 127.0.0.1:{port};
        root {self.www};
        limit_rate {rate};
        location / {{ }}
        location ^~ /{BUCKET}/noetag/ {{ etag off; }}
    }}"""

        return f"""# fetcher tests: generated, loopback only
daemon off;
master_process off;
worker_processes 1;
pid {self.home / 'nginx.pid'};
error_log {self.home / 'logs' / 'error.log'} warn;
events {{ worker_connections 256; }}
http {{
    log_format probe escape=json '{fields}';
    access_log {self.log} probe;
    default_type application/octet-stream;
    sendfile on;
    server_tokens off;
    keepalive_timeout 30;
{temp}
{server(self.ports['fast'], '0')}
{server(self.ports['slow'], str(SLOW_RATE))}
}}
"""

    def start(self) -> None:
        for sub in ("www", "logs", "tmp"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        errors = ""
        for _ in range(3):  # a free port may be taken before nginx binds it
            self.ports = {"fast": free_port(), "slow": free_port()}
            conf = self.home / "nginx.conf"
            conf.write_text(self._config())
            with open(self.home / "logs" / "stderr.log", "wb") as err:
                self.proc = subprocess.Popen(
                    [self.binary, "-p", str(self.home), "-c", str(conf),
                     "-e", str(self.home / "logs" / "error.log")],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                )
            if self._wait_listening():
                return
            errors = (self.home / "logs" / "stderr.log").read_text(errors="replace")
            errors += (self.home / "logs" / "error.log").read_text(errors="replace")
            self.stop()
        pytest.fail(f"nginx ({self.binary}) did not start:\n{errors}")

    def _wait_listening(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        pending = set(self.ports.values())
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            for port in list(pending):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pending.discard(port)
                except OSError:
                    time.sleep(0.02)
        return not pending

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def base(self, port: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    def serve(self, data: bytes, *, prefix: str = "custins7001", name: str | None = None) -> Served:
        """``data`` as a file of a backup set of its own (a new backup id each time)."""
        bid = str(next(_ids))
        name = name or f"hins{bid}_data.xb"
        s = Served(bid, prefix, name, self.www / BUCKET / prefix / bid / name)
        s.path.parent.mkdir(parents=True, exist_ok=True)
        s.path.write_bytes(data)
        return s

    def requests(self, s: Served, port: str | None = None) -> list[Logged]:
        out = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            got = Logged(**json.loads(line))
            if got.uri == s.uri and (port is None or got.port == self.ports[port]):
                out.append(got)
        return out

    def wait_logged(self, s: Served, count: int, port: str | None = None) -> list[Logged]:
        """nginx logs a request when it ends (for a dead client: at its next write)."""
        wait_until(lambda: len(self.requests(s, port)) >= count, timeout=10,
                   what=f"{count} request(s) for {s.name} in nginx's access log")
        return self.requests(s, port)


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx not found on PATH nor at /usr/sbin/nginx "
                    "(Debian: apt-get install nginx-light; .ci/run installs it)")
    ng = Nginx(binary, tmp_path_factory.mktemp("nginx"))
    ng.start()
    try:
        yield ng
    finally:
        ng.stop()


# ----------------------------------------------------------------------------- helpers


def content(seed: str, size: int) -> bytes:
    """Deterministic bytes that never repeat a 64 KiB block (a misplaced block shows)."""
    return GeneratedContent(seed, size).read(0, size)


def api(make_harness: Any, ng: Nginx, port: str, *backups: dict[str, Any]) -> Harness:
    """The emulator as the RDS API, its URLs pointing at nginx's ``port``."""
    base = ng.base(port)
    doc = one_instance_doc(list(backups), instance=INSTANCE)
    return make_harness(doc, public_base=base, internal_base=base)  # type: ignore[no-any-return]


FETCH = ("fetch", "--no-progress", "--network", "public", "--instance", INSTANCE)


def fetch(h: Harness, dest: Path, *args: str) -> CliResult:
    return h.run(*FETCH, "--dest", str(dest), *args)


def spawn_fetch(h: Harness, dest: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    """The real CLI as its own process, its output in ``log`` (readable while it runs)."""
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fetcher", *FETCH, "--dest", str(dest), *args],
            env=h.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            text=True, cwd=h.tmp,
        )


def target(dest: Path, s: Served) -> Path:
    return dest / INSTANCE / s.backup_id / s.name


def entry_of(dest: Path, s: Served) -> dict[str, Any]:
    return next(f for f in read_manifest(dest)["files"] if f["backup_id"] == s.backup_id)


def assert_fetched(dest: Path, s: Served, data: bytes, status: str = "verified") -> dict[str, Any]:
    """The final file is ``data``; the manifest says so, with its true CRC64; no debris."""
    path = target(dest, s)
    got = path.read_bytes()
    diff = first_difference(got, data)
    assert diff is None, f"{path.name}: {len(got)} bytes on disk, first difference at {diff}"
    entry = entry_of(dest, s)
    assert entry["status"] == status, entry
    assert entry["size"] == len(data)
    assert entry["crc64"] == str(checksum.crc64(data))
    if status == "verified":
        assert entry["crc64_expected"] == entry["crc64"] and entry["crc64_source"] == "api"
    else:
        assert entry.get("crc64_expected") is None
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in path.parent.glob(path.name + ".part*")) == []
    return entry


def assert_about(served: int, needed: int, size: int) -> None:
    """nginx served the bytes needed, give or take what was in flight on a stream that
    stopped reading early (its range was cut short when another stream took over part)."""
    assert needed <= served < needed + size // 8, f"{served} bytes served, {needed} needed"


def range_start(logged: Logged) -> int:
    assert logged.range.startswith("bytes="), logged
    return int(logged.range[len("bytes="):].split("-")[0])


def resume_state(path: Path) -> dict[str, Any]:
    text = path.with_name(path.name + ".part.state").read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def running(proc: subprocess.Popen[str], log: Path) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"fetcher exited ({proc.returncode}) too early:\n{log.read_text(encoding='utf-8')}")
    return True


def ended(proc: subprocess.Popen[str], log: Path) -> CliResult:
    proc.wait(30)
    return CliResult(proc.returncode, log.read_text(encoding="utf-8"), "")


def kill_mid_transfer(h: Harness, dest: Path, s: Served, size: int, *args: str) -> int:
    """Run the real CLI against the slow port, kill -9 it once a checkpoint vouches for a
    quarter of the file; return the bytes the resume state vouches for."""
    path = target(dest, s)
    log = dest.parent / "killed.log"
    proc = spawn_fetch(h, dest, log, *args)
    wait_until(lambda: running(proc, log) and claimed(path) >= size // 4, what="a quarter checkpointed")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    kept = claimed(path)
    assert size // 4 <= kept < size, "the kill must land mid-transfer"
    assert not path.exists()
    return kept


# ----------------------------------------------------------------------------- downloads


def test_whole_file(nginx: Nginx, make_harness: Any, tmp_path: Path) -> None:
    data = content("whole", 3 * MiB + 12345)
    # A name that must be quoted in the URL: nginx finds the file only if the path the
    # emulator signs decodes to where the file lies.
    s = nginx.serve(data, name="hins 20261127+full.xb")
    h = api(make_harness, nginx, "fast", s.listed())
    dest = tmp_path / "out"
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_fetched(dest, s, data)
    logged = nginx.requests(s)
    assert [(g.status, g.range, g.if_match, g.bytes) for g in logged] == [
        (206, "bytes=0-", "", len(data))
    ]
    assert h.emu.find(INSTANCE, s.backup_id).stats.gets == 0, "every byte came from nginx"
    assert quote(s.name) in entry_of(dest, s)["url"]
    v = h.run("verify", str(dest / "manifest.json"))
    assert v.code == 0, v.output


def test_empty_file(nginx: Nginx, make_harness: Any, tmp_path: Path) -> None:
    s = nginx.serve(b"", name="empty.xb")
    h = api(make_harness, nginx, "fast", s.listed())
    dest = tmp_path / "out"
    r = fetch(h, dest)
    assert r.code == 0, r.output
    assert_fetched(dest, s, b"")
    # nginx answers a Range on an empty file with 200 and no body (not 416).
    assert [(g.status, g.bytes) for g in nginx.requests(s)] == [(200, 0)]


def test_segmented_download(nginx: Nginx, make_harness: Any, tmp_path: Path) -> None:
    data = content("segmented", BIG)
    s = nginx.serve(data)
    h = api(make_harness, nginx, "fast", s.listed())
    dest = tmp_path / "out"
    r = fetch(h, dest, "--connections", "4")
    assert r.code == 0, r.output
    assert_fetched(dest, s, data)
    logged = nginx.requests(s)  # in the order the requests ended
    unpinned = [g for g in logged if not g.if_match]
    assert len(unpinned) == 1, logged
    first = unpinned[0]
    rest = [g for g in logged if g is not first]
    etag = first.etag
    assert etag.startswith('"') and not etag.startswith("W/"), "nginx's ETag is strong"
    assert range_start(first) == 0 and first.status == 206
    # Split over several ranged requests, every one after the first pinned with If-Match.
    assert len(rest) >= 2, logged
    assert all(g.status == 206 and g.if_match == etag and g.etag == etag for g in rest), logged
    assert len({range_start(g) for g in logged}) == len(logged)
    assert_about(sum(g.bytes for g in logged), BIG, BIG)


@pytest.mark.parametrize("mode", ["single", "segmented"])
def test_resume_after_kill9(nginx: Nginx, make_harness: Any, tmp_path: Path, mode: str) -> None:
    size = BIG if mode == "segmented" else 3 * SLOW_RATE
    connections = "4" if mode == "segmented" else "1"
    data = content(f"kill-{mode}", size)
    s = nginx.serve(data)
    dest = tmp_path / "out"
    slow = api(make_harness, nginx, "slow", s.listed())
    kept = kill_mid_transfer(slow, dest, s, size, "--connections", connections)
    state = resume_state(target(dest, s))
    etag = state["etag"]
    left = [g for g in state["segments"] if g["done"] < g["end"] - g["start"]]
    # The rerun, through a fresh API whose URLs point at the unthrottled port.
    fast = api(make_harness, nginx, "fast", s.listed())
    r = fetch(fast, dest, "--connections", connections)
    assert r.code == 0, r.output
    assert_fetched(dest, s, data)
    assert "resuming at" in r.output, (r.output, state)
    rerun = nginx.requests(s, "fast")
    # Each unfinished segment asked for from its recorded offset, pinned to the ETag.
    assert all(g.status == 206 and g.if_match == g.etag == etag for g in rerun), rerun
    starts = {range_start(g) for g in rerun}
    assert {g["start"] + g["done"] for g in left} <= starts, (left, rerun)
    if mode == "single":
        assert [(g.range, g.bytes) for g in rerun] == [(f"bytes={kept}-{size - 1}", size - kept)]
    assert_about(sum(g.bytes for g in rerun), size - kept, size)
    # Every segment with bytes kept had a request the kill cut (nginx logs it at its next
    # write to the dead client).
    nginx.wait_logged(s, sum(1 for g in state["segments"] if g["done"]), "slow")
    served = sum(g.bytes for g in nginx.requests(s))
    assert served < 1.5 * size, f"{served} bytes served for a {size}-byte file: not resumed"


# ----------------------------------------------------------------------------- the file changes


def replace_file(s: Served, data: bytes) -> None:
    """New bytes under the same name, as an upload would: written aside, renamed over, the
    mtime moved on (nginx's ETag is mtime-size in whole seconds: same size, same second,
    same ETag)."""
    before = s.path.stat().st_mtime
    new = s.path.with_name(s.path.name + ".upload")
    new.write_bytes(data)
    os.utime(new, (before + 10, before + 10))
    os.replace(new, s.path)


@pytest.mark.parametrize("api_checksum", ["follows", "none"])
def test_file_replaced_between_runs(
    nginx: Nginx, make_harness: Any, tmp_path: Path, api_checksum: str
) -> None:
    size = 3 * SLOW_RATE
    old, new = content("replaced-old", size), content("replaced-new", size)
    s = nginx.serve(old)
    fields: dict[str, Any] = {} if api_checksum == "follows" else {"Checksum": None}
    dest = tmp_path / "out"
    kept = kill_mid_transfer(api(make_harness, nginx, "slow", s.listed(**fields)), dest, s, size)
    old_etag = nginx.wait_logged(s, 1, "slow")[0].etag
    replace_file(s, new)
    # A fresh listing: with "follows", the Checksum the emulator computes from the new file.
    r = fetch(api(make_harness, nginx, "fast", s.listed(**fields)), dest)
    assert r.code == 0, r.output
    no_traceback(r)
    rerun = [(g.status, g.range, g.if_match, g.bytes) for g in nginx.requests(s, "fast")]
    new_etag = nginx.requests(s, "fast")[-1].etag
    assert new_etag and new_etag != old_etag
    if api_checksum == "follows":
        assert_fetched(dest, s, new)
        # The partial was pinned to the old Checksum: dropped before any request.
        assert rerun == [(206, "bytes=0-", "", size)]
    else:
        # Nothing to verify against (no Checksum, and nginx sends no CRC64 header), but
        # the resume was refused (412) and the file started over: the new bytes, whole.
        assert_fetched(dest, s, new, status="unverified")
        assert rerun[0][:3] == (412, f"bytes={kept}-{size - 1}", old_etag)
        assert rerun[1:] == [(206, "bytes=0-", "", size)]
        assert "starting over" in r.output


def stale_checksum_rerun(nginx: Nginx, make_harness: Any, tmp_path: Path) -> tuple[Served, Path, CliResult]:
    """A partial of the old file, the file replaced, and a rerun whose listing still gives
    the old file's Checksum (the API names bytes that no longer exist)."""
    size = 3 * SLOW_RATE
    old = content("stale-old", size)
    s = nginx.serve(old)
    dest = tmp_path / "out"
    kill_mid_transfer(api(make_harness, nginx, "slow", s.listed()), dest, s, size)
    nginx.wait_logged(s, 1, "slow")
    replace_file(s, content("stale-new", size))
    stale = s.listed(Checksum=str(checksum.crc64(old)))
    return s, dest, fetch(api(make_harness, nginx, "fast", stale), dest)


def test_file_replaced_but_api_names_the_old_bytes(nginx: Nginx, make_harness: Any, tmp_path: Path) -> None:
    s, dest, r = stale_checksum_rerun(nginx, make_harness, tmp_path)
    assert r.code == 1, r.output
    no_traceback(r)
    entry = entry_of(dest, s)
    assert entry["status"] == "failed", entry
    path = target(dest, s)
    assert not path.exists()
    assert sorted(p.name for p in path.parent.glob(path.name + ".part*")) == []
    assert nginx.requests(s, "fast")[0].status == 412


def test_file_replaced_but_api_names_the_old_bytes_is_fetched_once(
    nginx: Nginx, make_harness: Any, tmp_path: Path
) -> None:
    s, dest, r = stale_checksum_rerun(nginx, make_harness, tmp_path)
    assert r.code == 1, r.output
    size = s.path.stat().st_size
    served = sum(g.bytes for g in nginx.requests(s, "fast") if g.status in (200, 206))
    assert served <= size, f"{served} bytes fetched to learn that a {size}-byte file changed"
    assert "Checksum" in entry_of(dest, s)["reason"]


# ----------------------------------------------------------------------------- nginx vs the emulator


@dataclass(frozen=True)
class Answer:
    status: int
    content_range: str | None
    body: bytes
    etag: str | None
    crc64: str | None

    @property
    def gist(self) -> tuple[int, str | None, bytes]:
        """What must agree: error bodies differ (HTML vs OSS XML), so only their status."""
        if self.status >= 300:
            return self.status, None, b""
        return self.status, self.content_range, self.body


def ask(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Answer:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request(method, f"{parts.path}?{parts.query}", headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return Answer(resp.status, resp.getheader("Content-Range"), body, resp.getheader("ETag"),
                      resp.getheader("x-oss-hash-crc64ecma"))
    finally:
        conn.close()


SIZE = 200_000
ETAG = "<the server's own ETag>"
AGREE: dict[str, dict[str, str]] = {
    "no range": {},
    "from 0": {"Range": "bytes=0-"},
    "first byte": {"Range": "bytes=0-0"},
    "middle": {"Range": "bytes=1000-1999"},
    "resume": {"Range": "bytes=1000-"},
    "last byte": {"Range": f"bytes={SIZE - 1}-"},
    "suffix": {"Range": "bytes=-100"},
    "end past the end": {"Range": f"bytes=1000-{SIZE + 5000}"},
    "pinned": {"Range": "bytes=1000-", "If-Match": ETAG},
    "pinned, any": {"Range": "bytes=1000-", "If-Match": "*"},
    "stale ETag": {"Range": "bytes=1000-", "If-Match": '"5e1f00d-30d40"'},
    "weak ETag": {"Range": "bytes=1000-", "If-Match": f"W/{ETAG}"},
    "stale ETag, start past the end": {"Range": f"bytes={SIZE}-", "If-Match": '"5e1f00d-30d40"'},
}


def servers(nginx: Nginx, make_harness: Any, data: bytes) -> tuple[Harness, Served, str, str]:
    """One file, and a signed URL for it at nginx and at the emulator's own object store."""
    s = nginx.serve(data)
    h = api(make_harness, nginx, "fast", s.listed())
    o = h.emu.find(INSTANCE, s.backup_id)
    return (h, s, h.emu.store.presign(nginx.base("fast"), o),
            h.emu.store.presign(f"http://127.0.0.1:{h.emu.public_port}", o))


def test_nginx_and_the_emulator_agree_where_the_engine_relies_on_it(
    nginx: Nginx, make_harness: Any
) -> None:
    data = content("agree", SIZE)
    _, _, at_nginx, at_emulator = servers(nginx, make_harness, data)
    own = {url: ask(url, {"Range": "bytes=0-0"}).etag for url in (at_nginx, at_emulator)}
    for label, headers in AGREE.items():
        answers = [
            ask(url, {k: v.replace(ETAG, own[url] or "") for k, v in headers.items()})
            for url in (at_nginx, at_emulator)
        ]
        assert answers[0].gist == answers[1].gist, (
            f"{label}: nginx {answers[0]!r:.300} / emulator {answers[1]!r:.300}"
        )
    empty = servers(nginx, make_harness, b"")
    for headers in ({}, {"Range": "bytes=0-"}):
        assert ask(empty[2], headers).gist == ask(empty[3], headers).gist == (200, None, b"")


def test_where_nginx_and_the_emulator_differ(nginx: Nginx, make_harness: Any) -> None:
    """Each difference, pinned: if one goes away, the notes at the top need updating."""
    data = content("differ", SIZE)
    _, s, at_nginx, at_emulator = servers(nginx, make_harness, data)
    # A start at or past the end: nginx 416, OSS (and the emulator) the whole object.
    past = {"Range": f"bytes={SIZE}-"}
    n, e = ask(at_nginx, past), ask(at_emulator, past)
    assert (n.status, n.content_range) == (416, f"bytes */{SIZE}")
    assert (e.status, e.content_range, e.body) == (200, None, data)
    # A reversed range: nginx 416; OSS ignores a range it cannot use.
    rev = {"Range": "bytes=2000-1000"}
    assert (ask(at_nginx, rev).status, ask(at_emulator, rev).gist) == (416, (200, None, data))
    # The CRC64 header is OSS's; nginx has none.
    n, e = ask(at_nginx, {"Range": "bytes=0-0"}), ask(at_emulator, {"Range": "bytes=0-0"})
    assert n.crc64 is None and e.crc64 == str(checksum.crc64(data))
    # nginx's ETag is "<mtime>-<size>" in hex; OSS's an MD5.
    assert n.etag == f'"{int(s.path.stat().st_mtime):x}-{SIZE:x}"'
    # A URL signed for GET does not allow HEAD at OSS; nginx does not check signatures.
    assert (ask(at_nginx, method="HEAD").status, ask(at_emulator, method="HEAD").status) == (200, 403)


def test_a_replaced_file_is_a_new_object_to_both(nginx: Nginx, make_harness: Any) -> None:
    """The emulator serves ``"file"`` objects from disk, as nginx does: a file replaced there
    is a new object at once, with its own size, ETag and CRC64, at both."""
    old, new = content("swap-old", SIZE), content("swap-new", SIZE // 2)
    h, s, at_nginx, at_emulator = servers(nginx, make_harness, old)
    o = h.emu.find(INSTANCE, s.backup_id)
    before = {url: ask(url, {"Range": "bytes=0-"}) for url in (at_nginx, at_emulator)}
    assert o.crc64 == checksum.crc64(old)
    replace_file(s, new)
    for url in (at_nginx, at_emulator):
        now = ask(url, {"Range": "bytes=0-"})
        whole = (206, f"bytes 0-{len(new) - 1}/{len(new)}", new)
        assert (now.status, now.content_range, now.body) == whole, url
        assert now.etag != before[url].etag, url
        # The old ETag no longer matches.
        assert ask(url, {"Range": "bytes=10-", "If-Match": before[url].etag or ""}).status == 412, url
    assert (o.size, o.crc64) == (len(new), checksum.crc64(new)), "BackupSize and Checksum follow"


def read_while_shortened(url: str, path: Path) -> str:
    """GET a file, shorten it once the first bytes are in, read on: how the answer ends."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=1)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        resp = conn.getresponse()
        resp.read(256 << 10)
        os.truncate(path, 128 << 10)
        try:
            resp.read()
        except (http.client.IncompleteRead, ConnectionError):
            return "dropped"
        except TimeoutError:
            return "hung"
        return "complete"
    finally:
        conn.close()


def test_a_file_shortened_while_sent_drops_the_connection_at_both(
    nginx: Nginx, make_harness: Any
) -> None:
    # One file each: nginx's (read through the slow port, so it is still sending) ...
    h, s, _, _ = servers(nginx, make_harness, content("cut-nginx", 4 * MiB))
    at_nginx = h.emu.store.presign(nginx.base("slow"), h.emu.find(INSTANCE, s.backup_id))
    assert read_while_shortened(at_nginx, s.path) == "dropped"
    # ... and the emulator's, throttled for the same reason.
    h, s, _, at_emulator = servers(nginx, make_harness, content("cut-emulator", MiB))
    h.emu.find(INSTANCE, s.backup_id).faults.rate = MiB
    assert read_while_shortened(at_emulator, s.path) == "dropped"


# ----------------------------------------------------------------------------- no ETag, and 416


def started(log: Path, proc: subprocess.Popen[str], sent: int) -> None:
    """Wait until the CLI says the transfer started, then until about ``sent`` bytes left
    the slow port (no resume state to watch when nothing can be pinned)."""
    wait_until(lambda: running(proc, log) and "fetching " in log.read_text(encoding="utf-8"),
               what="the transfer to start")
    time.sleep(sent / SLOW_RATE)


@pytest.mark.parametrize("retries", [
    "5",
    "0",
])
def test_without_etag_a_large_file(nginx: Nginx, make_harness: Any, tmp_path: Path, retries: str) -> None:
    """Nothing to pin ranges to: not split, never resumed, and no retry spent on it."""
    data = content(f"noetag-big-{retries}", BIG)
    s = nginx.serve(data, prefix="noetag")
    h = api(make_harness, nginx, "fast", s.listed())
    dest = tmp_path / "out"
    r = fetch(h, dest, "--connections", "4", "--retries", retries)
    assert r.code == 0, r.output
    assert_fetched(dest, s, data)
    logged = nginx.requests(s)
    assert all(g.etag == "" and g.if_match == "" for g in logged), logged
    assert_about(sum(g.bytes for g in logged), BIG, BIG)


def test_without_etag_a_kill_means_starting_over(nginx: Nginx, make_harness: Any, tmp_path: Path) -> None:
    size = 2 * SLOW_RATE
    data = content("noetag-kill", size)
    s = nginx.serve(data, prefix="noetag")
    dest = tmp_path / "out"
    log = tmp_path / "killed.log"
    proc = spawn_fetch(api(make_harness, nginx, "slow", s.listed()), dest, log)
    started(log, proc, size // 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not target(dest, s).exists()
    killed = nginx.wait_logged(s, 1, "slow")
    assert 0 < killed[0].bytes < size
    r = fetch(api(make_harness, nginx, "fast", s.listed()), dest)
    assert r.code == 0, r.output
    assert_fetched(dest, s, data)
    assert "resuming" not in r.output
    rerun = [(g.status, g.range, g.if_match, g.bytes) for g in nginx.requests(s, "fast")]
    assert rerun == [(206, "bytes=0-", "", size)], "an unpinned partial is never trusted"


@pytest.mark.parametrize("prefix", [
    "custins7001",
    "noetag",
], ids=["etag", "noetag"])
def test_file_shortened_during_the_run_starts_over(
    nginx: Nginx, make_harness: Any, tmp_path: Path, prefix: str
) -> None:
    """nginx drops a connection whose file was cut short under it; the retry from the
    offset reached asks for a range past the new end: 412 with If-Match, else 416."""
    size = 2 * SLOW_RATE
    data = content(f"shortened-{prefix}", size)
    s = nginx.serve(data, prefix=prefix)
    dest = tmp_path / "out"
    log = tmp_path / "run.log"
    proc = spawn_fetch(api(make_harness, nginx, "slow", s.listed()), dest, log, "--connections", "1")
    started(log, proc, size // 5)
    new = data[: MiB]
    os.truncate(s.path, len(new))  # in place: nginx is reading this very file
    r = ended(proc, log)
    cut = nginx.requests(s, "slow")
    assert len(cut) >= 2 and cut[0].status == 206 and cut[0].bytes < size, cut
    # The retry asked from where the first answer broke off, past the new end.
    assert (cut[1].status, cut[1].if_match) == ((416, "") if prefix == "noetag" else (412, cut[0].etag))
    assert range_start(cut[1]) > len(new), cut
    assert r.code == 0, r.output
    # The API's Checksum follows the file (the emulator computes it from the file now).
    assert_fetched(dest, s, new)
    assert cut[-1].range == "bytes=0-" and cut[-1].bytes == len(new)
