"""Smoke test of the benchmark: ``bench/run.py --quick`` runs and prints its table.

Never a timing assertion: the machine may be slow or shared. Skips (with the reason) where
nginx, curl or aria2c are missing and cannot be installed. Part of the default test run
(``testpaths`` includes ``bench``); ``.ci/run`` installs the three tools.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().with_name("run.py")
EXIT_PREREQ = 4


def test_bench_quick_runs_and_prints_table(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode == EXIT_PREREQ:
        pytest.skip(f"benchmark prerequisites unavailable: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, f"bench exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "| benchmark | tool | runs | wall s median |" in out
    for row in ("| regime1 | fetcher |", "| regime1 | curl -P4 |", "| regime1 | aria2c -j4 -x1 |",
                "| regime2 | fetcher --connections 4 |", "| regime2 | curl |",
                "| regime2 | aria2c -x4 -s4 |", "| memory | fetcher ", "| listing | fetcher list",
                "| crc64 | fast backend |", "| crc64 | crcmod |"):
        assert row in out, f"missing row {row!r}\n{out}"
    last = out.strip().splitlines()[-1]
    for part in ("regime1 fetcher/curl=", "fetcher/aria2c=", "regime2 ", "memory ", "listing ",
                 "crc64 fast/crcmod="):
        assert part in last, f"ratio line lacks {part!r}: {last}"
    # Nothing left behind in the scratch folder.
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())
