"""One exception tree for fetcher, and the table that maps it to exit codes.

::

    FetcherError                      exit 1 unless a subclass says otherwise
    ├── UsageError                    exit 2  bad option values, unreadable manifest, bad data file
    ├── CredentialsError              exit 3  no credentials, unsupported profile mode
    ├── ApiError                      exit 3  the RDS API answered with an error (Code, Message, RequestId)
    │   └── ThrottledError                    a throttling answer (retried before it surfaces)
    ├── TransportError                exit 3  the API could not be reached (after retries)
    ├── DownloadError                 exit 1  one file could not be fetched (carried in results, not raised to the CLI)
    │   ├── ObjectChangedError                the object behind a URL changed (ETag, size, 412, 200 to a range)
    │   ├── UrlExpiredError                   OSS refused a signed URL as expired or bad
    │   ├── ArchivedObjectError               archive storage, not yet restored (InvalidObjectState)
    │   ├── KeptPartialChanged                a kept partial no longer matches its resume state
    │   └── LocalIOError                      disk full, permission denied, ... while writing
    ├── IntegrityError                exit 1  CRC64 mismatch
    ├── LockedError                   exit 1  another fetch holds DEST's lock
    └── Interrupted                   exit 130

Every message is one line meant for a person; none ever carries a secret or a signed URL query.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_API = 3
EXIT_INTERRUPTED = 130


class FetcherError(Exception):
    """Root of every error fetcher raises on purpose."""

    exit_code: int = EXIT_FAILED
    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class UsageError(FetcherError):
    """Bad input from the user: options, data files, manifests."""

    exit_code = EXIT_USAGE


class CredentialsError(FetcherError):
    """No usable credentials, or a profile mode we do not support."""

    exit_code = EXIT_API


class ApiError(FetcherError):
    """The RDS API answered with an error document."""

    exit_code = EXIT_API

    def __init__(
        self,
        code: str,
        message: str,
        *,
        request_id: str = "",
        http_status: int = 0,
        retry_after: float | None = None,
    ) -> None:
        self.code = code
        self.api_message = message
        self.request_id = request_id
        self.http_status = http_status
        self.retry_after = retry_after
        text = f"API error {code}: {message}"
        if request_id:
            text += f" (RequestId {request_id})"
        super().__init__(text)

    @property
    def retryable(self) -> bool:
        return (
            self.code.startswith("Throttling")
            or self.code in {"ServiceUnavailable", "InternalError", "UnknownError"}
            or self.http_status >= 500
        )


class ThrottledError(ApiError):
    """A throttling answer; retried with backoff before it ever reaches the user."""


class TransportError(FetcherError):
    """A network-level failure: connect, timeout, reset, truncated body."""

    exit_code = EXIT_API
    retryable = True


class DownloadError(FetcherError):
    """One file could not be fetched; the run goes on with the others."""

    retryable = False


class RetryableDownloadError(DownloadError):
    """A transfer failure worth another attempt from the last good byte (reset, 5xx, stall)."""

    retryable = True


class ObjectChangedError(DownloadError):
    """The object behind the URL is not the one the partial file was pinned to."""

    def __init__(self, message: str, *, crc64: int | None = None) -> None:
        super().__init__(message)
        self.crc64 = crc64  # the new object's x-oss-hash-crc64ecma, when the answer had one


class UrlExpiredError(DownloadError):
    """OSS refused the signed URL (expired, or its signature no longer valid)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class ArchivedObjectError(DownloadError):
    """The object is in archive storage and must be restored before it can be read."""


class LocalIOError(DownloadError):
    """Writing to the destination failed (disk full, permissions, ...)."""


class KeptPartialChanged(DownloadError):
    """Bytes kept from an earlier run no longer match the CRC64 their state recorded."""


class IntegrityError(FetcherError):
    """The bytes do not match their expected CRC64."""


class LockedError(FetcherError):
    """Another fetch is running into the same destination."""


class Interrupted(FetcherError):
    """The user pressed Ctrl-C or the process got SIGTERM."""

    exit_code = EXIT_INTERRUPTED
