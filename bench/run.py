#!/usr/bin/env python3
"""fetcher's performance benchmark: fetcher vs curl vs aria2c against a local nginx.

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--out bench/RESULTS.md]

What it does (see bench/README.md for what the figures mean):

1. Installs nginx, curl and aria2c with apt-get when they are missing (needs root).
2. Generates random files in a temporary folder (``--workdir``, default under /tmp), lays
   them out under an nginx root exactly where the emulator's signed URLs point
   (``/<bucket>/<prefix>/<backup id>/<name>``), and starts its own nginx (loopback only,
   ``sendfile on``, ``access_log off``; query strings are ignored, so the signed URLs work)
   and ``fetcher emulator`` with ``--public-base-url`` at that nginx. The emulator reads
   each file once for its true CRC64, which the API then returns as the set's Checksum.
3. Runs, alternating the tools (A B C A B C ...), each run into a fresh output folder that
   is deleted afterwards, with ``sync`` between runs:

   * regime1: 4 x 512 MiB + 1 x 1 GiB over unlimited loopback; ``fetcher fetch`` (listing,
     CRC64, SHA-256, fsync, manifest included) vs ``curl`` (4 at once via xargs) vs
     ``aria2c -j4 -x1``;
   * regime2: one 512 MiB file, nginx ``limit_rate 50m`` per connection; ``fetcher fetch
     --connections 4`` vs single-connection ``curl`` vs ``aria2c -x4 -s4``;
   * memory: peak RSS of ``fetcher fetch`` of one 1 GiB and one 4 GiB file;
   * listing: ``fetcher list --format json`` of 10,000 backup sets;
   * crc64: CRC-64/XZ throughput of the fast backend vs crcmod on 256 MiB (in-process).

4. Prints a Markdown table (median/min/max of wall and CPU seconds per tool), the targets
   of the performance issue with the measured values, and one final line of ratios.

Wall time is measured around the client process; CPU seconds and peak RSS come from
``wait4()`` on it (user + system time of the process and the children it waited for; peak
RSS of the process itself -- the same numbers ``/usr/bin/time -v`` prints). nginx's and the
emulator's own CPU is not counted. Exit status: 0 when every run succeeded (targets are
reported, not enforced, unless ``--strict``), 1 when a run failed or (``--strict``) a target
was missed, 4 when a prerequisite (nginx, curl, aria2c) is missing and cannot be installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
EXIT_PREREQ = 4
BENCHMARKS = ("regime1", "regime2", "memory", "listing", "crc64")

BUCKET = "fetcher-bench"
PREFIX_FAST = "custins1"  # served without a rate limit
PREFIX_CAPPED = "custins2"  # served with nginx limit_rate per connection

TARGETS_DOC = {
    "regime1 fetcher/curl": "<= 1.25",
    "regime1 fetcher/aria2c": "<= 0.6",
    "regime2 fetcher/aria2c": "<= 1.0",
    "regime2 fetcher/curl": "<= 0.3",
}


# ----------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    regime1: tuple[int, ...]
    regime2: int
    memory: tuple[int, int]
    listing: int
    kernel: int


FULL = Sizes((512 * MiB,) * 4 + (1 * GiB,), 512 * MiB, (1 * GiB, 4 * GiB), 10_000, 256 * MiB)
QUICK = Sizes((8 * MiB,) * 4 + (16 * MiB,), 64 * MiB, (32 * MiB, 128 * MiB), 1_000, 16 * MiB)


def human(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            v = n / size
            return f"{v:g} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{int(n)} B"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


class PrereqError(BenchError):
    pass


# ----------------------------------------------------------------------------- processes

_current: subprocess.Popen[bytes] | None = None  # the measured client, killed on Ctrl-C


@dataclass
class Sample:
    wall: float
    cpu: float
    maxrss: int  # bytes
    sync_after: float = 0.0


def run_measured(argv: list[str], env: dict[str, str], *, stdout: Path | None = None,
                 stderr: Path, cwd: Path) -> tuple[int, Sample]:
    """Run one client to completion; wall clock around it, rusage from wait4()."""
    global _current
    out = open(stdout, "wb") if stdout is not None else subprocess.DEVNULL
    err = open(stderr, "wb")
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)
        _current = proc
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C, SIGTERM: the client goes too
            stop_process(proc, argv[0], group=True)
            raise
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        _current = None
        if stdout is not None:
            out.close()  # type: ignore[union-attr]
        err.close()
    return proc.returncode, Sample(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * KiB)


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def stop_process(proc: subprocess.Popen[Any] | None, name: str, group: bool = False) -> None:
    """SIGTERM (to its own process group when it leads one), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
    log(f"could not stop {name} (pid {proc.pid})")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- prerequisites


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.exists()), None
    )


def ensure_tools(install: bool) -> dict[str, str]:
    wanted = {"nginx": "nginx-light", "curl": "curl", "aria2c": "aria2"}
    missing = [pkg for tool, pkg in wanted.items() if find_tool(tool) is None]
    if missing and install:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise PrereqError(f"missing {', '.join(missing)}; install them (apt-get needs root)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", *missing]
        log(f"installing {' '.join(missing)} with apt-get")
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if r.returncode:
                raise PrereqError(f"apt-get install {' '.join(missing)} failed: {r.stderr.strip()[-300:]}")
    found = {tool: find_tool(tool) for tool in wanted}
    absent = [t for t, p in found.items() if p is None]
    if absent:
        raise PrereqError(f"missing {', '.join(absent)} (run without --no-install, as root, to install)")
    return {t: str(p) for t, p in found.items()}


def tool_versions(tools: dict[str, str]) -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]

    out = {
        "nginx": first_line([tools["nginx"], "-v"]).replace("nginx version: ", ""),
        "curl": " ".join(first_line([tools["curl"], "--version"]).split()[:2]),
        "aria2c": first_line([tools["aria2c"], "--version"]).replace("aria2 version ", "aria2 "),
        "python": platform.python_version(),
    }
    try:
        from importlib.metadata import version

        for dist in ("fetcher", "aiohttp", "fastcrc", "crcmod"):
            try:
                out[dist] = version(dist)
            except Exception:
                out[dist] = "not installed"
    except ImportError:
        pass
    return out


# ----------------------------------------------------------------------------- the set-up


@dataclass
class RemoteFile:
    """A file behind a signed URL, as the API lists it."""

    name: str
    url: str
    size: int


