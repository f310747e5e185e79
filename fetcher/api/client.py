"""Async client for the RDS API: signing every attempt afresh, retrying, paging.

Only this module and the download transport see aiohttp's exceptions; they leave as
``ApiError`` / ``TransportError``.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

import aiohttp
from yarl import URL

from fetcher.api import signing
from fetcher.api.models import (
    BackupSet,
    DBInstance,
    parse_backup_page,
    parse_instance_page,
)
from fetcher.credentials import Credentials
from fetcher.errors import ApiError, FetcherError, ThrottledError, TransportError, UsageError
from fetcher.filters import BackupFilters

from fetcher.api import API_VERSION, DEFAULT_ENDPOINT  # noqa: F401 - re-exported
PAGE_SIZE = 100
USER_AGENT = "fetcher/0.1.0"


class _HasItems(Protocol):
    @property
    def total_record_count(self) -> int: ...

    @property
    def items(self) -> tuple[Any, ...]: ...


_Page = TypeVar("_Page", bound=_HasItems)


@dataclass(frozen=True)
class ClientConfig:
    endpoint: str = DEFAULT_ENDPOINT
    region: str = "cn-hangzhou"
    signature: str = "v3"
    timeout: float = 30.0
    attempts: int = 6  # first try plus retries
    backoff_base: float = 0.5
    backoff_cap: float = 20.0
    retry_after_cap: float = 60.0
    page_concurrency: int = 8


def endpoint_url(endpoint: str) -> URL:
    """Validate --endpoint; a bare host gets https://."""
    text = endpoint.strip()
    if "://" not in text:
        text = "https://" + text
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"--endpoint: {endpoint!r} is not an http(s) URL")
    return url.with_path("/").with_query(None).with_fragment(None)


def _host_header(url: URL) -> str:
    host = url.raw_host or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{url.explicit_port}" if url.explicit_port else host


def _encoded_query(params: dict[str, str]) -> str:
    return "&".join(
        f"{signing.percent_encode(k)}={signing.percent_encode(v)}" for k, v in params.items()
    )


def _parse_error(status: int, body: bytes, headers: Any) -> ApiError:
    code, message, request_id = f"HTTP{status}", "", ""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        code = str(doc.get("Code") or doc.get("code") or code)
        message = str(doc.get("Message") or doc.get("message") or "")
        request_id = str(doc.get("RequestId") or doc.get("requestId") or "")
    else:
        text = body[:200].decode("utf-8", "replace").strip()
        message = " ".join(text.split()) or f"HTTP status {status} with no error document"
    retry_after: float | None = None
    raw_after = headers.get("x-acs-retry-after") if headers is not None else None
    if raw_after:
        try:
            # Milliseconds, as the official SDK's retry policy reads it.
            retry_after = max(0.0, int(raw_after) / 1000.0)
        except ValueError:
            retry_after = None
    cls = ThrottledError if code.startswith("Throttling") else ApiError
    return cls(code, message, request_id=request_id, http_status=status, retry_after=retry_after)


