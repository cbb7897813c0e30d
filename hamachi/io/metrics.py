"""Prometheus metrics over HTTP, opt-in (`metrics = true` or "HOST:PORT" in a role's config).

Each scrape asks the daemon for a fresh snapshot on its own event loop (so
the numbers are read where they are written, never from another thread), and
`prometheus_client` renders it in the text exposition format. The daemons
keep plain counters; this module only names and labels them.

    GET /metrics  ->  200, text/plain; version=0.0.4
    anything else ->  404 (or 405 for a method other than GET)
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from hamachi.io.instance import binding

log = logging.getLogger("hamachi.metrics")
MAX_REQUEST = 8192


class Histogram:
    """Observations counted into cumulative buckets (seconds); read by `family()`."""

    def __init__(self, bounds: Iterable[float]):
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        running, buckets = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets, self.total


def gauge(name: str, doc: str, value: float | None = None, labels: tuple[str, ...] = (),
          samples: Iterable[tuple[tuple[str, ...], float]] = ()) -> GaugeMetricFamily:
    if not labels:
        return GaugeMetricFamily(name, doc, value=value or 0)
    f = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, v in samples:
        f.add_metric(list(values), v)
    return f


def counter(name: str, doc: str, value: float | None = None, labels: tuple[str, ...] = (),
            samples: Iterable[tuple[tuple[str, ...], float]] = ()) -> CounterMetricFamily:
    if not labels:
        return CounterMetricFamily(name, doc, value=value or 0)
    f = CounterMetricFamily(name, doc, labels=list(labels))
    for values, v in samples:
        f.add_metric(list(values), v)
    return f


def histogram(name: str, doc: str, snap: tuple[list[tuple[str, int]], float]) -> HistogramMetricFamily:
    buckets, total = snap
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def by_reason(name: str, doc: str, counts: dict, label: str = "reason") -> CounterMetricFamily:
    return counter(name, doc, labels=(label,), samples=(((str(k),), v) for k, v in sorted(counts.items())))


class _Latest:
    """A collector that yields whatever families the last snapshot made."""

    def __init__(self) -> None:
        self.families: list = []

    def collect(self):
        yield from self.families


class MetricsServer:
    def __init__(self, families: Callable[[], Awaitable[list]]):
        self.families = families
        self.registry = CollectorRegistry(auto_describe=False)
        self._latest = _Latest()
        self.registry.register(self._latest)
        self.server: asyncio.AbstractServer | None = None
        self.scrapes = 0

    async def start(self, host: str, port: int) -> MetricsServer:
        self.server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST)
        log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", port)
        return self

    async def render(self) -> bytes:
        self._latest.families = await self.families()
        return generate_latest(self.registry)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            while True:  # the headers: read and ignore
                line = await asyncio.wait_for(reader.readline(), 5.0)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.split()
            if len(parts) < 2 or parts[0] != b"GET":
                status, body, ctype = "405 Method Not Allowed", b"only GET\n", "text/plain"
            elif parts[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
                status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
            else:
                status, body, ctype = "200 OK", await self.render(), CONTENT_TYPE_LATEST
                self.scrapes += 1
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass  # a slow or oversized request: just close
        except Exception:  # a bug in a snapshot must not take the daemon down
            log.exception("metrics scrape failed")
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def serve(endpoint, key: str, families: Callable[[], Awaitable[list]]) -> MetricsServer | None:
    """Start the exporter on `endpoint` (a config Endpoint; `key` names its setting), or do
    nothing when it is None."""
    if endpoint is None:
        return None
    with binding("metrics (HTTP)", key, endpoint.port):
        return await MetricsServer(families).start(endpoint.host, endpoint.port)
