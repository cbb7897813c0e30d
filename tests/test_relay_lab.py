"""The relay process in the lab: one peer on UDP, the other on TCP 443, forwarding only with a valid ticket.

    a (198.51.100.30) --UDP 3480--> rly (198.51.100.20) <--TCP 443-- b (198.51.100.31)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time

import pytest

from hamachi.crypto.keys import KeyPair
from hamachi.crypto.ticket import Ticket, shared_key
from tests.lab import Topology, nodes

pytestmark = pytest.mark.lab

UDP_SIDE = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    relay = ("198.51.100.20", 3480)
    s.sendto(bytes([6, 0]) + bytes.fromhex(sys.argv[1]), relay)
    print("bound", s.recvfrom(100)[0][0] == 7, flush=True)
    sid = bytes.fromhex(sys.argv[2])
    for i in range(50):
        s.sendto(bytes([8]) + sid + b"MARKER-from-udp", relay)
        try:
            s.settimeout(0.2); data, _ = s.recvfrom(2000)
            if data[9:] == b"MARKER-from-tcp":
                print("got", data[9:].decode(), flush=True); break
        except OSError:
            pass
""")
TCP_SIDE = textwrap.dedent("""
    import socket, sys
    c = socket.create_connection(("198.51.100.20", 443), timeout=5)
    def send(m): c.sendall(len(m).to_bytes(2, "big") + m)
    def recv():
        n = int.from_bytes(c.recv(2), "big"); b = b""
        while len(b) < n: b += c.recv(n - len(b))
        return b
    send(bytes([6, 1]) + bytes.fromhex(sys.argv[1]))
    print("bound", recv()[0] == 7, flush=True)
    sid = bytes.fromhex(sys.argv[2])
    while True:
        m = recv()
        if m[0] == 8:
            print("got", m[9:].decode(), flush=True)
            send(bytes([8]) + sid + b"MARKER-from-tcp"); break
""")


def test_relay_forwards_between_udp_and_tcp_and_refuses_forged_tickets(make_lab, tmp_path):
    lab = make_lab(Topology(public=["a", "b", "c"], relays=["rly"], server=False))
    server = KeyPair.generate()
    rly = lab.host("rly")
    nodes.cli(rly, "relay", "init", "--dir", str(tmp_path), "--server-key", server.public_text())
    cfg = tmp_path / "relay.toml"
    cfg.write_text(cfg.read_text().replace("/run/hamachi/relay.sock", str(tmp_path / "relay.sock")))
    relay_pub = KeyPair.from_text((tmp_path / "relay.key").read_text()).public
    log = open(tmp_path / "relay.log", "ab")
    proc = rly.popen([*nodes.hamachi_cmd(), "relay", "run", "--config", str(cfg)], stdout=log, stderr=log,
                     cwd=str(nodes.ROOT))
    try:
        lab.wait_for(lambda: ":443" in rly.run(["ss", "-ltn"]).stdout, timeout=20, what="relay")
        sid = b"session1"
        key = shared_key(server, relay_pub)
        ticket = Ticket(sid, KeyPair.generate().public, KeyPair.generate().public, int(time.time()) + 60).encode(key)
        b = lab.host("b").popen([sys.executable, "-c", TCP_SIDE, ticket.hex(), sid.hex()], stdout=subprocess.PIPE,
                                text=True)
        time.sleep(0.5)  # let b bind first, so a's first data finds its peer bound
        a = lab.host("a").popen([sys.executable, "-c", UDP_SIDE, ticket.hex(), sid.hex()], stdout=subprocess.PIPE,
                                text=True)
        out_a, _ = a.communicate(timeout=30)
        out_b, _ = b.communicate(timeout=30)
        assert "bound True" in out_a and "got MARKER-from-tcp" in out_a
        assert "bound True" in out_b and "got MARKER-from-udp" in out_b
        # A forged ticket (signed with the wrong key) from c is dropped and never answered.
        forged = Ticket(b"session2", KeyPair.generate().public, KeyPair.generate().public,
                        int(time.time()) + 60).encode(b"k" * 32)
        probe = ("import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(1);"
                 "s.sendto(bytes([6,0])+bytes.fromhex(sys.argv[1]),('198.51.100.20',3480));\n"
                 "try:\n s.recvfrom(100);print('answered')\nexcept OSError:\n print('silent')")
        assert lab.host("c").run([sys.executable, "-c", probe, forged.hex()]).stdout.strip() == "silent"
        st = json.loads(nodes.cli(rly, "relay", "status", "--config", str(cfg), "--json").stdout)
        assert st["drops"].get("forged_ticket") == 1 and st["forwarded"] >= 2 and st["sessions"] == 1
    finally:
        nodes.stop(proc)


