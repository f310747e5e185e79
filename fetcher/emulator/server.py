"""Running the emulator: the API listener and the public and internal object listeners."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from fetcher.emulator import dataset
from fetcher.emulator.api import ApiState, RdsApi
from fetcher.emulator.dataset import DataSet, EmuObject
from fetcher.emulator.oss import ObjectStore


def _free_port(host: str) -> int:
    """A port nobody listens on (bound then released): where an absent VPC 'is'."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Emulator:
    """The RDS API + object storage emulator, as aiohttp apps on loopback.

    ``public_base``/``internal_base`` make the API hand out URLs that point elsewhere (e.g.
    an nginx serving the same files) instead of at the emulator's own object listeners.
    """

    def __init__(
        self,
        data: DataSet | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        internal_host: str = "127.0.0.2",
        internal: bool = True,
        url_ttl: float = 3600.0,
        public_base: str | None = None,
        internal_base: str | None = None,
    ) -> None:
        self.data = data if data is not None else dataset.load()
        self.host = host
        self.port = port
        self.internal_host = internal_host
        self.internal_enabled = internal
        self.api_state = ApiState()
        self.store = ObjectStore(self.data, "LTAI" + secrets.token_hex(8), secrets.token_urlsafe(24))
        self.store.default_ttl = url_ttl
        self.api = RdsApi(self.data, self._sign_url, self.api_state)
        self._public_base_override = public_base
        self._internal_base_override = internal_base
        self._runners: dict[str, web.AppRunner] = {}
        self.api_port = 0
        self.public_port = 0
        self.internal_port = 0

    # ------------------------------------------------------------------ URLs

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def public_base(self) -> str:
        return self._public_base_override or f"http://{self.host}:{self.public_port}"

    @property
    def internal_base(self) -> str:
        return self._internal_base_override or f"http://{self.internal_host}:{self.internal_port}"

    def _sign_url(self, obj: EmuObject, internal: bool) -> str:
        return self.store.presign(self.internal_base if internal else self.public_base, obj)

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def _app(handler: Any, methods: tuple[str, ...], path: str) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        for method in methods:
            app.router.add_route(method, path, handler)
        return app

    async def _serve(self, name: str, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runners[name] = runner
        sockets = [s for s in (runner.addresses or [])]
        return int(sockets[0][1]) if sockets else port

    async def start(self) -> None:
        self.api_port = await self._serve(
            "api", self._app(self.api.handle, ("GET", "POST", "PUT", "DELETE"), "/{tail:.*}"),
            self.host, self.port,
        )
        self.public_port = await self._serve(
            "public", self._app(self.store.handle, ("GET", "HEAD"), "/{tail:.*}"), self.host, 0
        )
        if self.internal_enabled:
            await self._start_internal()
        else:
            self.internal_port = _free_port(self.internal_host)

    async def _start_internal(self) -> None:
        self.internal_port = await self._serve(
            "internal", self._app(self.store.handle, ("GET", "HEAD"), "/{tail:.*}"),
            self.internal_host, self.internal_port,
        )

    async def set_internal(self, enabled: bool) -> None:
        """Switch the internal (VPC) listener on or off; its address stays the same."""
        if enabled and "internal" not in self._runners:
            await self._start_internal()
        elif not enabled and "internal" in self._runners:
            await self._runners.pop("internal").cleanup()
        self.internal_enabled = enabled

    async def stop(self) -> None:
        for runner in list(self._runners.values()):
            await runner.cleanup()
        self._runners.clear()

    # ------------------------------------------------------------------ conveniences

    def ready_info(self) -> dict[str, Any]:
        cred = self.data.credentials[0]
        return {
            "endpoint": self.endpoint,
            "access_key_id": cred.access_key_id,
            "access_key_secret": cred.access_key_secret,
            "region": self.data.region,
            "instances": list(self.data.instances),
            "oss_public": self.public_base,
            "oss_internal": self.internal_base,
        }

    def env(self, credential: int = 0) -> dict[str, str]:
        """Environment variables that point fetcher at this emulator."""
        cred = self.data.credentials[credential]
        out = {
            "FETCHER_ENDPOINT": self.endpoint,
            "ALIBABA_CLOUD_ACCESS_KEY_ID": cred.access_key_id,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": cred.access_key_secret,
            "ALIBABA_CLOUD_REGION_ID": self.data.region,
        }
        if cred.security_token:
            out["ALIBABA_CLOUD_SECURITY_TOKEN"] = cred.security_token
        return out

    def find(self, instance_id: str, backup_id: str, database: str | None = None) -> EmuObject:
        return self.data.find(instance_id, backup_id, database)


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class EmulatorThread:
    """The emulator on its own event loop in a daemon thread (tests, demo, benchmarks)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fetcher-emulator", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.emulator.start())
        except BaseException as exc:  # surfaced to the starting thread
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.emulator.stop())
        self.loop.close()

    def start(self) -> Emulator:
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self.emulator

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the emulator's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
