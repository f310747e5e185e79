"""Shared fixtures: the emulator on 127.0.0.1 (port 0), the real CLI, data sets.

Tests talk to real servers over real sockets; faults are set on the emulator's objects.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fetcher.emulator import Emulator, EmulatorThread, dataset

DEMO_INSTANCE = "rm-bp1demo4mysql80"
ROOT = Path(__file__).resolve().parent.parent

# Tests should not sit through production backoff; the mechanism is the same.
os.environ.setdefault("FETCHER_BACKOFF_BASE", "0.02")


def demo_doc() -> dict[str, Any]:
    return copy.deepcopy(json.loads(dataset.DEMO_DATA.read_text(encoding="utf-8")))


def backup_doc(backup_id: str, *, size: int = 1 << 20, name: str | None = None, **fields: Any) -> dict[str, Any]:
    """A successful full backup set with a generated object of ``size`` bytes."""
    doc: dict[str, Any] = {
        "BackupId": backup_id,
        "BackupStatus": "Success",
        "BackupType": "FullBackup",
        "BackupMethod": "Physical",
        "BackupMode": "Automated",
        "BackupStartTime": "2026-11-27T10:00:00Z",
        "BackupEndTime": "2026-11-27T10:05:00Z",
        "IsAvail": 1,
        "StorageClass": "0",
        "object": {"name": name or f"hins_{backup_id}.tar.gz", "size": size},
    }
    doc.update(fields)
    return doc


def one_instance_doc(backups: list[dict[str, Any]], instance: str = "rm-test0001", **inst: Any) -> dict[str, Any]:
    doc = demo_doc()
    doc["instances"] = [
        {"DBInstanceId": instance, "Engine": "MySQL", "EngineVersion": "8.0", **inst, "backups": backups}
    ]
    return doc


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Harness:
    """An emulator plus a way to run the real CLI against it."""

    def __init__(self, thread: EmulatorThread, tmp: Path) -> None:
        self.thread = thread
        self.emu: Emulator = thread.emulator
        self.tmp = tmp
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)

    def env(self, credential: int = 0, **extra: str) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("ALIBABA_CLOUD_", "FETCHER_")) and k not in ("HOME",)
        }
        env.update(self.emu.env(credential))
        env["HOME"] = str(self.home)
        env["FETCHER_BACKOFF_BASE"] = os.environ.get("FETCHER_BACKOFF_BASE", "0.02")
        env.update(extra)
        return env

    def run(self, *args: str, env: dict[str, str] | None = None, credential: int = 0) -> CliResult:
        """The real CLI, in this process (fast): fetcher.cli.main with argv and env."""
        from fetcher.cli import main

        use_env = env if env is not None else self.env(credential)
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(use_env)
        out, err = io.StringIO(), io.StringIO()
        try:
            with redirect_stdout(out), redirect_stderr(err):
                try:
                    main(list(args))
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                else:  # pragma: no cover - main always exits
                    code = 0
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return CliResult(code, out.getvalue(), err.getvalue())

    def spawn(self, *args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
        """The real CLI as its own process (for signals, kills and locks)."""
        return subprocess.Popen(
            [sys.executable, "-m", "fetcher", *args],
            env=env if env is not None else self.env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.tmp, **kw,
        )

    def call(self, coro: Any) -> Any:
        return self.thread.call(coro)


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[Any]:
    threads: list[EmulatorThread] = []

    def factory(doc: dict[str, Any] | None = None, **kw: Any) -> Harness:
        data = dataset.load(doc=doc if doc is not None else demo_doc())
        thread = EmulatorThread(Emulator(data, **kw))
        thread.start()
        threads.append(thread)
        return Harness(thread, tmp_path)

    yield factory
    for t in threads:
        t.stop()


@pytest.fixture
def harness(make_harness: Any) -> Harness:
    """The emulator with the built-in demo data set."""
    return make_harness()  # type: ignore[no-any-return]


def read_manifest(dest: Path) -> dict[str, Any]:
    return json.loads((dest / "manifest.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def all_text_under(root: Path) -> str:
    """Every byte under root as text (for secret scans); binary files included, lossy."""
    chunks = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            chunks.append(p.read_bytes().decode("utf-8", "replace"))
            chunks.append(str(p))
    return "\n".join(chunks)