BLOCK = """table inet hamachi_test_block {{
  chain i {{ type filter hook input priority 0; ip saddr {ip} udp dport != 53 drop; }}
  chain o {{ type filter hook output priority 0; ip daddr {ip} udp dport != 53 drop; }}
}}
"""


def test_relay_dies_pair_moves_to_second_relay_then_upgrades_to_direct(lab_standard, tmp_path):
    """pub and fc-1 cannot reach each other over UDP (a firewall on pub): they meet at a relay.
    kill -9 that relay: they move to the other one without a restart. Lift the firewall: direct."""
    lab = lab_standard
    pub = lab.host("pub")
    dep = nodes.Deployment(lab, tmp_path)
    try:
        dep.add_relay("rly")
        dep.add_relay("rly2")
        dep.start_server()
        pub.run(["nft", "-f", "-"], input=BLOCK.format(ip=lab.public_ip("fc-1")))
        dep.add_client("pub", "alice")
        dep.add_client("fc-1", "bob")
        st = nodes.status(pub, dep.clients["alice"])
        assert set(st["relays"]["rtt_ms"]) == {"rly", "rly2"}  # measured over STUN to each relay
        dep.ask("pub", "alice", "create", "fallback")
        dep.ask("fc-1", "bob", "join", "fallback")
        bob_ip = dep.address("fc-1", "bob")

        def path():
            peers = dep.peer_status("pub", "alice")
            return (peers[0]["path"], peers[0]["relay"]) if peers else (None, None)

        lab.wait_for(lambda: dep.can_ping("pub", bob_ip), timeout=30, what="alice -> bob through a relay")
        kind, relay = path()
        assert kind == "relayed" and relay.split()[0] in ("rly", "rly2"), path()
        first = relay.split()[0]
        other = "rly2" if first == "rly" else "rly"
        # `client ping` says the path on every reply: here, which relay
        r = dep.ask("pub", "alice", "ping", "bob", "-n", "1")
        assert f"pong from bob ({bob_ip}) via relay {first} (" in r.stdout, r.stdout

        dep.kill_relay(first)
        t0 = time.monotonic()
        lab.wait_for(lambda: path()[1] and path()[1].split()[0] == other and dep.can_ping("pub", bob_ip),
                     timeout=60, what=f"the pair to move from {first} to {other}")
        moved = time.monotonic() - t0
        assert dep.can_ping("fc-1", dep.address("pub", "alice"))

        pub.run(["nft", "delete", "table", "inet", "hamachi_test_block"])
        t0 = time.monotonic()
        lab.wait_for(lambda: path()[0] == "direct", timeout=40, what="the pair to upgrade to direct")
        upgraded = time.monotonic() - t0
        assert dep.can_ping("pub", bob_ip)
        r = dep.ask("pub", "alice", "ping", "bob", "--until-direct", "--interval", "0.2")
        last = r.stdout.strip().splitlines()[-1]
        assert re.fullmatch(rf"pong from bob \({re.escape(bob_ip)}\) via {re.escape(lab.public_ip('fc-1'))}:\d+ "
                            r"\(direct\) in [\d.]+ ms", last), r.stdout
        print(f"relay failover {moved:.1f} s, upgrade to direct {upgraded:.1f} s")
    finally:
        pub.run(["nft", "delete", "table", "inet", "hamachi_test_block"], check=False)
        dep.stop()