class RdsClient:
    """DescribeBackups / DescribeDBInstances over one aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        config: ClientConfig = ClientConfig(),
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        nonce: Callable[[], str] = lambda: uuid.uuid4().hex,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        on_retry: Callable[[FetcherError, int, float], None] | None = None,
    ) -> None:
        if config.signature not in ("v3", "v1"):
            raise UsageError(f"--signature: {config.signature!r} is not v3 or v1")
        self._session = session
        self._creds = credentials
        self._config = config
        self._url = endpoint_url(config.endpoint)
        self._clock = clock
        self._nonce = nonce
        self._sleep = sleep
        self._rng = rng
        self._on_retry = on_retry
        self.calls = 0  # attempts sent, for diagnostics and tests

    # ------------------------------------------------------------------ one call

    def _build(self, action: str, params: dict[str, str]) -> tuple[str, dict[str, str]]:
        """URL (query already encoded) and headers for one signed attempt."""
        params = {**params, "RegionId": self._config.region}
        if self._config.signature == "v3":
            headers = signing.v3_sign(
                method="POST",
                host=_host_header(self._url),
                action=action,
                version=API_VERSION,
                query=params,
                body=b"",
                access_key_id=self._creds.access_key_id,
                access_key_secret=self._creds.access_key_secret,
                security_token=self._creds.security_token,
                now=self._clock(),
                nonce=self._nonce(),
                extra_headers={"user-agent": USER_AGENT, "accept": "application/json"},
            )
            query = params
        else:
            query = signing.v1_sign(
                method="POST",
                action=action,
                version=API_VERSION,
                params=params,
                access_key_id=self._creds.access_key_id,
                access_key_secret=self._creds.access_key_secret,
                security_token=self._creds.security_token,
                now=self._clock(),
                nonce=self._nonce(),
            )
            headers = {
                "host": _host_header(self._url),
                "user-agent": USER_AGENT,
                "accept": "application/json",
            }
        return f"{self._url}?{_encoded_query(query)}", headers

    async def _attempt(self, action: str, params: dict[str, str]) -> dict[str, Any]:
        url, headers = self._build(action, params)
        self.calls += 1
        timeout = aiohttp.ClientTimeout(
            total=self._config.timeout * 2, sock_connect=self._config.timeout,
            sock_read=self._config.timeout,
        )
        try:
            async with self._session.post(
                URL(url, encoded=True), headers=headers, data=b"", timeout=timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                status = resp.status
                resp_headers = resp.headers
        except asyncio.TimeoutError as exc:
            raise TransportError(
                f"timed out talking to the API at {self._url.host}"
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(
                f"cannot reach the API at {self._url.host}: {exc.__class__.__name__}"
            ) from exc
        if status >= 300:
            raise _parse_error(status, body, resp_headers)
        try:
            doc = json.loads(body)
        except ValueError:
            raise ApiError(
                "InvalidResponse", f"{action} answered HTTP {status} with a body that is not JSON",
                http_status=status,
            ) from None
        if not isinstance(doc, dict):
            raise ApiError("InvalidResponse", f"{action} answered with JSON that is not an object")
        if "Code" in doc and "Message" in doc and "Items" not in doc:
            raise _parse_error(400, body, resp_headers)
        return doc

    def _delay(self, attempt: int, error: FetcherError) -> float:
        if isinstance(error, ApiError) and error.retry_after is not None:
            return min(error.retry_after, self._config.retry_after_cap)
        ceiling = min(self._config.backoff_cap, self._config.backoff_base * (2**attempt))
        return float(ceiling * (0.5 + self._rng() / 2))  # "equal jitter": never a zero wait

    async def call(self, action: str, params: dict[str, str]) -> dict[str, Any]:
        """One API call; retried with backoff on throttling, 5xx, timeouts, resets."""
        attempt = 0
        while True:
            try:
                return await self._attempt(action, params)
            except (ApiError, TransportError) as error:
                retryable = error.retryable if isinstance(error, ApiError) else True
                attempt += 1
                if not retryable or attempt >= self._config.attempts:
                    raise
                delay = self._delay(attempt - 1, error)
                if self._on_retry is not None:
                    self._on_retry(error, attempt, delay)
                await self._sleep(delay)

    # ------------------------------------------------------------------ operations

    async def _all_pages(
        self, action: str, params: dict[str, str], parse: Callable[[Any], _Page]
    ) -> list[_Page]:
        """Page 1, then the rest concurrently (bounded), then on while pages come back full.

        Sets added while paging push older ones down a page; reading until a short page
        catches the one pushed past the last page counted at first.
        """

        async def page(n: int) -> _Page:
            return parse(
                await self.call(
                    action, {**params, "PageSize": str(PAGE_SIZE), "PageNumber": str(n)}
                )
            )

        first = await page(1)
        pages = [first]
        total_pages = max(1, -(-first.total_record_count // PAGE_SIZE))
        if total_pages > 1:
            limit = asyncio.Semaphore(self._config.page_concurrency)

            async def bounded(n: int) -> _Page:
                async with limit:
                    return await page(n)

            pages += await asyncio.gather(*(bounded(n) for n in range(2, total_pages + 1)))
        n = total_pages
        while len(pages[-1].items) >= PAGE_SIZE:
            n += 1
            pages.append(await page(n))
        return pages

    async def describe_backups(self, filters: BackupFilters) -> list[BackupSet]:
        """Every backup set matching the filters, every page, each set once."""
        pages = await self._all_pages("DescribeBackups", filters.params(), parse_backup_page)
        return _unique((b for p in pages for b in p.items), key=lambda b: b.backup_id)

    async def describe_backup(self, instance_id: str, backup_id: str) -> BackupSet | None:
        """One set by id (used to refresh expired download URLs)."""
        found = await self.describe_backups(BackupFilters(instance_id, backup_id=backup_id))
        return next((b for b in found if b.backup_id == backup_id), None)

    async def describe_instances(self) -> list[DBInstance]:
        """Every instance of the account in the configured region, every page."""
        pages = await self._all_pages("DescribeDBInstances", {}, parse_instance_page)
        return _unique((i for p in pages for i in p.items), key=lambda i: i.instance_id)


_T = TypeVar("_T")


def _unique(items: Iterable[_T], key: Callable[[_T], str]) -> list[_T]:
    seen: set[str] = set()
    out: list[_T] = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out
