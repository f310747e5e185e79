"""Request signing for Alibaba Cloud RPC APIs: ACS3-HMAC-SHA256 (V3) and HMAC-SHA1 (V1).

Pure functions: the clock and the nonce come in as arguments, so the official test vectors
pin them exactly. The emulator verifies with the same functions, rebuilding the canonical
request from what the client actually sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

V3_ALGORITHM = "ACS3-HMAC-SHA256"
V1_METHOD = "HMAC-SHA1"


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Alibaba Cloud signs it: unreserved kept, space %20, * %2A."""
    return quote(value, safe="-_.~")


def format_timestamp(moment: datetime) -> str:
    """``yyyy-MM-ddTHH:mm:ssZ`` in UTC, the form both signature versions use."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_query(params: Iterable[tuple[str, str]] | Mapping[str, str]) -> str:
    """Sorted ``key=value`` pairs, both encoded; ``key=`` for an empty value."""
    items = params.items() if isinstance(params, Mapping) else params
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in items)
    return "&".join(f"{k}={v}" for k, v in encoded)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- V3


def v3_canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]] | Mapping[str, str],
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    signed_headers: Iterable[str],
    payload_hash: str,
) -> str:
    """The canonical request of ACS3-HMAC-SHA256.

    ``headers`` may repeat a name (given as pairs); the values of a repeated header are
    sorted and joined with a comma, as the specification says.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    by_name: dict[str, list[str]] = {}
    for name, value in pairs:
        by_name.setdefault(name.lower(), []).append(value.strip())
    names = sorted({n.lower() for n in signed_headers})
    canonical_headers = "".join(
        f"{n}:{','.join(sorted(by_name.get(n, [])))}\n" for n in names
    )
    return "\n".join(
        [
            method.upper(),
            path or "/",
            canonical_query(query),
            canonical_headers,
            ";".join(names),
            payload_hash,
        ]
    )


def v3_signature(secret: str, canonical_request: str) -> str:
    string_to_sign = f"{V3_ALGORITHM}\n{sha256_hex(canonical_request.encode())}"
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class V3Authorization:
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str

    def header(self) -> str:
        return (
            f"{V3_ALGORITHM} Credential={self.access_key_id},"
            f"SignedHeaders={';'.join(self.signed_headers)},Signature={self.signature}"
        )

    @classmethod
    def parse(cls, value: str) -> V3Authorization | None:
        """Parse an ``Authorization`` header; None when it is not ACS3-HMAC-SHA256."""
        algorithm, _, rest = value.strip().partition(" ")
        if algorithm != V3_ALGORITHM:
            return None
        fields: dict[str, str] = {}
        for part in rest.split(","):
            key, sep, val = part.strip().partition("=")
            if sep:
                fields[key.strip()] = val.strip()
        try:
            return cls(
                access_key_id=fields["Credential"],
                signed_headers=tuple(h for h in fields["SignedHeaders"].split(";") if h),
                signature=fields["Signature"],
            )
        except KeyError:
            return None


def v3_sign(
    *,
    method: str,
    host: str,
    action: str,
    version: str,
    query: Mapping[str, str],
    body: bytes,
    access_key_id: str,
    access_key_secret: str,
    security_token: str | None,
    now: datetime,
    nonce: str,
    extra_headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every header of a V3-signed request, ``Authorization`` included.

    All headers returned are signed (as the official SDK does), so a verifier that rebuilds
    the canonical request from ``SignedHeaders`` sees exactly what was signed.
    """
    headers: dict[str, str] = {
        "host": host,
        "x-acs-action": action,
        "x-acs-version": version,
        "x-acs-date": format_timestamp(now),
        "x-acs-signature-nonce": nonce,
        "x-acs-content-sha256": sha256_hex(body),
    }
    if security_token:
        headers["x-acs-security-token"] = security_token
    for name, value in (extra_headers or {}).items():
        headers[name.lower()] = value
    signed = tuple(sorted(headers))
    canonical = v3_canonical_request(
        method, "/", query, headers, signed, headers["x-acs-content-sha256"]
    )
    auth = V3Authorization(access_key_id, signed, v3_signature(access_key_secret, canonical))
    headers["Authorization"] = auth.header()
    return headers


# ----------------------------------------------------------------------------- V1


def v1_string_to_sign(method: str, params: Mapping[str, str]) -> str:
    canonical = canonical_query((k, v) for k, v in params.items() if k != "Signature")
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical)}"


def v1_signature(secret: str, method: str, params: Mapping[str, str]) -> str:
    digest = hmac.new(
        f"{secret}&".encode(), v1_string_to_sign(method, params).encode(), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode()


def v1_sign(
    *,
    method: str,
    action: str,
    version: str,
    params: Mapping[str, str],
    access_key_id: str,
    access_key_secret: str,
    security_token: str | None,
    now: datetime,
    nonce: str,
) -> dict[str, str]:
    """The full parameter set of a V1 request, ``Signature`` included."""
    signed: dict[str, str] = {
        **params,
        "Action": action,
        "Version": version,
        "Format": "JSON",
        "AccessKeyId": access_key_id,
        "SignatureMethod": V1_METHOD,
        "SignatureVersion": "1.0",
        "SignatureNonce": nonce,
        "Timestamp": format_timestamp(now),
    }
    if security_token:
        signed["SecurityToken"] = security_token
    signed["Signature"] = v1_signature(access_key_secret, method, signed)
    return signed
