"""Credentials: an ordered chain of providers, the first that has an answer wins.

1. The environment: ``ALIBABA_CLOUD_ACCESS_KEY_ID`` + ``ALIBABA_CLOUD_ACCESS_KEY_SECRET``
   (+ ``ALIBABA_CLOUD_SECURITY_TOKEN`` for STS).
2. A profile of the aliyun CLI file ``~/.aliyun/config.json``: the one named by ``--profile``,
   else ``ALIBABA_CLOUD_PROFILE``, else the file's ``current``. Modes ``AK`` and ``StsToken``.

Parsing is pure (``profile_credentials`` takes the decoded document); only ``resolve`` reads
the environment and the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetcher.errors import CredentialsError, UsageError

ENV_KEY_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
ENV_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"
ENV_PROFILE = "ALIBABA_CLOUD_PROFILE"

SUPPORTED_MODES = ("AK", "StsToken")


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)
    source: str = ""
    region: str | None = None

    def secrets(self) -> tuple[str, ...]:
        """The values that must never be printed (for the log scrubber)."""
        return tuple(s for s in (self.access_key_secret, self.security_token) if s)


def env_credentials(env: Mapping[str, str]) -> Credentials | None:
    key_id = env.get(ENV_KEY_ID, "").strip()
    secret = env.get(ENV_SECRET, "").strip()
    if not key_id and not secret:
        return None
    if not key_id or not secret:
        missing = ENV_KEY_ID if not key_id else ENV_SECRET
        raise CredentialsError(f"{missing} is not set (the other half of the key pair is)")
    token = env.get(ENV_TOKEN, "").strip() or None
    return Credentials(key_id, secret, token, source="environment")


def profile_credentials(doc: Any, wanted: str | None, path: str) -> Credentials | None:
    """Credentials from a decoded aliyun CLI config document."""
    if not isinstance(doc, dict):
        raise CredentialsError(f"{path}: not an aliyun CLI config (expected a JSON object)")
    profiles = doc.get("profiles") or []
    if not isinstance(profiles, list):
        raise CredentialsError(f"{path}: 'profiles' is not a list")
    name = wanted or doc.get("current") or ("default" if not wanted else None)
    chosen = next(
        (p for p in profiles if isinstance(p, dict) and p.get("name") == name), None
    )
    if chosen is None:
        if wanted:
            names = ", ".join(str(p.get("name")) for p in profiles if isinstance(p, dict))
            raise CredentialsError(
                f"profile {wanted!r} not found in {path} (profiles: {names or 'none'})"
            )
        return None
    mode = str(chosen.get("mode") or "AK")
    region = str(chosen.get("region_id") or "") or None
    if mode not in SUPPORTED_MODES:
        raise CredentialsError(
            f"profile {name!r} uses mode {mode!r}, which fetcher does not support yet "
            f"(supported: {', '.join(SUPPORTED_MODES)}); set {ENV_KEY_ID}/{ENV_SECRET} "
            "or use an AK or StsToken profile"
        )
    key_id = str(chosen.get("access_key_id") or "").strip()
    secret = str(chosen.get("access_key_secret") or "").strip()
    if not key_id or not secret:
        raise CredentialsError(f"profile {name!r} in {path} has no access_key_id/access_key_secret")
    token: str | None = None
    if mode == "StsToken":
        token = str(chosen.get("sts_token") or "").strip() or None
        if token is None:
            raise CredentialsError(f"profile {name!r} is mode StsToken but has no sts_token")
    return Credentials(key_id, secret, token, source=f"profile {name}", region=region)


def default_config_path(env: Mapping[str, str]) -> Path:
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".aliyun" / "config.json"


def resolve(
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Credentials:
    """Walk the chain; raise CredentialsError naming both ways when nothing is found."""
    env = os.environ if env is None else env
    found = env_credentials(env)
    if found is not None:
        return found
    wanted = profile or env.get(ENV_PROFILE) or None
    path = config_path or default_config_path(env)
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CredentialsError(f"cannot read {path}: {exc}") from None
        found = profile_credentials(doc, wanted, str(path))
        if found is not None:
            return found
    elif wanted:
        raise CredentialsError(f"profile {wanted!r} requested but {path} does not exist")
    raise CredentialsError(
        f"no credentials: set {ENV_KEY_ID} and {ENV_SECRET} (plus {ENV_TOKEN} for STS), "
        f"or configure a profile in {path} (aliyun configure)"
    )


def profile_region(profile: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The region of the chosen profile, as a default for --region; never raises."""
    env = os.environ if env is None else env
    path = default_config_path(env)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        creds = profile_credentials(doc, profile or env.get(ENV_PROFILE) or None, str(path))
    except (OSError, ValueError, CredentialsError, UsageError):
        return None
    return creds.region if creds else None
