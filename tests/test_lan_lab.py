"""LAN games over TUN networks: broadcast, multicast, mDNS and a real game server's LAN discovery.

    srv 198.51.100.10 (control)
    a alice ─┐
    b bob   ─┼─ network "lan" (TUN)        b bob ── d dave: network "club" (TUN)
    c carol ─┘

Every host runs a real hamachi client (TUN ham0). One deployment serves the
whole module. Payloads are sent a few times (UDP); each test asserts what a
player would see: the listener on the other hosts got the announcement.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.lab import Topology
from tests.lab.nodes import Deployment, status

pytestmark = pytest.mark.lab
HOSTS = (("a", "alice"), ("b", "bob"), ("c", "carol"), ("d", "dave"))


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    from tests.conftest import require_lab
    from tests.lab import Lab

    require_lab()
    lab = Lab(Topology(public=[h for h, _ in HOSTS]))
    lab.__enter__()
    d = Deployment(lab, tmp_path_factory.mktemp("lan"))
    try:
        d.start_server()
        for host, name in HOSTS:
            d.add_client(host, name)
        d.ask("a", "alice", "create", "lan")
        d.ask("b", "bob", "join", "lan")
        d.ask("c", "carol", "join", "lan")
        d.ask("b", "bob", "create", "club")
        d.ask("d", "dave", "join", "club")
        d.ip = {h: d.address(h, n) for h, n in HOSTS}
        d.ip6 = {h: status(lab.host(h), d.clients[n])["addresses"][1].split("/")[0] for h, n in HOSTS}
        for src, dst in (("a", "b"), ("a", "c"), ("b", "c"), ("b", "d")):
            lab.wait_for(lambda s=src, t=dst: d.can_ping(s, d.ip[t]), timeout=30, what=f"{src} -> {dst}")
        yield d
    finally:
        d.stop()
        lab.teardown()


def _listen(d, host: str, port: int, seconds: float, group: str | None = None, expect: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.lab.lanprobe", "listen", str(port), "--seconds", str(seconds),
           "--expect", str(expect)]
    if group:
        cmd += ["--group", group, "--iface-addr", d.ip[host]]
    p = d.lab.host(host).popen(cmd, stdout=subprocess.PIPE, text=True, cwd=str(_root()))
    assert json.loads(p.stdout.readline()) == {"ready": True}
    return p


def _received(p: subprocess.Popen) -> list[dict]:
    out, _ = p.communicate(timeout=30)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _root():
    from tests.lab.nodes import ROOT

    return ROOT


def _send(d, host: str, dst: str, port: int, payload: str, bind: bool = True) -> None:
    cmd = [sys.executable, "-m", "tests.lab.lanprobe", "send", dst, str(port), payload, "--count", "5"]
    if bind:
        cmd += ["--bind", d.ip[host]]
    d.lab.host(host).run(cmd, cwd=str(_root()))


def test_directed_and_limited_broadcast_reach_both_others_and_no_one_else(dep):
    d = dep
    listeners = {h: _listen(d, h, 40000, 8, expect=2) for h in "bc"}
    listeners["d"] = _listen(d, "d", 40000, 3)
    _send(d, "a", "100.127.255.255", 40000, "directed")  # the overlay's directed broadcast (100.64.0.0/10)
    _send(d, "a", "255.255.255.255", 40000, "limited")  # limited broadcast from a socket bound to the overlay
    got = {h: _received(p) for h, p in listeners.items()}
    for h in "bc":
        assert {m["data"] for m in got[h]} == {"directed", "limited"}, got[h]
        assert {m["src"] for m in got[h]} == {d.ip["a"]}
    # dave shares a network with bob only; bob never forwards what he received
    assert got["d"] == []


def test_multicast_reaches_group_listeners_on_ham0(dep):
    d = dep
    listeners = {h: _listen(d, h, 4445, 8, group="224.0.2.60", expect=1) for h in "bc"}
    # Minecraft's LAN announcement, from a socket that does not choose an interface: the multicast
    # route sends it through ham0.
    _send(d, "a", "224.0.2.60", 4445, "[MOTD]hamachi world[/MOTD][AD]25565[/AD]", bind=False)
    for h, p in listeners.items():
        got = _received(p)
        assert got and {m["src"] for m in got} == {d.ip["a"]}, (h, got)
        assert got[0]["data"].startswith("[MOTD]hamachi world")


def test_ping6_all_nodes_answered_by_every_member(dep):
    d = dep
    r = d.lab.host("a").run(["ping", "-6", "-c", "4", "-i", "0.3", "-w", "6", "ff02::1%ham0"], check=False)
    answered = {ip for h, ip in d.ip6.items() if f"from {ip}" in r.stdout}
    assert answered >= {d.ip6["b"], d.ip6["c"]}, r.stdout
    assert d.ip6["d"] not in answered


ZC_REGISTER = textwrap.dedent("""
    import socket, sys, time
    from zeroconf import IPVersion, ServiceInfo, Zeroconf
    ip = sys.argv[1]
    zc = Zeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)
    info = ServiceInfo("_hamachi-lan._udp.local.", "arena._hamachi-lan._udp.local.",
                       addresses=[socket.inet_aton(ip)], port=27960, properties={"map": "q3dm17"})
    zc.register_service(info)
    print("registered", flush=True)
    time.sleep(float(sys.argv[2]))
    zc.close()
