"""Object GETs: the only place the transfer engine touches aiohttp.

Every request is a GET (pre-signed URLs are signed for GET; HEAD is refused). Responses are
checked here against what was asked: status, ``Content-Range`` start, end and total, ETag.
aiohttp's exceptions leave this module as fetcher's own errors.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from yarl import URL

from fetcher.checksum import parse_crc
from fetcher.errors import (
    ArchivedObjectError,
    DownloadError,
    ObjectChangedError,
    RetryableDownloadError,
    UrlExpiredError,
)

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]*)</\1>")


class RangeNotSatisfiable(DownloadError):
    """416: only expected when asking for ``bytes=0-`` of an empty object."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a response says about the object behind the URL."""

    total: int | None
    etag: str | None
    crc64: int | None


@dataclass
class ObjectResponse:
    response: aiohttp.ClientResponse
    info: ObjectInfo
    start: int  # object offset of the first body byte
    end: int | None  # exclusive; None when unknown (no length)
    partial: bool  # 206

    def close(self) -> None:
        """Hand a fully read connection back for reuse; drop one with unread body."""
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()


def url_expires_at(url: str) -> float | None:
    """Unix time a pre-signed URL stops working, from ``Expires`` or V4's date + expires."""
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    expires = query.get("Expires")
    if expires and expires.isdigit():
        return float(expires)
    date, seconds = query.get("x-oss-date"), query.get("x-oss-expires")
    if date and seconds and seconds.isdigit():
        try:
            stamp = time.strptime(date, "%Y%m%dT%H%M%SZ")
        except ValueError:
            return None
        import calendar

        return float(calendar.timegm(stamp) + int(seconds))
    return None


def _error_fields(body: bytes) -> tuple[str, str]:
    text = body[:4096].decode("utf-8", "replace")
    found = dict(_XML_FIELD.findall(text))
    return found.get("Code", ""), found.get("Message", "")


def _status_error(status: int, body: bytes) -> DownloadError:
    code, message = _error_fields(body)
    described = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    if status == 403 and code == "InvalidObjectState":
        return ArchivedObjectError("archived: restore it first")
    if status == 403:
        return UrlExpiredError(
            f"download URL refused ({described})", expired="expired" in message.lower()
        )
    if status == 412:
        return ObjectChangedError(f"the object changed (HTTP 412 {code or 'PreconditionFailed'})")
    if status == 416:
        return RangeNotSatisfiable(f"range not satisfiable ({described})")
    if status == 404:
        return DownloadError(f"object not found ({described})")
    if status >= 500 or status in (408, 429):
        return RetryableDownloadError(f"server error ({described})")
    return DownloadError(f"unexpected answer ({described})")


async def open_object(
    session: aiohttp.ClientSession,
    url: str,
    *,
    start: int,
    end: int | None,
    etag: str | None,
    expected_total: int | None,
    timeout: aiohttp.ClientTimeout,
    send_range: bool = True,
) -> ObjectResponse:
    """GET [start, end) of the object, pinned to ``etag`` when given, checked on arrival.

    A different ETag or total, or 412, raise ``ObjectChangedError``. A 200 answer is the
    whole object (``start`` 0, not partial): to ``bytes=0-`` that is simply the object; to
    a later range it means the server ignored Range, which is returned as such when the
    ETag proves it is the pinned object, and is ``ObjectChangedError`` when nothing does.
    """
    headers = {"Accept-Encoding": "identity"}
    if send_range:
        headers["Range"] = f"bytes={start}-" + (str(end - 1) if end is not None else "")
    if etag:
        headers["If-Match"] = etag
    try:
        response = await session.get(
            URL(url, encoded=True), headers=headers, timeout=timeout, allow_redirects=True,
            auto_decompress=False,
        )
    except asyncio.TimeoutError as exc:
        raise RetryableDownloadError("timed out connecting") from exc
    except aiohttp.ClientError as exc:
        raise RetryableDownloadError(f"connection failed ({exc.__class__.__name__})") from exc
    try:
        return await _check(response, start, end, etag, expected_total, send_range)
    except BaseException:
        response.close()
        raise


async def _check(
    response: aiohttp.ClientResponse,
    start: int,
    end: int | None,
    etag: str | None,
    expected_total: int | None,
    ranged: bool,
) -> ObjectResponse:
    status = response.status
    if status == 416 and ranged and start > 0:
        # The object is now shorter than the offset asked for: it changed.
        raise ObjectChangedError("the object changed (HTTP 416: it is now shorter)")
    if status not in (200, 206):
        # Error bodies are small XML documents; read a little to name the problem.
        try:
            body = await response.content.read(4096)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            body = b""
        raise _status_error(status, body)
    got_etag = response.headers.get("ETag")
    info_crc = parse_crc(response.headers.get("x-oss-hash-crc64ecma"))
    length_text = response.headers.get("Content-Length")
    length = int(length_text) if length_text and length_text.isdigit() else None
    if etag is not None and got_etag is not None and got_etag.strip() != etag.strip():
        raise ObjectChangedError("the object changed (new ETag)", crc64=info_crc)
    if status == 200:
        same_object = etag is not None and got_etag is not None  # else raised just above
        if ranged and start > 0 and not same_object:
            raise ObjectChangedError(
                "the server answered a ranged request with the whole object",
                crc64=info_crc,
            )
        if expected_total is not None and length is not None and length != expected_total:
            raise ObjectChangedError("the object's size changed", crc64=info_crc)
        info = ObjectInfo(total=length, etag=got_etag, crc64=info_crc)
        return ObjectResponse(response, info, 0, length, partial=False)
    m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if not m:
        raise RetryableDownloadError("206 answer without a valid Content-Range")
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if expected_total is not None and total is not None and total != expected_total:
        raise ObjectChangedError(
            f"the object's size changed ({expected_total} -> {total})",
            crc64=info_crc,
        )
    if first != start:
        raise RetryableDownloadError(f"asked for bytes from {start}, the server sent from {first}")
    want_last = (end - 1) if end is not None else (total - 1 if total is not None else last)
    if last != want_last and not (end is not None and total is not None and last == total - 1 and end > total):
        raise RetryableDownloadError(f"asked for bytes up to {want_last}, the server sent up to {last}")
    if length is not None and length != last - first + 1:
        raise RetryableDownloadError("Content-Length does not match Content-Range")
    info = ObjectInfo(total=total, etag=got_etag, crc64=info_crc)
    return ObjectResponse(response, info, first, last + 1, partial=True)
