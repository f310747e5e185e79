"""Keeping secrets out of every output: signed URL queries, key secrets, STS tokens."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

_URL_QUERY = re.compile(r"(https?://[^\s?#'\"<>]*)\?[^\s#'\"<>]*", re.IGNORECASE)
_SIGNATURE_PARAM = re.compile(
    r"((?:Signature|OSSAccessKeyId|SecurityToken|security-token|x-oss-signature|"
    r"x-oss-credential|AccessKeyId)=)[^&\s'\"]+",
    re.IGNORECASE,
)


def strip_query(url: str) -> str:
    """The URL without query or fragment: what may be shown or stored."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class Scrubber:
    """Removes known secret values and URL queries from any text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Very short values would blank out ordinary words; real secrets are long.
        self._secrets.update(s for s in secrets if s and len(s) >= 6)

    def __call__(self, text: str) -> str:
        text = _URL_QUERY.sub(r"\1?<redacted>", text)
        text = _SIGNATURE_PARAM.sub(r"\1<redacted>", text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "<redacted>")
        return text


SCRUB = Scrubber()