@dataclass
class Setup:
    work: Path
    sizes: Sizes
    rate: str
    tools: dict[str, str]
    fetcher: list[str]
    code: Path  # the frozen copy of the fetcher package every process imports
    env: dict[str, str] = field(default_factory=dict)
    nginx: subprocess.Popen[bytes] | None = None
    emulator: subprocess.Popen[bytes] | None = None
    nginx_port: int = 0
    dest_root: Path | None = None  # where the tools write (default: the scratch folder)
    instances: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    remote: dict[str, list[RemoteFile]] = field(default_factory=dict)
    run_no: int = 0

    # -------------------------------------------------------------- generated files

    def generate(self, name: str, size: int) -> Path:
        path = self.work / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        chunk = 8 * MiB
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(chunk, left)
                f.write(os.urandom(n))
                left -= n
        return path

    def publish(self, src: Path, prefix: str, backup_id: str, name: str) -> None:
        """Hard-link a generated file to where nginx serves the emulator's URL path."""
        dst = self.work / "www" / BUCKET / prefix / backup_id / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(src, dst)

    def data_set(self, wanted: set[str]) -> dict[str, Any]:
        s = self.sizes
        def source(key: str, size: int) -> Path:
            # One generated file per distinct role; hard links reuse it (same page cache).
            p = self.work / "src" / key
            if not p.exists():
                log(f"generating {key} ({human(size)})")
                self.generate(key, size)
            return p

        backup_no = 400000000
        start = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)

        def backup(src: Path, name: str, prefix: str) -> dict[str, Any]:
            nonlocal backup_no, start
            backup_no += 1
            start -= dt.timedelta(hours=1)
            bid = str(backup_no)
            self.publish(src, prefix, bid, name)
            return {
                "BackupId": bid,
                "BackupStatus": "Success",
                "BackupType": "FullBackup",
                "BackupMethod": "Physical",
                "BackupMode": "Automated",
                "BackupStartTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "BackupEndTime": (start + dt.timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "IsAvail": 1,
                "StorageClass": "0",
                "object": {"name": name, "file": str(src), "prefix": prefix},
            }

        instances: list[dict[str, Any]] = []

        def instance(iid: str, backups: list[dict[str, Any]], **extra: Any) -> None:
            instances.append({"DBInstanceId": iid, "Engine": "MySQL", "EngineVersion": "8.0",
                              "backups": backups, **extra})

        if "regime1" in wanted:
            backups = []
            for i, size in enumerate(s.regime1, 1):
                src = source(f"r1-{i}-{size // MiB}M.bin", size)
                backups.append(backup(src, f"hins_r1_{i}_{size // MiB}M.xb", PREFIX_FAST))
            instance("rm-bench-regime1", backups)
        if "regime2" in wanted:
            # The same bytes as a regime-1 file where sizes allow (hard link, one page cache).
            same = [i for i, size in enumerate(s.regime1, 1) if size == s.regime2 and "regime1" in wanted]
            key = f"r1-{same[0]}-{s.regime2 // MiB}M.bin" if same else f"r2-{s.regime2 // MiB}M.bin"
            src = source(key, s.regime2)
            instance("rm-bench-regime2", [backup(src, f"hins_r2_{s.regime2 // MiB}M.xb", PREFIX_CAPPED)])
        if "memory" in wanted:
            for size in s.memory:
                same = [i for i, sz in enumerate(s.regime1, 1) if sz == size and "regime1" in wanted]
                key = f"r1-{same[0]}-{size // MiB}M.bin" if same else f"mem-{size // MiB}M.bin"
                src = source(key, size)
                instance(f"rm-bench-mem{size // MiB}m",
                         [backup(src, f"hins_mem_{size // MiB}M.xb", PREFIX_FAST)])
        if "listing" in wanted:
            instance("rm-bench-list", [], synthetic={"count": s.listing, "size": 1024})
        return {
            "region": "cn-hangzhou",
            "bucket": BUCKET,
            "credentials": [{"access_key_id": "LTAIbench" + secrets.token_hex(6),
                             "access_key_secret": secrets.token_urlsafe(24)}],
            "instances": instances,
        }

    # -------------------------------------------------------------- nginx

    def start_nginx(self) -> None:
        conf_dir = self.work / "nginx"
        for sub in ("logs", "tmp"):
            (conf_dir / sub).mkdir(parents=True, exist_ok=True)
        self.nginx_port = free_port()
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "\n".join(
            f"    {kind}_temp_path {conf_dir / 'tmp' / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = f"""# fetcher bench: generated, loopback only
{user}worker_processes auto;
daemon off;
master_process on;
pid {conf_dir / 'nginx.pid'};
error_log {conf_dir / 'logs' / 'error.log'} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    default_type application/octet-stream;
    server_tokens off;
{temp}
    server {{
        listen 127.0.0.1:{self.nginx_port};
        root {self.work / 'www'};
        location / {{ }}
        # Regime 2: a per-connection cap, as on a long-distance or per-connection-capped link.
        location ^~ /{BUCKET}/{PREFIX_CAPPED}/ {{ limit_rate {self.rate}; }}
    }}
}}
"""
        conf_path = conf_dir / "nginx.conf"
        conf_path.write_text(conf)
        argv = [self.tools["nginx"], "-p", str(conf_dir), "-c", str(conf_path),
                "-e", str(conf_dir / "logs" / "error.log")]
        self.nginx = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=open(conf_dir / "logs" / "stderr.log", "wb"),
                                      start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.nginx.poll() is not None:
                raise BenchError("nginx exited at start:\n" + tail(conf_dir / "logs" / "error.log")
                                 + tail(conf_dir / "logs" / "stderr.log"))
            try:
                with socket.create_connection(("127.0.0.1", self.nginx_port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise BenchError("nginx did not start listening within 15 s")
        log(f"nginx on 127.0.0.1:{self.nginx_port} (pid {self.nginx.pid}), root {self.work / 'www'}")

    # -------------------------------------------------------------- the emulator

    def start_emulator(self, doc: dict[str, Any]) -> None:
        data = self.work / "dataset.json"
        data.write_text(json.dumps(doc, indent=1))
        ready = self.work / "emulator-ready.json"
        base = f"http://127.0.0.1:{self.nginx_port}"
        argv = [*self.fetcher, "emulator", "--data", str(data), "--port", "0",
                "--ready-file", str(ready), "--no-internal", "--url-ttl", "86400",
                "--public-base-url", base, "--internal-base-url", base]
        self.emulator = subprocess.Popen(
            argv, env=self.base_env(), cwd=self.work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.work / "emulator.log", "wb"), start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.emulator.poll() is not None:
                raise BenchError("the emulator exited at start:\n" + tail(self.work / "emulator.log"))
            if time.monotonic() > deadline:
                raise BenchError("the emulator did not become ready within 60 s")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.env = self.base_env()
        self.env.update({
            "FETCHER_ENDPOINT": info["endpoint"],
            "ALIBABA_CLOUD_ACCESS_KEY_ID": info["access_key_id"],
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": info["access_key_secret"],
            "ALIBABA_CLOUD_REGION_ID": info["region"],
        })
        log(f"emulator at {info['endpoint']} (pid {self.emulator.pid}), URLs -> {base}")

    def base_env(self) -> dict[str, str]:
        """The caller's environment without proxies, credentials or fetcher settings."""
        drop = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy")
        env = {
            k: v for k, v in os.environ.items()
            if k.lower() not in drop and not k.startswith(("ALIBABA_CLOUD_", "FETCHER_"))
            and k not in ("PYTHONPATH", "PYTHONHOME")
        }
        env["PYTHONPATH"] = str(self.code)
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        env.update({"HOME": str(home), "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
        return env

    def list_instance(self, iid: str) -> list[dict[str, Any]]:
        """``fetcher list --format json`` (untimed): URLs for curl/aria2c; warms the CRC64s."""
        out = self.work / f"list-{iid}.json"
        err = self.work / f"list-{iid}.err"
        code, _ = run_measured([*self.fetcher, "list", "--instance", iid, "--format", "json"],
                               self.env, stdout=out, stderr=err, cwd=self.work)
        if code != 0:
            raise BenchError(f"fetcher list {iid} exited {code}:\n{tail(err)}")
        sets: list[dict[str, Any]] = json.loads(out.read_text())
        out.unlink()
        err.unlink()
        return sets

    def warm(self, doc: dict[str, Any]) -> None:
        for inst in doc["instances"]:
            iid = inst["DBInstanceId"]
            t0 = time.perf_counter()
            sets = self.list_instance(iid)
            log(f"warm listing of {iid}: {len(sets)} set(s) in {time.perf_counter() - t0:.1f} s")
            files = []
            for b in sets:
                url = b.get("BackupDownloadURL") or ""
                if url:
                    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
                    files.append(RemoteFile(name, url, int(b["BackupSize"])))
            self.remote[iid] = files
        # Prove nginx serves what the API points at (path layout, query string ignored).
        for iid, files in self.remote.items():
            if files and iid != "rm-bench-list":
                req = urllib.request.Request(files[0].url, headers={"Range": "bytes=0-0"})
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(req, timeout=10) as resp:
                    if resp.status not in (200, 206):
                        raise BenchError(f"nginx answered {resp.status} for {files[0].name}")

    # -------------------------------------------------------------- runs

    def out_dir(self, label: str) -> Path:
        self.run_no += 1
        d = (self.dest_root or self.work / "out") / f"{self.run_no:03d}-{label}"
        d.mkdir(parents=True)
        return d

    def finish_run(self, out: Path, sample: Sample) -> None:
        """sync (timed: what the tool left unwritten), delete the outputs, sync again."""
        t0 = time.perf_counter()
        os.sync()
        sample.sync_after = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        os.sync()

    def check_files(self, out: Path, files: list[RemoteFile], tool: str, err: Path) -> None:
        for f in files:
            p = out / f.name
            got = p.stat().st_size if p.exists() else None
            if got != f.size:
                raise BenchError(f"{tool}: {f.name} is {got} bytes, expected {f.size}\n{tail(err)}")

    def run_fetcher(self, iid: str, extra: list[str] = (), *, label: str,  # type: ignore[assignment]
                    prefix: list[str] = ()) -> Sample:  # type: ignore[assignment]
        out = self.out_dir(label)
        err = out.with_suffix(".err")
        argv = [*prefix, *self.fetcher, "fetch", "--instance", iid, "--dest", str(out),
                "--network", "public", "--no-progress", *extra]
        code, sample = run_measured(argv, self.env, stdout=out.with_suffix(".out"), stderr=err,
                                    cwd=self.work)
        if code != 0:
            raise BenchError(f"fetcher fetch {iid} exited {code}:\n{tail(err)}")
        manifest = json.loads((out / "manifest.json").read_text())
        statuses = [f["status"] for f in manifest["files"]]
        want = len(self.remote[iid])
        if statuses.count("verified") != want:
            raise BenchError(f"fetcher: expected {want} verified file(s), got {statuses}\n{tail(err)}")
        self.finish_run(out, sample)
        for p in (err, out.with_suffix(".out")):
            p.unlink(missing_ok=True)
        return sample

    def run_curl(self, iid: str, parallel: int, *, label: str) -> Sample:
        out = self.out_dir(label)
        err = out.with_suffix(".err")
        files = self.remote[iid]
        curl = [self.tools["curl"], "-sS", "--fail", "--noproxy", "*"]
        if parallel > 1 or len(files) > 1:
            lst = out.with_suffix(".xargs")
            lst.write_text("".join(f"-o {out / f.name} {f.url}\n" for f in files))
            argv = ["xargs", "-a", str(lst), "-P", str(parallel), "-n", "3", *curl]
        else:
            argv = [*curl, "-o", str(out / files[0].name), files[0].url]
        code, sample = run_measured(argv, self.env, stderr=err, cwd=self.work)
        if code != 0:
            raise BenchError(f"curl exited {code}:\n{tail(err)}")
        self.check_files(out, files, "curl", err)
        self.finish_run(out, sample)
        for p in (err, out.with_suffix(".xargs")):
            p.unlink(missing_ok=True)
        return sample

    def run_aria2c(self, iid: str, opts: list[str], *, label: str) -> Sample:
        out = self.out_dir(label)
        err = out.with_suffix(".err")
        files = self.remote[iid]
        lst = out.with_suffix(".aria2-input")
        lst.write_text("".join(f"{f.url}\n  out={f.name}\n" for f in files))
        argv = [self.tools["aria2c"], *opts, "-i", str(lst), "-d", str(out),
                "--file-allocation=falloc", "--allow-overwrite=true", "--auto-file-renaming=false",
                "--no-conf", "--quiet=true", "--summary-interval=0", "--all-proxy=",
                "--min-split-size=16M"]
        code, sample = run_measured(argv, self.env, stderr=err, cwd=self.work)
        if code != 0:
            raise BenchError(f"aria2c exited {code}:\n{tail(err)}")
        self.check_files(out, files, "aria2c", err)
        self.finish_run(out, sample)
        for p in (err, lst):
            p.unlink(missing_ok=True)
        return sample

    def run_list(self, iid: str, *, label: str) -> Sample:
        out = self.work / "out" / f"{label}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        err = out.with_suffix(".err")
        code, sample = run_measured([*self.fetcher, "list", "--instance", iid, "--format", "json"],
                                    self.env, stdout=out, stderr=err, cwd=self.work)
        if code != 0:
            raise BenchError(f"fetcher list exited {code}:\n{tail(err)}")
        n = len(json.loads(out.read_text()))
        if n != self.sizes.listing:
            raise BenchError(f"fetcher list printed {n} sets, expected {self.sizes.listing}")
        out.unlink()
        err.unlink()
        return sample


# ----------------------------------------------------------------------------- results


@dataclass
class Row:
    bench: str
    tool: str
    nbytes: int = 0  # payload per run (for MiB/s)
    unit: str = "MiB/s"
    samples: list[Sample] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return float(statistics.median(getattr(s, attr) for s in self.samples))

    def rng(self, attr: str) -> tuple[float, float]:
        vals = [getattr(s, attr) for s in self.samples]
        return min(vals), max(vals)


class Results:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}

    def row(self, bench: str, tool: str, nbytes: int = 0, unit: str = "MiB/s") -> Row:
        key = (bench, tool)
        if key not in self.rows:
            self.rows[key] = Row(bench, tool, nbytes, unit)
        return self.rows[key]

    def get(self, bench: str, tool: str) -> Row | None:
        r = self.rows.get((bench, tool))
        return r if r is not None and r.samples else None

    def table(self) -> str:
        head = ("| benchmark | tool | runs | wall s median | wall min | wall max | CPU s median "
                "| CPU min | CPU max | throughput | peak RSS MiB | sync after s |")
        lines = [head, "|" + "---|" * 12]
        for r in self.rows.values():
            if not r.samples:
                continue
            wmin, wmax = r.rng("wall")
            cmin, cmax = r.rng("cpu")
            wall = r.med("wall")
            if r.unit == "MiB/s":
                thr = f"{r.nbytes / MiB / wall:,.0f} MiB/s" if r.nbytes else "-"
            else:
                thr = f"{r.nbytes / wall:,.0f} {r.unit}"
            rss = r.med("maxrss")
            rss_s = f"{rss / MiB:.0f}" if rss else "-"
            sync = f"{r.med('sync_after'):.2f}" if r.bench in ("regime1", "regime2", "memory") else "-"
            lines.append(
                f"| {r.bench} | {r.tool} | {len(r.samples)} | {wall:.2f} | {wmin:.2f} | {wmax:.2f} "
                f"| {r.med('cpu'):.2f} | {cmin:.2f} | {cmax:.2f} | {thr} | {rss_s} | {sync} |"
            )
        return "\n".join(lines)

    def ratios(self, sizes: Sizes) -> tuple[str, list[tuple[str, str, str, bool | None]]]:
        """The final ratio line and the targets table (name, measured, goal, met)."""
        parts: list[str] = []
        targets: list[tuple[str, str, str, bool | None]] = []

        def wall(bench: str, tool: str) -> float | None:
            r = self.get(bench, tool)
            return r.med("wall") if r else None

        def ratio(bench: str, a: str, b: str, label: str, goal: float | None, le: bool = True) -> None:
            x, y = wall(bench, a), wall(bench, b)
            if x is None or y is None:
                return
            v = x / y
            if bench not in parts:
                parts.append(bench)
            parts.append(f"{label}={v:.2f}")
            if goal is not None:
                ok = v <= goal if le else v >= goal
                targets.append((f"{bench} wall {label}", f"{v:.2f}", f"{'<=' if le else '>='} {goal}", ok))

        if self.get("regime1", "fetcher"):
            ratio("regime1", "fetcher", "curl -P4", "fetcher/curl", 1.25)
            ratio("regime1", "fetcher", "aria2c -j4 -x1", "fetcher/aria2c", 0.6)
            # fetcher's output is on disk when it exits (fsync before the final name); curl's
            # is not until the sync after it. Same durability: tool + that sync.
            f, c = self.get("regime1", "fetcher"), self.get("regime1", "curl -P4")
            if f and c:
                durable = statistics.median(s.wall + s.sync_after for s in f.samples) / statistics.median(
                    s.wall + s.sync_after for s in c.samples)
                parts.append(f"fetcher/(curl+sync)={durable:.2f}")
        if self.get("regime2", "fetcher --connections 4"):
            ratio("regime2", "fetcher --connections 4", "aria2c -x4 -s4", "fetcher/aria2c", 1.0)
            ratio("regime2", "fetcher --connections 4", "curl", "fetcher/curl", 0.3)
        small, big = sizes.memory
        r1 = self.get("memory", f"fetcher {human(small)}")
        r4 = self.get("memory", f"fetcher {human(big)}")
        if r1 and r4:
            a, b = max(s.maxrss for s in r1.samples), max(s.maxrss for s in r4.samples)
            tag1, tag4 = human(small).replace(" ", ""), human(big).replace(" ", "")
            parts += ["memory", f"rss{tag1}={a / MiB:.0f}MiB", f"rss{tag4}={b / MiB:.0f}MiB",
                      f"rss{tag4}/rss{tag1}={b / a:.2f}"]
            targets.append((f"memory peak RSS {human(small)} (max of runs)", f"{a / MiB:.0f} MiB", "<= 100 MiB", a <= 100 * MiB))
            targets.append((f"memory peak RSS {human(big)} (max of runs)", f"{b / MiB:.0f} MiB", "<= 100 MiB", b <= 100 * MiB))
            targets.append((f"memory RSS {human(big)} / {human(small)}", f"{b / a:.2f}",
                            "within 10 % (0.90 to 1.10)", abs(b / a - 1) <= 0.10))
        rl = self.get("listing", "fetcher list --format json")
        if rl:
            w = rl.med("wall")
            parts += ["listing", f"{sizes.listing}sets={w:.2f}s"]
            targets.append((f"listing {sizes.listing:,} sets wall (median)", f"{w:.2f} s", "<= 2 s", w <= 2.0))
        rf, rc = self.get("crc64", "fast backend"), self.get("crc64", "crcmod")
        if rf and rc:
            v = rc.med("wall") / rf.med("wall")
            parts += ["crc64", f"fast/crcmod={v:.1f}x"]
            targets.append(("crc64 kernel speed-up vs crcmod", f"{v:.1f}x", ">= 20x", v >= 20))
        return " ".join(parts), targets


def targets_table(targets: list[tuple[str, str, str, bool | None]]) -> str:
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for name, measured, goal, ok in targets:
        lines.append(f"| {name} | {measured} | {goal} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- machine


def sh(argv: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info() -> dict[str, str]:
    model = ""
    for line in sh(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
            break
    mem = ""
    for line in sh(["free", "-h"]).splitlines():
        if line.startswith("Mem:"):
            mem = line.split()[1]
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": sh(["nproc"]) or str(os.cpu_count()),
        "cpu": model or platform.processor() or "?",
        "memory": mem or "?",
        "kernel": platform.release(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def fs_type(path: Path) -> str:
    """The file system type of ``path`` (from /proc/mounts), e.g. ext4 or tmpfs."""
    best, kind = "", "?"
    try:
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")):
                if len(parts[1]) >= len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def disk_write_speed(folder: Path, size: int) -> float:
    """MiB/s of writing ``size`` bytes and fdatasync-ing them, as ``dd conv=fdatasync``."""
    path = folder / "disk-speed.tmp"
    buf = os.urandom(8 * MiB)
    os.sync()
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, buf[: min(len(buf), left)])
        os.fdatasync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    path.unlink()
    os.sync()
    return size / MiB / elapsed


# ----------------------------------------------------------------------------- code under test


def snapshot_code(rev: str, dest: Path) -> str:
    """Freeze the fetcher package under test into ``dest``; say which code it is.

    Other people may edit the working tree while a run takes minutes: every fetcher process
    of the run (the emulator included) and the CRC64 kernel import this copy instead, via
    PYTHONPATH, so one run measures one version of the code.
    """
    dest.mkdir(parents=True)
    head = sh(["git", "rev-parse", "--short", "HEAD"], ROOT) or "?"
    if rev == "worktree":
        shutil.copytree(ROOT / "fetcher", dest / "fetcher",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        dirty = [ln for ln in sh(["git", "status", "--porcelain", "--", "fetcher"], ROOT).splitlines() if ln]
        if dirty:
            return f"{head} + the working tree's {len(dirty)} uncommitted change(s) under fetcher/"
        return f"{head} (working tree clean under fetcher/)"
    commit = sh(["git", "rev-parse", "--short", "--verify", "--quiet", rev + "^{commit}"], ROOT)
    if not commit:
        raise BenchError(f"--code {rev}: not a git revision of {ROOT}")
    import io
    import tarfile

    tar = subprocess.run(["git", "archive", "--format=tar", commit, "fetcher"], cwd=ROOT,
                         capture_output=True)
    if tar.returncode:
        raise BenchError(f"git archive {commit}: {tar.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        t.extractall(dest, filter="data")
    return commit if commit == head else f"{commit} (HEAD is {head})"


def check_code(setup: Setup) -> None:
    """Every process must import the frozen copy, not the editable install."""
    r = subprocess.run([sys.executable, "-c", "import fetcher; print(fetcher.__file__)"],
                       env=setup.base_env(), cwd=setup.work, capture_output=True, text=True)
    where = r.stdout.strip()
    if r.returncode or not where.startswith(str(setup.code)):
        raise BenchError(f"fetcher imports from {where or r.stderr.strip()}, not from {setup.code}")


# ----------------------------------------------------------------------------- benchmarks


def bench_kernel(results: Results, size: int, rounds: int, code: Path) -> None:
    sys.path.insert(0, str(code))
    from fetcher import checksum

    if not checksum.__file__ or not checksum.__file__.startswith(str(code)):
        raise BenchError(f"crc64: imported {checksum.__file__}, not the copy under test")

    data = os.urandom(size)
    fast = results.row("crc64", "fast backend", size)
    ref = results.row("crc64", "crcmod", size)
    if checksum.BACKEND == "crcmod":
        log("crc64: the fast backend is not importable; 'fast backend' is crcmod too")
    values = set()
    for _ in range(rounds):
        for row, fn, passes in ((fast, checksum.crc64, 5), (ref, checksum.crc64_reference, 2)):
            # The best of a few passes: a single 40 ms pass is at the mercy of whatever
            # else the shared machine does in those 40 ms.
            best: Sample | None = None
            for _ in range(passes):
                c0, t0 = time.thread_time(), time.perf_counter()
                values.add(fn(data))
                wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
                if best is None or wall < best.wall:
                    best = Sample(wall, cpu, 0)
            assert best is not None
            row.samples.append(best)
    if len(values) != 1:
        raise BenchError(f"crc64: the backends disagree: {values}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small files (regime1 4x8 MiB + 16 MiB, regime2 64 MiB, memory "
                         "32/128 MiB, 1,000 sets, 16 MiB kernel), 1 round: a smoke run")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per benchmark (default 3, --quick 1)")
    ap.add_argument("--only", default=",".join(BENCHMARKS),
                    help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--code", default="worktree", metavar="worktree|REV",
                    help="code to measure: a copy of the working tree's fetcher/ taken at the start "
                         "(default) or of a git revision (e.g. HEAD), so edits made during the run "
                         "do not mix in")
    ap.add_argument("--rate", default="50m", help="nginx limit_rate per connection in regime 2 (default 50m)")
    ap.add_argument("--out", type=Path, help="also write the results (with date, machine, commit) here")
    ap.add_argument("--workdir", type=Path, help="parent folder for the scratch folder (default: the "
                    "system temp dir); generated files and outputs live there, on one disk")
    ap.add_argument("--dest-dir", type=Path, metavar="DIR",
                    help="where every tool writes its output (default: the scratch folder, on "
                         "the same disk as the sources). A tmpfs such as /dev/shm takes the "
                         "disk out of the comparison: fetcher fsyncs every file before its "
                         "final name, curl never does, so on a slow disk the flush decides")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get missing tools")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="also record one regime-1 fetcher run with py-spy into DIR "
                         "(profile.svg flame graph, profile.txt collapsed stacks, summary)")
    ap.add_argument("--profile-native", action="store_true",
                    help="py-spy --native as well (C frames; much more overhead)")
    args = ap.parse_args(argv)

    wanted = {b.strip() for b in args.only.split(",") if b.strip()}
    unknown = wanted - set(BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}")
    if args.profile:
        wanted.add("regime1")
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < 1:
        ap.error("--rounds must be at least 1")

    try:
        tools = ensure_tools(not args.no_install)
    except PrereqError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_PREREQ

    parent = (args.workdir or Path(tempfile.gettempdir())).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    # Generated files (regime 2 and memory reuse a regime-1 file of the same size) plus the
    # largest output that exists at one time.
    r1 = set(sizes.regime1) if "regime1" in wanted else set()
    sources = sum(sizes.regime1) if r1 else 0
    outputs = sum(sizes.regime1) if r1 else 0
    for bench, extra in (("regime2", [sizes.regime2]), ("memory", list(sizes.memory))):
        if bench in wanted:
            sources += sum(x for x in extra if x not in r1)
            outputs = max([outputs, *extra])
    need = sources + outputs
    free = shutil.disk_usage(parent).free
    if need + 1 * GiB > free:
        print(f"bench: {parent} has {human(free)} free; this run needs about {human(need + GiB)}",
              file=sys.stderr)
        return 1

    fetcher_exe = Path(sys.executable).with_name("fetcher")
    fetcher = [str(fetcher_exe)] if fetcher_exe.exists() else [sys.executable, "-m", "fetcher"]
    work = Path(tempfile.mkdtemp(prefix="fetcher-bench-", dir=parent))
    work.chmod(0o755)
    setup = Setup(work, sizes, args.rate, tools, fetcher, work / "code")
    if args.dest_dir:
        setup.dest_root = Path(tempfile.mkdtemp(prefix="fetcher-bench-out-", dir=args.dest_dir.resolve()))
    results = Results()
    versions = tool_versions(tools)
    machine = machine_info()
    failed: str | None = None
    profile_summary = ""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C must clean up even where SIGINT came in ignored (e.g. started with & by a script).
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    log(f"scratch folder {work} ({human(need)} of files and outputs at most)")
    try:
        machine["commit"] = snapshot_code(args.code, setup.code)
        check_code(setup)
        log(f"code under test: {machine['commit']}")
        speed = disk_write_speed(work, 256 * MiB if args.quick else 1 * GiB)
        machine["disk"] = f"{speed:,.0f} MiB/s"
        machine["dest"] = (f"{args.dest_dir} ({fs_type(args.dest_dir)})" if args.dest_dir
                           else f"the scratch folder ({fs_type(work)})")
        log(f"scratch disk: {machine['disk']} sequential write + fdatasync")
        doc = setup.data_set(wanted)
        os.sync()
        setup.start_nginx()
        setup.start_emulator(doc)
        setup.warm(doc)

        if "regime1" in wanted:
            iid = "rm-bench-regime1"
            total = sum(sizes.regime1)
            tools_r1: list[tuple[str, Callable[[str], Sample]]] = [
                ("fetcher", lambda lb: setup.run_fetcher(iid, label=lb)),
                ("curl -P4", lambda lb: setup.run_curl(iid, 4, label=lb)),
                ("aria2c -j4 -x1", lambda lb: setup.run_aria2c(iid, ["-j4", "-x1"], label=lb)),
            ]
            alternate(results, "regime1", tools_r1, total, rounds)
        if "regime2" in wanted:
            iid = "rm-bench-regime2"
            tools_r2: list[tuple[str, Callable[[str], Sample]]] = [
                ("fetcher --connections 4",
                 lambda lb: setup.run_fetcher(iid, ["--connections", "4"], label=lb)),
                ("curl", lambda lb: setup.run_curl(iid, 1, label=lb)),
                ("aria2c -x4 -s4", lambda lb: setup.run_aria2c(iid, ["-x4", "-s4"], label=lb)),
            ]
            alternate(results, "regime2", tools_r2, sizes.regime2, rounds)
        if "memory" in wanted:
            tools_mem = [
                (f"fetcher {human(size)}",
                 (lambda s: lambda lb: setup.run_fetcher(f"rm-bench-mem{s // MiB}m", label=lb))(size))
                for size in sizes.memory
            ]
            # Bytes differ per row; alternate() takes one size, so fix them up after.
            alternate(results, "memory", tools_mem, 0, rounds)
            for size in sizes.memory:
                results.row("memory", f"fetcher {human(size)}").nbytes = size
        if "listing" in wanted:
            row = results.row("listing", "fetcher list --format json", sizes.listing, "sets/s")
            for i in range(rounds):
                log(f"listing round {i + 1}/{rounds}")
                row.samples.append(setup.run_list("rm-bench-list", label=f"list-{i}"))
        if "crc64" in wanted:
            log(f"crc64 kernel on {human(sizes.kernel)}, {rounds} round(s)")
            bench_kernel(results, sizes.kernel, rounds, setup.code)
        if args.profile:
            profile_summary = profile_run(setup, args.profile, args.profile_native)
    except KeyboardInterrupt:
        failed = "interrupted"
    except BenchError as exc:
        failed = str(exc)
    except Exception as exc:  # a bug in the bench: still clean up and print what ran
        import traceback

        traceback.print_exc()
        failed = f"{exc.__class__.__name__}: {exc}"
    finally:
        if _current is not None:
            stop_process(_current, "client", group=True)
        stop_process(setup.emulator, "emulator", group=True)
        stop_process(setup.nginx, "nginx", group=True)
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if setup.dest_root is not None:
                shutil.rmtree(setup.dest_root, ignore_errors=True)

    table = results.table()
    line, targets = results.ratios(sizes)
    print()
    print(table)
    print()
    if targets:
        print(targets_table(targets))
        print()
    if profile_summary:
        print(profile_summary)
        print()
    if failed:
        print(f"bench: FAILED: {failed}", file=sys.stderr)
    if args.out and not failed:
        args.out = args.out.resolve()
        write_results(args.out, args, sizes, rounds, machine, versions, table, targets, line,
                      profile_summary)
        log(f"wrote {args.out}")
    print(line, flush=True)
    if failed:
        return 130 if failed == "interrupted" else 1
    if args.strict and any(ok is False for *_, ok in targets):
        return 1
    return 0


def alternate(results: Results, bench: str, tools: list[tuple[str, Callable[[str], Sample]]],
              nbytes: int, rounds: int) -> None:
    """A B C A B C ...: each round runs every tool once, in the same order."""
    for name, _ in tools:
        results.row(bench, name, nbytes)
    for i in range(rounds):
        for name, fn in tools:
            log(f"{bench} round {i + 1}/{rounds}: {name}")
            sample = fn(f"{bench}-{name.split()[0]}-{i}")
            results.row(bench, name).samples.append(sample)
            log(f"  {sample.wall:.2f} s wall, {sample.cpu:.2f} s CPU, peak RSS "
                f"{sample.maxrss / MiB:.0f} MiB, sync after {sample.sync_after:.2f} s")


# ----------------------------------------------------------------------------- profile

# Where a sample's time went, judged from its innermost frame in fetcher's code (by the text
# of that source line) or, failing that, its innermost frame at all.
LINE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("pwrite (pwritev/pwrite syscalls)", ("pwritev", "pwrite(")),
    ("read-back for SHA-256 (pread)", ("pread",)),
    ("CRC64 (fastcrc)", ("crc64", "_fast_xz")),
    ("SHA-256", ("sha.update", "_sha.update", "hexdigest")),
    ("fsync/fdatasync", ("fdatasync", "fsync", "sync()")),
    ("aiohttp read loop (readany/StreamReader in fetcher's _stream)", ("readany", "_leftover")),
    ("waiting for PartFile._lock (SHA-256 runs under it)", ("self._lock",)),
]
FRAME_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("CRC64 (fastcrc)", ("crc64 (fetcher/checksum",)),
    ("SHA-256", ("_feed_sha", "finish_sha256")),
    ("read-back for SHA-256 (pread)", ("_catch_up",)),
    ("fsync/fdatasync", ("_checkpoint_now", "sync (fetcher/download/partfile")),
    ("aiohttp read loop (protocol, parser, StreamReader)",
     ("aiohttp/client_proto", "aiohttp/streams", "aiohttp/http_parser", "aiohttp/_http_parser",
      "aiohttp/client_reqrep", "aiohttp/connector", "aiohttp/client.py")),
    ("transfer engine Python (_stream loop, segments, progress)",
     ("fetcher/download/engine", "fetcher/progress", "fetcher/download/ratelimit",
      "fetcher/download/http")),
    ("event loop (uvloop/asyncio internals, incl. socket recv in C)",
     ("asyncio/runners", "asyncio/base_events", "asyncio/events", "asyncio/tasks",
      "asyncio/futures", "uvloop", "Runner.run")),
    ("thread pool hand-off (queue, futures)", ("concurrent/futures", "threading.py")),
    ("API listing, planning, manifest", ("fetcher/api", "fetcher/plan", "fetcher/manifest",
                                          "fetcher/fetch.py", "fetcher/cli.py")),
]


def _frame_file_line(frame: str) -> tuple[str, int] | None:
    """``func (path/to/file.py:123)`` -> (path, 123)."""
    if not frame.endswith(")") or "(" not in frame:
        return None
    loc = frame[frame.rindex("(") + 1 : -1]
    path, _, line = loc.rpartition(":")
    return (path, int(line)) if line.isdigit() else None


def classify(stack: str, code: Path, cache: dict[tuple[str, int], str]) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        loc = _frame_file_line(frame)
        if loc is None or not loc[0].startswith("fetcher/"):
            continue
        if loc not in cache:
            try:
                text = (code / loc[0]).read_text().splitlines()[loc[1] - 1]
            except (OSError, IndexError):
                text = ""
            cache[loc] = next((name for name, keys in LINE_CATEGORIES if any(k in text for k in keys)), "")
        if cache[loc]:
            return cache[loc]
        break  # the innermost fetcher frame decides; its callee frames are library code
    for frame in reversed(frames):
        for name, markers in FRAME_CATEGORIES:
            if any(m in frame for m in markers):
                return name
    if any("<module>" in f or "_find_and_load" in f for f in frames):
        return "start-up (imports)"
    return "other"


def summarize_profile(raw: Path, code: Path, sample: Sample, rate: int, flags: str) -> str:
    cats: dict[str, int] = {}
    leaf_fn: dict[str, int] = {}
    threads: dict[str, int] = {}
    cache: dict[tuple[str, int], str] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        cat = classify(stack, code, cache)
        cats[cat] = cats.get(cat, 0) + n
        root = stack.split(";")[0]
        kind = ("event loop thread (MainThread)" if "MainThread" in root else
                "I/O worker threads (fetcher-io)" if "fetcher-io" in root else "other threads")
        threads[kind] = threads.get(kind, 0) + n
        frames = [f for f in stack.split(";") if _frame_file_line(f)]
        leaf = frames[-1] if frames else stack.split(";")[-1]
        leaf_fn[leaf] = leaf_fn.get(leaf, 0) + n
    if not total:
        return "profile: no samples"
    lines = [
        f"Profile of one regime-1 `fetcher fetch` under `py-spy record {flags}` (non-idle samples "
        f"of all threads): {total} samples = {total / rate:.1f} thread-seconds busy (blocked in "
        f"a syscall counts as busy); that run took {sample.wall:.1f} s wall.",
        "",
        "| where | share of busy samples |",
        "|---|---|",
    ]
    for name, n in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {100 * n / total:.1f} % |")
    lines += ["", "| thread | share of busy samples |", "|---|---|"]
    for name, n in sorted(threads.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {100 * n / total:.1f} % |")
    lines += ["", "| innermost Python frame | share |", "|---|---|"]
    for name, n in sorted(leaf_fn.items(), key=lambda kv: -kv[1])[:20]:
        lines.append(f"| `{name}` | {100 * n / total:.1f} % |")
    return "\n".join(lines)


def profile_run(setup: Setup, outdir: Path, native: bool) -> str:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not spy:
        raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
    outdir = outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    rate = 100
    flags = ["--nonblocking", "--threads", "-r", str(rate)] + (["--native"] if native else [])
    samples = {}
    for fmt, name in (("flamegraph", "profile.svg"), ("raw", "profile.txt")):
        log(f"profiling one regime-1 fetcher run with py-spy ({fmt})")
        prefix = [spy, "record", *flags, "--format", fmt, "-o", str(outdir / name), "--"]
        samples[fmt] = setup.run_fetcher("rm-bench-regime1", label=f"profile-{fmt}", prefix=prefix)
    summary = summarize_profile(outdir / "profile.txt", setup.code, samples["raw"], rate, " ".join(flags))
    perf = shutil.which("perf")
    if perf:
        summary += "\n\n" + perf_run(setup, outdir, perf)
    else:
        log("perf not found: no CPU profile by native symbol (apt-get install linux-perf)")
    (outdir / "profile-summary.md").write_text(summary + "\n")
    return summary


# Native symbols (perf) by what they do; first match wins. Kernel symbols carry [k].
PERF_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    # libcrypto's symbols are stripped here; in the transfer path it only computes SHA-256.
    ("SHA-256 (libcrypto)", ("sha256", "SHA256", "sha_block", "libcrypto")),
    ("CRC64 (fastcrc)", ("fastcrc", "crc64", "crc_")),
    ("kernel: copy to/from user space (recv, pwrite, pread)",
     ("copy_user", "copyout", "copyin", "memcpy_orig", "rep_movs", "copy_page", "_copy_to_iter",
      "_copy_from_iter", "copy_folio_from_iter", "copy_page_from_iter", "copy_page_to_iter",
      "filemap_read")),
    ("kernel: TCP/IP receive and send", ("tcp_", "ip_", "skb", "sock_", "inet_", "__netif",
                                         "net_rx", "napi", "loopback", "__dev_queue", "sk_")),
    ("kernel: page cache, ext4, block I/O, fsync", ("ext4", "jbd2", "filemap", "page_cache", "folio",
                                                     "writeback", "bio_", "blk_", "iomap", "pagevec",
                                                     "generic_perform_write", "mpage", "fsync",
                                                     "lru_", "shmem", "balance_dirty")),
    ("kernel: scheduler, futex, syscalls, other", ("[k]",)),
    ("Python interpreter (libpython)", ("libpython", "python3")),
    ("uvloop / libuv", ("uvloop", "loop.cpython", "libuv", "uv__")),
    ("aiohttp C parser and helpers", ("_http_parser", "aiohttp", "_helpers", "multidict", "yarl",
                                      "_websocket", "propcache", "frozenlist")),
    ("libc memcpy/memmove (user-space copies of received bytes)", ("libc.so.6 [.] __mem",)),
    ("libc (malloc, locks, other)", ("libc.so", "libc-", "ld-linux")),
]


def perf_run(setup: Setup, outdir: Path, perf: str) -> str:
    """One more regime-1 fetcher run under ``perf record``: CPU by native symbol, kernel included."""
    data = outdir / "perf.data"
    log("profiling one regime-1 fetcher run with perf record (CPU by native symbol)")
    prefix = [perf, "record", "-F", "499", "-q", "-o", str(data), "--"]
    sample = setup.run_fetcher("rm-bench-regime1", label="profile-perf", prefix=prefix)
    rep = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children", "-q",
                          "--sort", "dso,sym", "--percent-limit", "0"],
                         capture_output=True, text=True)
    text = rep.stdout
    (outdir / "perf-report.txt").write_text(text)
    cats: dict[str, float] = {}
    top: list[tuple[float, str]] = []
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].endswith("%"):
            continue
        try:
            pct = float(parts[0].rstrip("%"))
        except ValueError:
            continue
        what = " ".join(parts[1].split())
        if " [.] 0x" in what or " [k] 0x" in what:  # unresolved addresses: one row per library
            what = what.split(" 0x")[0] + " (unresolved symbols)"
        top.append((pct, what))
        name = next((n for n, keys in PERF_CATEGORIES if any(k in what for k in keys)), "other")
        cats[name] = cats.get(name, 0.0) + pct
    if not top:
        return f"perf: no samples ({rep.stderr.strip()[-200:]})"
    lines = [
        f"CPU profile of another regime-1 `fetcher fetch` under `perf record -F 499` (on-CPU "
        f"samples only, user and kernel, every thread of the process; that run took "
        f"{sample.wall:.1f} s wall, {sample.cpu:.1f} s CPU):",
        "",
        "| CPU time in | share |",
        "|---|---|",
    ]
    for name, pct in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {pct:.1f} % |")
    lines += ["", "| top native symbols (dso, symbol) | share |", "|---|---|"]
    merged: dict[str, float] = {}
    for pct, what in top:
        merged[what] = merged.get(what, 0.0) + pct
    for what, pct in sorted(merged.items(), key=lambda kv: -kv[1])[:20]:
        lines.append(f"| `{what}` | {pct:.1f} % |")
    return "\n".join(lines)


