"""What a person sees while files move: tqdm bars, and log events for each file.

The engine only knows the ``Reporter`` protocol; this module is the CLI's implementation.
Bars appear only on a terminal and never with ``--quiet``, ``--no-progress`` or JSON logs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from fetcher.download.engine import FileResult
from fetcher.log import event, set_bars_active
from fetcher.plan import PlannedFile
from fetcher.units import human_size


def _fields(file: PlannedFile) -> dict[str, Any]:
    return {
        "instance": file.instance_id,
        "backup_id": file.backup_id,
        "database": file.database,
        "path": file.rel_path,
    }


class CliReporter:
    """Logs every file event; draws bars when asked to."""

    def __init__(self, bars: bool, total_files: int, total_bytes: int | None) -> None:
        self.bars = bars
        self._overall: Any = None
        self._per_file: dict[str, Any] = {}
        if bars:
            from tqdm import tqdm

            set_bars_active(True)
            self._tqdm = tqdm
            self._overall = tqdm(
                total=total_bytes or None, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"{total_files} files", position=0, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1, mininterval=0.2,
            )

    # -- Reporter protocol -------------------------------------------------------------

    def file_started(self, file: PlannedFile, size: int | None, resumed: int) -> None:
        note = f" (resuming at {human_size(resumed)})" if resumed else ""
        event(
            "file.start", f"fetching {file.rel_path} [{file.network}] {human_size(size)}{note}",
            level=logging.DEBUG if self.bars else logging.INFO,
            **_fields(file), bytes=size, resumed=resumed, network=file.network,
        )
        if not self.bars:
            return
        old = self._per_file.pop(file.key, None)
        if old is not None:
            old.close()
        name = file.rel_path.rsplit("/", 1)[-1]
        label = name if len(name) <= 28 else name[:12] + "…" + name[-15:]
        bar = self._tqdm(
            total=size, initial=resumed, unit="B", unit_scale=True, unit_divisor=1024,
            desc=label, leave=False, file=sys.stderr, dynamic_ncols=True, mininterval=0.2,
            position=1 + len(self._per_file),
        )
        self._per_file[file.key] = bar
        if self._overall is not None and resumed:
            self._overall.update(resumed)

    def file_progress(self, file: PlannedFile, n: int) -> None:
        if not self.bars:
            return
        bar = self._per_file.get(file.key)
        if bar is not None:
            bar.update(n)
        if self._overall is not None:
            self._overall.update(n)

    def file_event(self, file: PlannedFile, name: str, message: str) -> None:
        level = logging.WARNING if name in ("file.retry", "file.restart") else logging.INFO
        event(name, f"{file.rel_path}: {message}", level=level, **_fields(file), reason=message)

    def file_finished(self, result: FileResult) -> None:
        f = result.file
        fields = {**_fields(f), "bytes": result.size, "crc64": result.crc64}
        if result.status == "failed":
            event("file.failed", f"FAILED {f.rel_path}: {result.reason}", level=logging.ERROR,
                  **fields, reason=result.reason)
        elif result.status == "skipped":
            event("set.skipped", f"skipped {f.rel_path}: {result.reason}", **fields,
                  reason=result.reason)
        else:
            how = "verified" if result.status == "verified" else "unverified (no CRC64 to check)"
            event(f"file.{result.status}", f"{how} {f.rel_path} ({human_size(result.size)})",
                  level=logging.INFO if result.status == "verified" else logging.WARNING, **fields)
        bar = self._per_file.pop(f.key, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        for bar in self._per_file.values():
            bar.close()
        self._per_file.clear()
        if self._overall is not None:
            self._overall.close()
        set_bars_active(False)
