"""LAN party in the lab: `party host` on A, `party join` with no config on B and C (found by mDNS), a
remote friend R joins with the invite line; a rogue announcer D; wrong codes; Ctrl-C ends it all.

    inet ----------- party-nat 203.0.113.10 (full cone, hairpin; forwards the party ports to A)
      |                  LAN bridge 10.1.0.0/24: mDNS (224.0.0.251) stays on this bridge
      |            party-1 A .11 (host)  party-2 B .12  party-3 C .13  party-4 D .14 (rogue)
      |
    home-nat 203.0.113.11 (full cone) -- home-1 R 10.2.0.11 (remote friend, joins with the invite)

Every party process runs with its own --state-dir; A's is reused by a second `party host`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hamachi.crypto.keys import encode_key
from hamachi.crypto.partycode import JoinCode, admission_password
from hamachi.proto.party import parse_invite
from tests.lab import Site, Topology
from tests.lab.nodes import ROOT, hamachi_cmd, start_client, status, stop, write_key

pytestmark = [pytest.mark.lab, pytest.mark.slow]
FORWARDED = {"tcp": (7777, 7443), "udp": (3478, 3480, 39393)}


def _forward_ports(lab, nat: str, wan_ip: str, to: str) -> None:
    """A home router's port forwards to the party host, also from inside the LAN (hairpin)."""
    rules = []
    for proto, ports in FORWARDED.items():
        plist = ", ".join(map(str, ports))
        for iif in ("eth0", "lan"):
            rules.append(f'iifname "{iif}" ip daddr {wan_ip} {proto} dport {{ {plist} }} dnat ip to {to}')
    text = ("table ip labfwd {\n  chain pre {\n    type nat hook prerouting priority dstnat - 10; policy accept;\n"
            + "".join(f"    {r}\n" for r in rules) + "  }\n}\n")
    subprocess.run(["ip", "netns", "exec", lab.host(nat).ns, "nft", "-f", "-"], input=text, text=True, check=True)


