"""Progress bars: drawn on a terminal, never when stderr is a pipe or with --no-progress/-q."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

from tests.conftest import backup_doc, one_instance_doc


def run_on_tty(h: Any, args: list[str]) -> tuple[int, str]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fetcher", *args], env=h.env(), stdout=subprocess.DEVNULL,
        stderr=slave, stdin=subprocess.DEVNULL, cwd=h.tmp,
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_bars_on_a_terminal_only(make_harness: Any, tmp_path: Path) -> None:
    h = make_harness(one_instance_doc([backup_doc("1", size=3 << 20), backup_doc("2", size=2 << 20)]))
    for obj in h.emu.data.objects.values():
        obj.faults.rate = 4 << 20  # slow enough for the bars to draw
    code, screen = run_on_tty(h, ["fetch", "--dest", str(tmp_path / "a"), "--instance", "rm-test0001"])
    assert code == 0, screen
    assert "2 files" in screen and "%|" in screen and "MB/s" in screen
    for obj in h.emu.data.objects.values():
        obj.faults.rate = None
    code, screen = run_on_tty(h, ["fetch", "--dest", str(tmp_path / "b"), "--instance", "rm-test0001",
                                  "--no-progress"])
    assert code == 0 and "%|" not in screen and "verified" in screen
    code, screen = run_on_tty(h, ["-q", "fetch", "--dest", str(tmp_path / "c"), "--instance", "rm-test0001"])
    assert code == 0 and "%|" not in screen and screen.strip() == ""
    # stderr a pipe: no bars either.
    r = h.run("fetch", "--dest", str(tmp_path / "d"), "--instance", "rm-test0001")
    assert r.code == 0 and "%|" not in r.stderr
