"""A token bucket shared by every transfer of a run: ``--limit-rate`` caps the total."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    """Tokens are bytes; ``take`` waits until the bytes just read fit under the rate.

    The burst is a tenth of a second's worth (at least 16 KiB), so the average over any
    second stays within a few percent of the cap.
    """

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(16 * 1024, rate // 10)
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def read_size(self) -> int:
        """How much a reader should ask for at once so waits stay short."""
        return max(4096, min(1 << 20, self.burst))

    async def take(self, n: int) -> None:
        async with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            if self._tokens < 0:
                wait = -self._tokens / self.rate
                await asyncio.sleep(wait)
                now = self._clock()
                self._tokens += (now - self._stamp) * self.rate
                self._stamp = now
