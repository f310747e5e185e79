"""Logging for people (text) and for log shippers (one JSON object per line), scrubbed.

Every record passes the scrubber on its way out, whatever its format: known secret values
and any URL query string are replaced with ``<redacted>``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from fetcher.redact import SCRUB

LOGGER = logging.getLogger("fetcher")


def event(event: str, message: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event: a message for people plus fields for machines."""
    LOGGER.log(level, message, extra={"event": event, "fields": fields})


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return SCRUB(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_value(v) for v in value]
    return value


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            message = f"error: {message}"
        elif record.levelno >= logging.WARNING:
            message = f"warning: {message}"
        if record.exc_info and LOGGER.isEnabledFor(logging.DEBUG):
            message += "\n" + self.formatException(record.exc_info)
        return SCRUB(message)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, timezone.utc)
        doc: dict[str, Any] = {
            "ts": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
        }
        fields = getattr(record, "fields", None) or {}
        for key, value in fields.items():
            if value is not None and key not in doc:
                doc[key] = value
        doc["message"] = record.getMessage()
        return json.dumps(_scrub_value(doc), ensure_ascii=False)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes through tqdm when bars are on screen, so lines and bars do not tear."""

    bars_active = False

    def emit(self, record: logging.LogRecord) -> None:
        if not _Handler.bars_active:
            super().emit(record)
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup(verbosity: int, quiet: bool, fmt: str, stream: TextIO | None = None) -> None:
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.propagate = False
    if quiet:
        LOGGER.setLevel(logging.ERROR)
    elif verbosity >= 1:
        LOGGER.setLevel(logging.DEBUG)
    else:
        LOGGER.setLevel(logging.INFO)


def set_bars_active(active: bool) -> None:
    _Handler.bars_active = active
