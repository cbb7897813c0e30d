"""Which transport one relay session rides: UDP, or TCP (port 443) as the last resort. Sans I/O.

UDP is tried first. A session that is not bound over UDP within TCP_AFTER
(at once, when discovery found UDP to the server blocked) also connects over
TCP. TCP is never final: while on it, a UDP Bind goes out every so often
(UDP_RETRY, doubling to UDP_RETRY_MAX), and a Bound that comes back over UDP
moves the session back (a relay restart must not leave a pair on TCP for
good). The relay re-points our side to whichever transport bound last.

       start ──Bound over UDP──► UDP ◄──────────── Bound over UDP ──┐
         │                        │ not bound for TCP_AFTER           │
         └─ not bound for ────────┴──────────► TCP ── UDP Bind every UDP_RETRY..UDP_RETRY_MAX
            TCP_AFTER (0 if UDP is known blocked)
"""

from __future__ import annotations

TCP_AFTER = 1.0  # unbound over UDP this long: connect over TCP as well
TCP_RETRY = 5.0  # a failed TCP connect waits this long before the next
UDP_RETRY = 5.0  # while on TCP: the first UDP Bind this long after TCP came up...
UDP_RETRY_MAX = 60.0  # ...then doubling up to this


class RelayTransport:
    def __init__(self, now: float, *, udp: bool, tcp: bool, udp_blocked: bool = False):
        self.has_udp, self.has_tcp = udp, tcp
        self.since = now  # when the session last lost (or never had) a binding
        self.tcp_after = 0.0 if udp_blocked or not udp else TCP_AFTER
        self.on_tcp = False
        self.bound = False
        self.next_tcp_try = now
        self.udp_retry = UDP_RETRY
        self.next_udp_try = float("inf")

    def tcp_wanted(self, now: float) -> bool:
        """Should the shell open a TCP connection now?"""
        return (self.has_tcp and not self.on_tcp and not self.bound and now - self.since >= self.tcp_after
                and now >= self.next_tcp_try)

    def tcp_failed(self, now: float) -> None:
        self.next_tcp_try = now + TCP_RETRY

    def tcp_up(self, now: float) -> None:
        self.on_tcp = True
        self.udp_retry = UDP_RETRY
        self.next_udp_try = now + self.udp_retry

    def tcp_lost(self, now: float) -> None:
        self.on_tcp = False
        self.unbound(now)

    def unbound(self, now: float) -> None:
        if self.bound:
            self.since = now
        self.bound = False

    def udp_retry_due(self, now: float) -> bool:
        """While on TCP: is it time for a UDP Bind (the way back)?"""
        if not (self.on_tcp and self.has_udp) or now < self.next_udp_try:
            return False
        self.udp_retry = min(self.udp_retry * 2, UDP_RETRY_MAX)
        self.next_udp_try = now + self.udp_retry
        return True

    def on_bound(self, via_udp: bool, now: float) -> bool:
        """A Bound arrived. True: it came over UDP while we were on TCP, so drop the TCP connection."""
        self.bound = True
        if via_udp and self.on_tcp:
            self.on_tcp = False
            self.next_udp_try = float("inf")
            return True
        return False
