"""A load generator for relay benchmarks: N sessions, one socket per side per session.

    python3 -m tests.lab.relayload recv --relay HOST:PORT --tickets HEX,HEX.. --seconds S
    python3 -m tests.lab.relayload send --relay HOST:PORT --tickets HEX,HEX.. --seconds S
    python3 -m tests.lab.relayload recv --direct PORT --sessions N --seconds S   (baseline, no relay)
    python3 -m tests.lab.relayload send --direct HOST:PORT --sessions N --seconds S

The receiver binds side 1 of every session, prints "ready", and counts the payload bytes that
arrive; the sender binds side 0 and sends 1400-byte payloads as fast as it can (GSO batches).
The receiver prints one JSON line: bytes, seconds between first and last datagram, Mbit/s.
"""

from __future__ import annotations

import argparse
import json
import select
import time

from hamachi.io.udp import UdpSocket
from hamachi.wire import relay as R

PAYLOAD = 1400
BATCH = 32


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def bind_all(socks, tickets, side, relay):
    pending = {i for i in range(len(socks))}
    deadline = time.monotonic() + 10
    while pending and time.monotonic() < deadline:
        for i in pending:
            socks[i].sock.sendto(R.Bind(side, bytes.fromhex(tickets[i])).encode(), relay)
        r, _, _ = select.select([s.sock for s in socks], [], [], 0.5)
        for i, s in enumerate(socks):
            if s.sock in r:
                got = s.recv_batch()
                if got and got[0] and got[0][0][:1] == bytes([R.TYPE_BOUND]):
                    pending.discard(i)
    if pending:
        raise SystemExit(f"{len(pending)} sessions never bound")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["send", "recv"])
    ap.add_argument("--relay")
    ap.add_argument("--tickets", default="")
    ap.add_argument("--direct")
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    tickets = [t for t in a.tickets.split(",") if t]
    n = len(tickets) if a.relay else a.sessions
    if a.mode == "recv":
        base = int(a.direct) if a.direct else 0
        socks = [UdpSocket("0.0.0.0", base + i if base else 0) for i in range(n)]
        if a.relay:
            bind_all(socks, tickets, 1, _hostport(a.relay))
        print("ready", flush=True)
        total, first, last = 0, None, None
        hdr = 9 if a.relay else 0
        end = time.monotonic() + a.seconds + 15
        ep = select.epoll()
        by_fd = {s.fileno(): s for s in socks}
        for fd in by_fd:
            ep.register(fd, select.EPOLLIN)
        while time.monotonic() < end:
            events = ep.poll(1.0)
            if not events and first is not None and time.monotonic() - last > 1.0:
                break
            for fd, _ in events:
                while True:
                    got = by_fd[fd].recv_batch()
                    if got is None:
                        break
                    now = time.monotonic()
                    for d in got[0]:
                        if len(d) > hdr:
                            total += len(d) - hdr
                    first = now if first is None else first
                    last = now
        secs = (last - first) if first is not None and last > first else 0.0
        print(json.dumps({"bytes": total, "seconds": round(secs, 3),
                          "mbit_s": round(total * 8 / secs / 1e6, 1) if secs else 0.0}), flush=True)
        return
    if a.relay:
        relay = _hostport(a.relay)
        socks = [UdpSocket("0.0.0.0", 0) for _ in range(n)]
        bind_all(socks, tickets, 0, relay)
        batches = [[R.data_header(bytes.fromhex(t)[1:9]) + bytes(PAYLOAD)] * BATCH for t in tickets]
        dests = [relay] * n
    else:
        host, port = _hostport(a.direct)
        socks = [UdpSocket("0.0.0.0", 0) for _ in range(n)]
        batches = [[bytes(PAYLOAD + 9)] * BATCH for _ in range(n)]
        dests = [(host, port + i) for i in range(n)]
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        for s, b, d in zip(socks, batches, dests, strict=True):
            s.send_batch(b, d)


if __name__ == "__main__":
    main()
