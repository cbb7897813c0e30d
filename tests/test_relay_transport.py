"""The relay transport policy (proto/relaypath.py): UDP first, TCP as the last resort, UDP retried."""

from __future__ import annotations

from hamachi.proto.relaypath import TCP_AFTER, TCP_RETRY, UDP_RETRY, UDP_RETRY_MAX, RelayTransport


def test_unbound_over_udp_connects_tcp_after_a_second():
    p = RelayTransport(100.0, udp=True, tcp=True)
    assert not p.tcp_wanted(100.0 + TCP_AFTER / 2)
    assert p.tcp_wanted(100.0 + TCP_AFTER)


def test_udp_known_blocked_goes_to_tcp_at_once():
    assert RelayTransport(100.0, udp=True, tcp=True, udp_blocked=True).tcp_wanted(100.0)


def test_bound_over_udp_never_wants_tcp():
    p = RelayTransport(100.0, udp=True, tcp=True)
    p.on_bound(True, 100.1)
    assert not p.tcp_wanted(200.0)


def test_failed_tcp_connect_waits_before_the_next():
    p = RelayTransport(0.0, udp=True, tcp=True, udp_blocked=True)
    p.tcp_failed(1.0)
    assert not p.tcp_wanted(1.0 + TCP_RETRY - 0.1) and p.tcp_wanted(1.0 + TCP_RETRY)


def test_on_tcp_udp_is_retried_with_backoff_and_a_udp_bound_leaves_tcp():
    p = RelayTransport(0.0, udp=True, tcp=True)
    p.tcp_up(2.0)
    p.on_bound(False, 2.1)
    assert not p.udp_retry_due(2.0 + UDP_RETRY - 0.1)
    assert p.udp_retry_due(2.0 + UDP_RETRY)
    t, gaps = 2.0 + UDP_RETRY, []
    for _ in range(6):
        nxt = p.next_udp_try
        gaps.append(nxt - t)
        t = nxt
        assert p.udp_retry_due(t)
    assert gaps[0] == 2 * UDP_RETRY and gaps[-1] == UDP_RETRY_MAX
    assert p.on_bound(True, t + 0.05)  # UDP answered: drop the TCP connection
    assert not p.on_tcp and not p.udp_retry_due(t + 1000)


def test_lost_tcp_connection_reconnects():
    p = RelayTransport(0.0, udp=True, tcp=True, udp_blocked=True)
    p.tcp_up(0.5)
    p.on_bound(False, 0.6)
    p.tcp_lost(10.0)
    assert p.tcp_wanted(10.0)
