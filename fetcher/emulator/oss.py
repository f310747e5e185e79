"""The object-storage half of the emulator: pre-signed GETs, ranges, ETags, CRC64 headers.

Behaves as OSS does where fetcher depends on it: the method is part of a pre-signed URL's
signature (HEAD on a GET URL is refused), an expired URL gets 403 ``AccessDenied`` "Request
has expired.", an unsatisfiable or malformed Range is ignored (200 with the whole object),
``If-Match`` answers 412 on a changed ETag, and ``x-oss-hash-crc64ecma`` carries the CRC64 of
the whole object on 200 and 206 alike. Content is generated or read in chunks, so fault knobs
can act inside the body: drop the connection, stall, corrupt a byte, throttle.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Callable
from email.utils import formatdate
from urllib.parse import parse_qsl, quote
from xml.sax.saxutils import escape

from aiohttp import web

from fetcher.emulator.dataset import DataSet, EmuObject

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def oss_string_to_sign(method: str, expires: int, resource: str) -> str:
    return f"{method}\n\n\n{expires}\n{resource}"


def _resource(obj: EmuObject) -> str:
    return obj.key + (f"?dbList={obj.database}" if obj.database is not None else "")


class ObjectStore:
    """aiohttp handler serving the emulated bucket on one listener (public or internal)."""

    def __init__(
        self,
        data: DataSet,
        access_key_id: str,
        access_key_secret: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data = data
        self.access_key_id = access_key_id
        self._secret = access_key_secret.encode()
        self.clock = clock
        self.default_ttl = 3600.0

    # ------------------------------------------------------------------ signing

    def _sign(self, method: str, expires: int, obj: EmuObject) -> str:
        digest = hmac.new(
            self._secret, oss_string_to_sign(method, expires, _resource(obj)).encode(), hashlib.sha1
        ).digest()
        return base64.b64encode(digest).decode()

    def presign(self, base_url: str, obj: EmuObject) -> str:
        ttl = obj.faults.url_ttl if obj.faults.url_ttl is not None else self.default_ttl
        expires = int(self.clock() + ttl)
        query = (
            f"Expires={expires}&OSSAccessKeyId={self.access_key_id}"
            f"&Signature={quote(self._sign('GET', expires, obj), safe='')}"
        )
        if obj.database is not None:
            query += f"&dbList={quote(obj.database, safe='')}"
        return f"{base_url}{obj.key}?{query}"

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _error(request: web.Request, status: int, code: str, message: str, **extra: str) -> web.Response:
        rid = uuid.uuid4().hex[:24].upper()
        fields = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in extra.items())
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
            f"  <Code>{code}</Code>\n  <Message>{escape(message)}</Message>\n"
            f"  <RequestId>{rid}</RequestId>\n  <HostId>{escape(request.host)}</HostId>\n"
            f"{fields}</Error>\n"
        )
        headers = {"x-oss-request-id": rid}
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, text=body, content_type="application/xml", headers=headers)

    def _check_signature(self, request: web.Request, obj: EmuObject, query: dict[str, str]) -> web.Response | None:
        expires_text = query.get("Expires", "")
        key_id = query.get("OSSAccessKeyId", "")
        signature = query.get("Signature", "")
        if not (expires_text and key_id and signature):
            return self._error(request, 403, "AccessDenied", "You have no right to access this object because of bucket acl.")
        if not expires_text.isdigit():
            return self._error(request, 403, "AccessDenied", "Invalid Expires.")
        if key_id != self.access_key_id:
            return self._error(request, 403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.")
        expires = int(expires_text)
        if expires < self.clock():
            return self._error(
                request, 403, "AccessDenied", "Request has expired.",
                Expires=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(expires)),
                ServerTime=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.clock())),
            )
        if not hmac.compare_digest(self._sign(request.method, expires, obj), signature):
            return self._error(
                request, 403, "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        return None

    @staticmethod
    def _range(header: str | None, size: int) -> tuple[int, int] | None:
        """(start, end exclusive) of a satisfiable single range; None means whole object."""
        if header is None:
            return None
        m = _RANGE.match(header.strip())
        if not m or (not m.group(1) and not m.group(2)):
            return None
        if m.group(1):
            start = int(m.group(1))
            end = int(m.group(2)) + 1 if m.group(2) else size
            if start >= size or end <= start:
                return None
            return start, min(end, size)
        suffix = int(m.group(2))
        if suffix == 0 or size == 0:
            return None
        return max(0, size - suffix), size

    # ------------------------------------------------------------------ handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
        obj = self.data.objects.get((request.rel_url.raw_path, query.get("dbList")))
        if obj is None:
            return self._error(request, 404, "NoSuchKey", "The specified key does not exist.")
        stats, faults = obj.stats, obj.faults
        if request.method == "HEAD":
            stats.heads += 1
        else:
            stats.gets += 1
        denied = self._check_signature(request, obj, query)
        if denied is not None:
            stats.statuses.append(denied.status)
            return denied
        if faults.archived:
            stats.statuses.append(403)
            return self._error(request, 403, "InvalidObjectState", "The operation is not valid for the object's state.")
        if faults.error_times > 0:
            faults.error_times -= 1
            stats.statuses.append(faults.error_status)
            return self._error(request, faults.error_status, "InternalError", "We encountered an internal error. Please try again.")
        if faults.change_after_gets is not None and stats.gets > faults.change_after_gets:
            faults.change_after_gets = None
            obj.change()
        if obj.size > 64 << 20 and "crc64" not in obj.content.__dict__:
            await asyncio.to_thread(lambda: obj.crc64)
        etag = obj.etag
        if_match = request.headers.get("If-Match")
        stats.if_match.append(if_match)
        range_header = request.headers.get("Range")
        stats.ranges.append(range_header)
        if if_match is not None and if_match.strip() not in (etag, "*"):
            stats.statuses.append(412)
            return self._error(request, 412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")

        size = obj.size
        span = None if faults.ignore_range else self._range(range_header, size)
        start, end = span if span is not None else (0, size)
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Last-Modified": formatdate(1764200000 + obj.version, usegmt=True),
            "x-oss-request-id": uuid.uuid4().hex[:24].upper(),
            "x-oss-object-type": "Normal",
            "x-oss-storage-class": "Standard",
            "Content-Type": "application/octet-stream",
        }
        if not faults.no_crc_header:
            crc = obj.crc64 ^ (1 if faults.wrong_crc_header else 0)
            headers["x-oss-hash-crc64ecma"] = str(crc)
        status = 200
        if span is not None:
            status = 206
            shown = start + 1 if faults.wrong_content_range and start + 1 < size else start
            headers["Content-Range"] = f"bytes {shown}-{end - 1}/{size}"
        stats.statuses.append(status)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        await self._send_body(request, response, obj, start, end)
        return response

    async def _send_body(
        self, request: web.Request, response: web.StreamResponse, obj: EmuObject, start: int, end: int
    ) -> None:
        faults, stats = obj.faults, obj.stats
        drop_at = stall_at = None
        if faults.drop_after is not None and faults.drop_times > 0:
            faults.drop_times -= 1
            drop_at = start + faults.drop_after
        elif faults.drop_at is not None and faults.drop_times > 0 and start <= faults.drop_at < end:
            faults.drop_times -= 1
            drop_at = faults.drop_at
        if faults.stall_after is not None and faults.stall_times > 0:
            faults.stall_times -= 1
            stall_at = start + faults.stall_after
        corrupt = faults.corrupt_offset
        if corrupt is not None and not start <= corrupt < end:
            corrupt = None
        rate = faults.rate
        chunk = 1 << 20 if rate is None else max(4096, min(64 << 10, rate // 20))
        began = time.monotonic()
        pos = start
        transport = request.transport
        while pos < end:
            limit = end
            if drop_at is not None:
                limit = min(limit, drop_at)
            if stall_at is not None:
                limit = min(limit, stall_at)
            n = min(chunk, limit - pos)
            if n > 0:
                data = obj.content.read(pos, n)
                if len(data) < n:
                    # The file was cut short under the answer: drop the connection, as a
                    # web server does, rather than leave the client waiting for bytes.
                    if transport is not None:
                        transport.close()
                    return
                if corrupt is not None and pos <= corrupt < pos + n and (
                    faults.corrupt_times is None or faults.corrupt_times > 0
                ):
                    # Counted when the byte is actually sent: a GET cut short before it
                    # (the client took over the rest elsewhere) does not use up a fault.
                    if faults.corrupt_times is not None:
                        faults.corrupt_times -= 1
                    flipped = bytearray(data)
                    flipped[corrupt - pos] ^= 0xFF
                    data = bytes(flipped)
                try:
                    await response.write(data)
                except (ConnectionResetError, ConnectionError, RuntimeError):
                    return
                stats.bytes_sent += n
                pos += n
            if drop_at is not None and pos >= drop_at and pos < end:
                if transport is not None:
                    transport.close()
                return
            if stall_at is not None and pos >= stall_at and pos < end:
                stall_at = None
                deadline = time.monotonic() + faults.stall_seconds
                while time.monotonic() < deadline:
                    if transport is None or transport.is_closing():
                        return
                    await asyncio.sleep(0.05)
            if rate is not None:
                ahead = (pos - start) / rate - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
