"""Token buckets keyed by source, driven by `now` (no clock of their own)."""

from __future__ import annotations


class RateLimiter:
    """Allows `rate` events per second per key, with bursts up to `burst`."""

    def __init__(self, rate: float, burst: float, max_keys: int = 65536):
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[object, tuple[float, float]] = {}
        self._expired_at = float("-inf")

    def allow(self, key: object, now: float) -> bool:
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            # A flood from many (spoofed) sources: scan at most once per `now` value, and when
            # the table is still full refuse newcomers rather than grow without bound.
            if now > self._expired_at:
                self._expired_at = now
                self.expire(now)
            if len(self._buckets) >= self.max_keys:
                return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def expire(self, now: float) -> None:
        """Forget keys whose buckets have refilled (they are as if new)."""
        full = self.burst / self.rate if self.rate > 0 else 0.0
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full}