def first_reply_after(host, ip: str, seconds: float = 30) -> float | None:
    """Ping `ip` every 0.2 s until the first reply; its wall-clock time (ping -D), or None."""
    r = host.run(["ping", "-D", "-n", "-c1", "-i0.2", "-W1", f"-w{int(seconds)}", ip], check=False,
                 timeout=seconds + 10)
    stamps = [float(line[1 : line.index("]")]) for line in r.stdout.splitlines()
              if line.startswith("[") and "bytes from" in line]
    return stamps[0] if stamps else None


UDP_TO_RELAY_BLOCK = """table inet hamachi_test_udp {{
  chain o {{ type filter hook output priority 0; ip daddr {ip} udp dport 3480 drop; }}
}}
"""


def test_site_with_no_udp_at_all_reaches_anyone_through_the_relay_over_tcp(make_lab, tmp_path):
    """Behind `nu` nothing but TCP 443 gets out, not even UDP to the server. The server listens on
    TCP 443 as well by default; the client, configured with the usual port, finds 443 itself;
    discovery says UDP is blocked, and the tunnel runs through the relay over TCP 443. Then the relay
    restarts while `a` cannot reach it over UDP: `a` moves to TCP, and back to UDP once it can."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.lab import Site

    lab = make_lab(Topology(public=["a"], relays=["rly"], sites=[Site("nu", "no-udp")]))
    dep = nodes.Deployment(lab, tmp_path)
    a = lab.host("a")
    try:
        dep.add_relay("rly")
        dep.start_server()
        lab.wait_for(lambda: ":443 " in lab.host("srv").run(["ss", "-ltn"]).stdout, timeout=10,
                     what="the server on TCP 443 too (https_port's default)")
        dep.add_client("a", "alice")
        dep.add_client("nu-1", "nick")  # the usual port 7777: the client falls back to 443 by itself
        st = nodes.status(lab.host("nu-1"), dep.clients["nick"])
        assert st["nat"]["udp"] is False and st["server_port"] == 443, st
        assert nodes.status(a, dep.clients["alice"])["server_port"] == 7777
        dep.ask("a", "alice", "create", "nudp")
        nick_ip, alice_ip = dep.address("nu-1", "nick"), dep.address("a", "alice")
        with ThreadPoolExecutor(1) as ex:
            reply = ex.submit(first_reply_after, a, nick_ip)
            time.sleep(0.5)  # the pings are under way
            joined = time.time()
            dep.ask("nu-1", "nick", "join", "nudp")
            first = reply.result()
        assert first is not None, "alice never reached nick through the relay"
        print(f"time to first packet, relayed over TCP: {first - joined:.2f} s")
        assert dep.can_ping("nu-1", alice_ip)
        (peer,) = dep.peer_status("nu-1", "nick")
        assert peer["path"] == "relayed" and peer["relay"] == "rly (tcp)", peer
        doctor = dep.ask("nu-1", "nick", "doctor").stdout
        assert "UDP to the server is blocked" in doctor and "relayed via rly (tcp)" in doctor
        assert "over TCP port 443" in doctor and "port 7777 did not answer" in doctor, doctor

        def alice_relay():
            peers = dep.peer_status("a", "alice")
            return peers[0]["relay"] if peers else None

        assert alice_relay() == "rly (udp)"
        # The relay restarts while UDP from alice to it is lost: alice falls back to TCP 443...
        a.run(["nft", "-f", "-"], input=UDP_TO_RELAY_BLOCK.format(ip=lab.host("rly").addr))
        dep.kill_relay("rly")
        dep.run_relay("rly")
        lab.wait_for(lambda: alice_relay() == "rly (tcp)" and dep.can_ping("a", nick_ip), timeout=60,
                     interval=0.5, what="alice on the relay over TCP")
        # ...and goes back to UDP once UDP works again (TCP is the last resort).
        a.run(["nft", "delete", "table", "inet", "hamachi_test_udp"])
        t0 = time.monotonic()
        lab.wait_for(lambda: alice_relay() == "rly (udp)", timeout=60, interval=0.5, what="alice back on UDP")
        print(f"back on UDP {time.monotonic() - t0:.1f} s after UDP to the relay works again")
        assert dep.can_ping("a", nick_ip) and dep.can_ping("nu-1", alice_ip)
    finally:
        a.run(["nft", "delete", "table", "inet", "hamachi_test_udp"], check=False)
        dep.stop()