def write_results(path: Path, args: argparse.Namespace, sizes: Sizes, rounds: int,
                  machine: dict[str, str], versions: dict[str, str], table: str,
                  targets: list[tuple[str, str, str, bool | None]], line: str,
                  profile_summary: str) -> None:
    cmd = "python bench/run.py" + "".join(
        f" {a}" for a in sys.argv[1:]
    )
    text = f"""# fetcher benchmark results

- date: {machine['date']}
- machine: {machine['nproc']} CPU(s), {machine['cpu']}, {machine['memory']} RAM, Linux {machine['kernel']}; load average at start {machine['load']} (shared machine)
- scratch disk: {machine.get('disk', '?')} sequential write + fdatasync (1 GiB, measured at the start; the generated files live there)
- outputs written to: {machine.get('dest', '?')}
- code measured: commit {machine.get('commit', '?')}
- command: `{cmd}` ({rounds} round(s), {'quick sizes' if args.quick else 'full sizes'})
- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}
- sizes: regime1 {' + '.join(human(s) for s in sizes.regime1)}; regime2 {human(sizes.regime2)} at nginx `limit_rate {args.rate}` per connection; memory {human(sizes.memory[0])} and {human(sizes.memory[1])}; listing {sizes.listing:,} sets; crc64 kernel {human(sizes.kernel)}

How to read this: bench/README.md.

{table}

{targets_table(targets)}

```
{line}
```
"""
    if profile_summary:
        text += "\n## Profile\n\n" + profile_summary + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