class Party:
    def __init__(self, lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def state(self, who: str) -> Path:
        return self.tmp / f"state-{who}"

    def start(self, who: str, host: str, *args: str, stdin: str | None = None) -> subprocess.Popen:
        out = open(self.tmp / f"{who}.out", "wb")  # noqa: SIM115
        err = open(self.tmp / f"{who}.err", "wb")  # noqa: SIM115
        p = self.lab.host(host).popen([*hamachi_cmd(), "party", *args, "--state-dir", str(self.state(who))],
                                      stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                      stdout=out, stderr=err, cwd=str(ROOT))
        if stdin is not None:
            p.stdin.write(stdin.encode())
            p.stdin.close()
        self.procs[who] = p
        return p

    def out(self, who: str) -> str:
        return (self.tmp / f"{who}.out").read_text(errors="replace")

    def err(self, who: str) -> str:
        return (self.tmp / f"{who}.err").read_text(errors="replace")

    def wait_line(self, who: str, pattern: str, timeout: float = 40) -> re.Match:
        def found():
            p = self.procs[who]
            m = re.search(pattern, self.out(who), re.M)
            if m is None and p.poll() is not None:
                raise AssertionError(f"party {who} exited {p.returncode}:\n{self.out(who)}\n{self.err(who)[-3000:]}")
            return m
        return self.lab.wait_for(found, timeout=timeout, what=f"{pattern!r} from {who}", interval=0.2)

    def cli(self, who: str, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = self.lab.host(host).run([*hamachi_cmd(), "party", *args, "--state-dir", str(self.state(who))],
                                    check=False, cwd=str(ROOT), timeout=60)
        if check and r.returncode:
            raise AssertionError(f"party {' '.join(args)} on {host} failed {r.returncode}: {r.stderr}")
        return r

    def status(self, who: str, host: str) -> dict:
        return json.loads(self.cli(who, host, "status", "--json").stdout)


HOSTS = {"A": "party-1", "B": "party-2", "C": "party-3", "D": "party-4", "R": "home-1"}


@pytest.fixture(scope="module")
def party(tmp_path_factory):
    from tests.conftest import require_lab

    require_lab()
    from tests.lab import Lab

    lab = Lab(Topology(server=False, sites=[Site("party", "full-cone", hosts=4, hairpin=True),
                                            Site("home", "full-cone", hosts=1)]))
    lab.__enter__()
    pt = Party(lab, tmp_path_factory.mktemp("party"))
    try:
        _forward_ports(lab, "party-nat", lab.host("party-nat").addr, lab.host("party-1").addr)
        pt.public = lab.host("party-nat").addr
        yield pt
    finally:
        for p in pt.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in pt.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        lab.teardown()


def _overlay(st: dict) -> str:
    return next(a.split("/")[0] for a in st["addresses"] if "." in a)


def _ping(lab, host: str, ip: str) -> bool:
    return lab.host(host).run(["ping", "-c1", "-W1", ip], check=False).returncode == 0


def test_host_join_by_mdns_and_invite_all_ping_rogue_refused(party):
    pt, lab = party, party.lab
    pt.start("A", HOSTS["A"], "host", "--name", "frag", "--nick", "alice", "--public-address", pt.public)
    # D, on the same LAN, announces a party of the same name with its own key (a rogue announcer).
    pt.start("D", HOSTS["D"], "host", "--name", "frag", "--nick", "mallory")
    code = pt.wait_line("A", r"^join code: (\S+)$").group(1)
    invite = pt.wait_line("A", r"^from anywhere: hamachi party join '(\S+)'$").group(1)
    pt.wait_line("D", r"^join code: ")
    pt.code, pt.invite = code, invite
    # B: no name, code on stdin; C: names the party, code as an option; R (remote): the invite line.
    pt.start("B", HOSTS["B"], "join", "--nick", "bob", stdin=code + "\n")
    pt.start("C", HOSTS["C"], "join", "frag", "--nick", "carol", "--code", code)
    pt.start("R", HOSTS["R"], "join", invite, "--nick", "remy")
    for who in "BCR":
        pt.wait_line(who, r"^joined party 'frag' hosted by ", timeout=60)
    for who in "BC":  # both saw D's announcement and refused it, saying why
        err = pt.err(who)
        assert "refused: party 'frag' at 10.1.0.14 announces server key" in err, err
        assert "does not match the join code" in err, err
    # the rogue is out of the way for the rest (member counts, avahi)
    pt.procs["D"].send_signal(signal.SIGINT)
    assert pt.procs["D"].wait(timeout=20) == 0
    ips = {w: _overlay(pt.status(w, HOSTS[w])) for w in "ABCR"}
    assert len(set(ips.values())) == 4
    for src in "ABCR":
        for dst in "ABCR":
            if src != dst:
                lab.wait_for(lambda s=src, d=dst: _ping(lab, HOSTS[s], ips[d]), timeout=30,
                             what=f"{src} -> {dst} over the party", interval=0.5)
    # LAN pairs talk over LAN addresses: direct, no hairpin through the router, no relay.
    lan = re.compile(r"^10\.1\.0\.\d+:\d+$")
    for who in "ABC":
        rows = {m["nickname"]: m for m in pt.status(who, HOSTS[who])["members"]}
        assert set(rows) == {"alice", "bob", "carol", "remy"}, rows
        for other in ("alice", "bob", "carol"):
            if rows[other]["path"] != "(you)":
                assert rows[other]["path"] == "LAN" and lan.match(rows[other]["endpoint"]), rows[other]
    # the host's live list saw everyone arrive, with a path
    for nick in ("bob", "carol", "remy"):
        pt.wait_line("A", rf"^\+ {nick} joined: 100\.")
    pt.ips = ips


def test_avahi_sees_the_announcement(party):
    pt, lab = party, party.lab
    if not (shutil.which("avahi-daemon") and shutil.which("avahi-browse") and shutil.which("dbus-daemon")):
        pytest.skip("needs avahi-daemon, avahi-utils and dbus-daemon (scripts/setup installs them)")
    d = pt.tmp / "avahi"
    d.mkdir()
    (d / "bus.conf").write_text(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={d}/bus</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
</policy></busconfig>
""")
    (d / "avahi.conf").write_text("[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\nenable-dbus=yes\n"
                                  "[publish]\ndisable-publishing=yes\n")
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={d}/bus"}
    host = lab.host(HOSTS["C"])
    # A private bus and a private /run/avahi-daemon (for its pid file), so nothing touches the system's.
    script = (f"mount -t tmpfs none /run && mkdir -p /run/avahi-daemon && "
              f"dbus-daemon --config-file={d}/bus.conf --nofork & sleep 0.3; "
              f"exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f {d}/avahi.conf")
    daemon = host.popen(["unshare", "-m", "sh", "-c", script], env=env, stdout=open(d / "log", "wb"),
                        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def browse():
            r = host.run(["avahi-browse", "-rtp", "_hamachi._udp"], check=False, env=env, timeout=20)
            return r.stdout if "name=frag" in r.stdout else None
        text = lab.wait_for(browse, timeout=20, what="avahi-browse to show the party", interval=0.5)
        line = next(ln for ln in text.splitlines() if ln.startswith("=") and "name=frag" in ln)
        assert ";10.1.0.11;7777;" in line and '"members=4"' in line and "key=" in line, line
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGTERM)  # avahi-daemon and its private dbus-daemon
        daemon.wait(timeout=10)


def test_wrong_code_is_refused_and_slowed(party):
    pt, lab = party, party.lab
    # A mistyped code: refused on the spot (its fingerprint matches no announced key), nothing started.
    r = pt.cli("W", HOSTS["D"], "join", "frag", "--code", "7KQ2M-XH4PD", "--browse", "2", check=False)
    assert r.returncode == 1 and "does not match the join code" in r.stderr, r.stderr
    assert lab.host(HOSTS["D"]).run(["ip", "link", "show", "party0"], check=False).returncode != 0
    # An attacker who skips that check and guesses online: a real client on D, logged in to A's server
    # with the key from the announcement, sends admission proofs. The server slows each guess after three.
    inv = parse_invite(pt.invite)
    key = inv.announcement.server_key
    d = pt.tmp / "guesser"
    d.mkdir()
    write_key(d / "client.key")
    cfg = d / "client.toml"
    cfg.write_text(f'[client]\nname = "guesser"\nkey_file = "client.key"\napi_socket = "{d}/api.sock"\n'
                   f'[server]\naddress = "10.1.0.11:7777"\npublic_key = "{encode_key(key)}"\n'
                   '[tunnel]\ninterface = "guess0"\n')
    host = lab.host(HOSTS["D"])
    p = start_client(host, cfg)

    def guess(n: int) -> str:
        pw = admission_password(JoinCode(n, n), key)
        r = host.run([*hamachi_cmd(), "client", "join", "frag", "--password", pw, "--config", str(cfg)],
                     check=False, cwd=str(ROOT))
        assert r.returncode == 1, r.stdout
        return r.stderr.strip()

    try:
        lab.wait_for(lambda: status(host, cfg)["server_connected"], timeout=20, what="the guesser to log in")
        answers = [guess(i) for i in range(1, 5)]
        assert all("wrong password" in a for a in answers), answers
        assert "next try in 1 s" in answers[-1], answers
        assert "too many wrong passwords; try again in 1 s" in guess(5)
        time.sleep(1.2)
        assert "next try in 2 s" in guess(6)
        assert "try again in 2 s" in guess(7)
    finally:
        stop(p)


def _no_party_left(lab, who: str) -> None:
    h = lab.host(HOSTS[who])
    assert h.run(["ip", "link", "show", "party0"], check=False).returncode != 0, f"party0 still on {who}"
    pids = h.run(["ip", "netns", "pids", h.ns], check=False).stdout.split()
    cmds = []
    for pid in pids:
        try:
            cmds.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            pass
    assert not [c for c in cmds if b"hamachi" in c], (who, cmds)


def test_ctrl_c_ends_the_party_everywhere(party):
    pt, lab = party, party.lab
    before = pt.status("A", HOSTS["A"])
    pt.procs["A"].send_signal(signal.SIGINT)
    assert pt.procs["A"].wait(timeout=30) == 0
    for who in "BCR":  # members were told: each client stops, its party interface goes away
        pt.wait_line(who, r"^the party 'frag' has ended", timeout=20)
        assert pt.procs[who].wait(timeout=20) == 0
    for who in "ABCR":
        _no_party_left(lab, who)
    # a second `party host` from the same state: the same server key and the same address for the host
    pt.start("A", HOSTS["A"], "host", "--name", "frag", "--nick", "alice")
    code = pt.wait_line("A", r"^join code: (\S+)$").group(1)
    again = pt.status("A", HOSTS["A"])
    assert again["addresses"] == before["addresses"]
    assert parse_invite(again["invite"]).announcement.server_key == parse_invite(before["invite"]).announcement.server_key
    assert code != pt.code  # a new party, a new code
    pt.procs["A"].send_signal(signal.SIGINT)
    assert pt.procs["A"].wait(timeout=30) == 0
    _no_party_left(lab, "A")