""")
ZC_BROWSE = textwrap.dedent("""
    import sys, time
    from zeroconf import IPVersion, ServiceBrowser, Zeroconf
    zc = Zeroconf(interfaces=[sys.argv[1]], ip_version=IPVersion.V4Only)
    found = {}
    class L:
        def add_service(self, zc, type_, name):
            info = zc.get_service_info(type_, name, timeout=3000)
            if info:
                found[name] = (info.parsed_addresses(), info.port, info.properties.get(b"map"))
        def update_service(self, *a): pass
        def remove_service(self, *a): pass
    ServiceBrowser(zc, "_hamachi-lan._udp.local.", L())
    end = time.time() + float(sys.argv[2])
    while time.time() < end and not found:
        time.sleep(0.2)
    print(repr(found), flush=True)
    zc.close()
""")


def test_mdns_service_registered_on_a_is_discovered_on_b(dep):
    d = dep
    reg = d.lab.host("a").popen([sys.executable, "-c", ZC_REGISTER, d.ip["a"], "20"], stdout=subprocess.PIPE,
                                text=True)
    try:
        assert reg.stdout.readline().strip() == "registered"
        r = d.lab.host("b").run([sys.executable, "-c", ZC_BROWSE, d.ip["b"], "12"], timeout=40)
        assert "arena._hamachi-lan._udp.local." in r.stdout and d.ip["a"] in r.stdout and "27960" in r.stdout, \
            r.stdout + r.stderr
    finally:
        reg.kill()
        reg.wait(timeout=5)


def test_broadcast_counters_in_status(dep):
    d = dep
    st = status(d.lab.host("b"), d.clients["bob"])
    nets = {n["name"]: n for n in st["networks"]}
    assert nets["lan"]["mode"] == "tun" and nets["lan"]["broadcast"] is True
    assert nets["lan"]["rx"] > 0  # the broadcasts above
    assert set(nets) == {"lan", "club"}


def test_game_server_found_by_lan_broadcast_query(dep):
    """Sauerbraten's server (Debian cube2-server) on a, found from b by qstat's broadcast query."""
    import os
    import shutil

    server = shutil.which("cube2-server") or "/usr/games/cube2-server"
    if shutil.which("quakestat") is None or not os.path.exists(server):
        pytest.skip("needs Debian packages qstat and cube2-server (scripts/setup)")
    d = dep
    game = d.lab.host("a").popen([server, "-nhamachi LAN arena", "-mlocalhost"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, cwd="/tmp")
    try:
        def found():
            r = d.lab.host("b").run(["quakestat", "-cubes", "+100.127.255.255:28785", "-timeout", "2", "-xml"],
                                    check=False)
            return r.stdout if "hamachi LAN arena" in r.stdout else None

        out = d.lab.wait_for(found, timeout=20, what="quakestat to find the game server by broadcast")
        assert d.ip["a"] in out
    finally:
        game.kill()
        game.wait(timeout=5)
