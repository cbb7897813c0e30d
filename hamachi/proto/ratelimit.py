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


class GuessThrottle:
    """Slows down password (join code) guessing: a growing wait per source, and a global budget.

    The first `free` wrong guesses from a source cost nothing extra; each later one doubles the
    wait before that source may guess again (1 s, 2 s, 4 s ... up to `cap`). A right guess clears
    the source. Across all sources at most `global_rate` wrong guesses per second are checked
    (bursts of `global_burst`), so many addresses do not multiply an attacker's speed.
    """

    def __init__(self, free: int = 3, cap: float = 300.0, global_rate: float = 1.0, global_burst: float = 20.0,
                 max_keys: int = 65536):
        self.free = free
        self.cap = cap
        self.max_keys = max_keys
        self._failures: dict[object, tuple[int, float]] = {}  # source -> (wrong guesses, may guess again at)
        self._global = RateLimiter(global_rate, global_burst)
        self.refused = 0

    def wait(self, source: object, now: float) -> float:
        """Seconds `source` must wait before its next guess is even checked (0: go ahead)."""
        _, until = self._failures.get(source, (0, now))
        if until > now:
            self.refused += 1
            return until - now
        if not self._global.allow("*", now):
            self.refused += 1
            return 1.0
        return 0.0

    def failed(self, source: object, now: float) -> float:
        """Record a wrong guess; returns the wait it earned."""
        n, _ = self._failures.get(source, (0, now))
        n += 1
        delay = 0.0 if n <= self.free else min(self.cap, 2.0 ** (n - self.free - 1))
        if len(self._failures) >= self.max_keys and source not in self._failures:
            self._failures = {k: v for k, v in self._failures.items() if v[1] > now}
        self._failures[source] = (n, now + delay)
        return delay

    def succeeded(self, source: object) -> None:
        self._failures.pop(source, None)
