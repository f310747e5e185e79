#!/usr/bin/env python3
"""Segments and resume under a per-connection cap, against the emulator (not nginx).

    .venv/bin/python bench/throttled.py [--size-mib 1024] [--rate-mb 50]

1. One object of ``--size-mib`` served by the emulator at ``--rate-mb`` MB/s per connection:
   ``fetcher fetch --connections 1`` vs ``--connections 4``, wall time of each.
2. The same object, single stream: kill -9 of the fetcher process once its resume state
   vouches for half of the object, then a rerun; prints the bytes the emulator served to
   each run (the rerun should send about half, not the whole object).

Outputs go to a temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fetcher.emulator import Emulator, EmulatorThread, dataset  # noqa: E402

MB = 1000 * 1000
MiB = 1 << 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rate-mb", type=float, default=50.0, help="per-connection cap, MB/s")
    args = ap.parse_args()
    size = args.size_mib * MiB
    rate = int(args.rate_mb * MB)
    doc = json.loads(dataset.DEMO_DATA.read_text(encoding="utf-8"))
    doc["instances"] = [{
        "DBInstanceId": "rm-throttled", "Engine": "MySQL", "EngineVersion": "8.0",
        "backups": [{
            "BackupId": "1", "BackupStatus": "Success", "BackupType": "FullBackup",
            "BackupMethod": "Physical", "BackupMode": "Automated", "IsAvail": 1,
            "BackupStartTime": "2026-11-27T10:00:00Z", "BackupEndTime": "2026-11-27T10:30:00Z",
            "object": {"name": "hins_throttled.xb", "size": size}, "faults": {"rate": rate},
        }],
    }]
    work = Path(tempfile.mkdtemp(prefix="fetcher-throttled-"))
    try:
        with EmulatorThread(Emulator(dataset.load(doc=doc))) as emu:
            obj = emu.find("rm-throttled", "1")
            print(f"warming: CRC64 of the {args.size_mib} MiB object ...", flush=True)
            _ = obj.crc64
            env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_", "FETCHER_"))}
            env.update(emu.env())
            base = [sys.executable, "-m", "fetcher", "fetch", "--instance", "rm-throttled",
                    "--no-progress", "--network", "public"]

            def run(dest: Path, *extra: str) -> tuple[float, int]:
                sent = obj.stats.bytes_sent
                t0 = time.perf_counter()
                done = subprocess.run([*base, "--dest", str(dest), *extra], env=env,
                                      capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if done.returncode != 0:
                    raise SystemExit(f"fetch failed ({done.returncode}): {done.stderr}")
                return wall, obj.stats.bytes_sent - sent

            print(f"\n{args.size_mib} MiB at {args.rate_mb:g} MB/s per connection")
            for conns in ("1", "4"):
                wall, sent = run(work / f"c{conns}", "--connections", conns)
                print(f"  --connections {conns}: {wall:6.2f} s wall, {sent / MiB:7.1f} MiB served, "
                      f"{size / MiB / wall:6.1f} MiB/s")
                shutil.rmtree(work / f"c{conns}")

            dest = work / "resume"
            sent0 = obj.stats.bytes_sent
            proc = subprocess.Popen([*base, "--dest", str(dest), "--connections", "1"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            state = dest / "rm-throttled" / "1" / "hins_throttled.xb.part.state"
            claimed = 0
            while proc.poll() is None:
                try:
                    claimed = sum(s["done"] for s in json.loads(state.read_text())["segments"])
                except (OSError, ValueError, KeyError):
                    claimed = 0
                if claimed >= size // 2:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.05)
            proc.wait()
            first = obj.stats.bytes_sent - sent0
            wall, second = run(dest, "--connections", "1")
            manifest = json.loads((dest / "manifest.json").read_text())
            status = manifest["files"][0]["status"]
            print(f"\nkill -9 once the state vouched for {claimed / MiB:.1f} MiB ({claimed / size:.0%}):")
            print(f"  first run served {first / MiB:.1f} MiB before the kill")
            print(f"  rerun served     {second / MiB:.1f} MiB ({second / size:.1%} of the object), "
                  f"{wall:.2f} s, file {status}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
