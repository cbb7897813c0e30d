"""The relay process in the lab: one peer on UDP, the other on TCP 443, forwarding only with a valid ticket.

    a (198.51.100.30) --UDP 3480--> rly (198.51.100.20) <--TCP 443-- b (198.51.100.31)
"""

from __future__ import annotations

import json
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
