"""Prometheus metrics: a real server and a real relay process on loopback, scraped with a real HTTP
GET and parsed with prometheus_client's own parser. (The client's exporter is scraped in the lab:
tests/test_operator_lab.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hamachi.crypto.keys import KeyPair
from hamachi.crypto.ticket import Ticket, shared_key
from hamachi.wire import relay as R
from tests.test_admin_e2e import SERVER_TOML, Clients, _wait


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """GET /metrics -> {sample name: {labels tuple: value}} (parsed by prometheus_client)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def write_key(path) -> KeyPair:
    kp = KeyPair.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (kp.private_text() + "\n").encode())
    os.close(fd)
    return kp


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_server_metrics_are_scraped_and_parsed(tmp_path):
    port, mport = free_port(), free_port()
    kp = write_key(tmp_path / "server.key")
    cfg = tmp_path / "server.toml"
    cfg.write_text(SERVER_TOML.format(port=port, extra=f'metrics = "127.0.0.1:{mport}"\n'
                                      '[[deny]]\ncidr = "127.0.0.2/32"\nscopes = ["login"]\nreason = "x"\n'))
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hamachi", "server", "run", "--config", str(cfg), "-v"],
                            stdout=log, stderr=subprocess.STDOUT)
    clients = Clients(port, kp.public)
    try:
        _wait(lambda: (tmp_path / "server.sock").exists(), what="the server's local socket")
        alice, bob = clients.start("alice"), clients.start("bob")
        _wait(lambda: alice.connected and bob.connected, what="two logins")
        assert clients.request("alice", "create", network="lan").ok
        assert clients.request("bob", "join", network="lan").ok
        assert not clients.request("bob", "join", network="nowhere").ok
        m = _wait(lambda: (x := scrape(mport))["hamachi_server_deltas_sent_total"][()] >= 1 and x,
                  what="a delta in the metrics")
        assert m["hamachi_server_online_clients"][()] == 2
        assert m["hamachi_server_logins_total"][()] == 2
        assert m["hamachi_server_messages_sent_total"][(("type", "PeerUp"),)] >= 2
        assert m["hamachi_server_fanout_latency_seconds_count"][()] >= 1
        assert m["hamachi_server_fanout_latency_seconds_bucket"][(("le", "+Inf"),)] == \
            m["hamachi_server_fanout_latency_seconds_count"][()]
        # A refusal is counted by reason: a suspension refuses bob's next login.
        r = subprocess.run([sys.executable, "-m", "hamachi", "server", "admin", "suspend", "bob", "--reason", "t",
                            "--config", str(cfg), "--json"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        m = _wait(lambda: (x := scrape(mport))["hamachi_server_refusals_total"].get((("reason", "suspended"),))
                  and x, what="the refusal counted")
        assert m["hamachi_server_logouts_total"][(("reason", "suspended"),)] == 1
        assert m["hamachi_server_online_clients"][()] == 1
        # Only GET /metrics.
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/nothing", timeout=10)
        assert exc.value.code == 404
    finally:
        clients.close()
        stop(proc)
        log.close()


def test_relay_metrics_count_sessions_bytes_and_quota_drops(tmp_path):
    udp, mport = free_port(socket.SOCK_DGRAM), free_port()
    server = KeyPair.generate()
    relay = write_key(tmp_path / "relay.key")
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'[relay]\nkey_file = "relay.key"\nserver_public_key = "{server.public_text()}"\n'
                   f'listen_udp = "127.0.0.1:{udp}"\nlisten_tcp = ""\napi_socket = "{tmp_path}/relay.sock"\n'
                   f'metrics = "127.0.0.1:{mport}"\n')
    log = open(tmp_path / "relay.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hamachi", "relay", "run", "--config", str(cfg), "-v"],
                            stdout=log, stderr=subprocess.STDOUT)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        _wait(lambda: (tmp_path / "relay.sock").exists(), what="the relay's local socket")
        sid = b"metrics1"
        # 2000 B/s: a burst of 20 x 1000-byte datagrams gets about two through, the rest are quota drops.
        ticket = Ticket(sid, KeyPair.generate().public, KeyPair.generate().public, int(time.time()) + 60,
                        rate=2000).encode(shared_key(server, relay.public))
        for side, s in enumerate(socks):
            s.settimeout(5)
            s.sendto(R.Bind(side, ticket).encode(), ("127.0.0.1", udp))
            assert s.recvfrom(100)[0][0] == R.TYPE_BOUND
        for _ in range(20):
            socks[0].sendto(bytes([R.TYPE_DATA]) + sid + b"x" * 1000, ("127.0.0.1", udp))
        socks[1].recvfrom(2000)
        m = _wait(lambda: (x := scrape(mport))["hamachi_relay_quota_drops_total"][(("quota", "rate"),)] >= 10
                  and x, what="quota drops")
        assert m["hamachi_relay_sessions"][()] == 1
        assert m["hamachi_relay_forwarded_packets_total"][()] >= 1
        assert m["hamachi_relay_forwarded_bytes_total"][()] >= 1009
        assert m["hamachi_relay_drops_total"][(("reason", "rate_limited"),)] >= 10
    finally:
        for s in socks:
            s.close()
        stop(proc)
        log.close()
