"""The network lab: network namespaces joined by veth, NAT routers made with nftables.

                         +-------------------- inet --------------------+
                         |  bridge br0: 198.51.100.1/24, 203.0.113.1/24 |
                         +----+--------+--------+---------+-------------+
                              |        |        |         |
                 srv .10 & .11 |  rly .20|  pub .30..| <site>-nat 203.0.113.N (WAN)
                                                            |  NAT (nftables)
                                                     LAN 10.K.0.1/24 (bridge)
                                                      |            |
                                                  <site>-1     <site>-2   10.K.0.11, .12

    cgnat: inet -- cgn (203.0.113.N, masquerade) -- 172.30.0.0/24 -- cg1-nat, cg2-nat -- hosts

Every namespace is named PREFIX-NAME, where PREFIX = "hl<pid>x<hex>" is unique
per run and carries the owner's PID, so a later run can remove the leftovers
of a crashed one (its PID is gone). Nothing is added to the root namespace:
veth pairs are created directly inside their namespaces. Teardown always
runs: on exit from the `with` block (exceptions included), on SIGINT/SIGTERM,
and at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.lab.nat import loss_ruleset, ruleset

SERVER_ADDRS = ("198.51.100.10", "198.51.100.11")
RELAY_ADDRS = {"rly": "198.51.100.20", "rly2": "198.51.100.21"}
PREFIX_RE = re.compile(r"^hl(\d+)x[0-9a-f]+-")


@dataclass(frozen=True)
class Site:
    """A NAT router with `hosts` hosts behind it (named NAME-1, NAME-2, ...)."""

    name: str
    nat: str = "port-restricted"
    hosts: int = 1
    hairpin: bool = False
    behind: str | None = None  # name of a CGN this site's NAT sits behind


@dataclass(frozen=True)
class Topology:
    public: tuple[str, ...] = ()
    sites: tuple[Site, ...] = ()
    relays: tuple[str, ...] = ()
    cgns: tuple[str, ...] = ()
    server: bool = True

    def __init__(self, public=(), sites=(), relays=(), cgns=(), server=True):
        object.__setattr__(self, "public", tuple(public))
        object.__setattr__(self, "sites", tuple(sites))
        object.__setattr__(self, "relays", tuple(relays))
        object.__setattr__(self, "cgns", tuple(cgns))
        object.__setattr__(self, "server", server)

    @classmethod
    def pair(cls) -> Topology:
        """Two public hosts `a` and `b` plus the server host: the cheapest lab."""
        return cls(public=["a", "b"])

    @classmethod
    def standard(cls) -> Topology:
        """One host of every NAT kind of the acceptance matrix."""
        return cls(
            public=["pub"],
            relays=["rly", "rly2"],
            cgns=["cgn"],
            sites=[
                Site("fc", "full-cone"),
                Site("rc", "restricted"),
                Site("pr", "port-restricted"),
                Site("pr2", "port-restricted"),
                Site("sy", "symmetric"),
                Site("sy2", "symmetric"),
                Site("cg1", "port-restricted", behind="cgn"),
                Site("cg2", "port-restricted", behind="cgn"),
                Site("hp", "port-restricted", hosts=2, hairpin=True),
                Site("nh", "port-restricted", hosts=2, hairpin=False),
                Site("uh", "udp-hostile"),
            ],
        )


@dataclass
class Host:
    name: str
    ns: str
    addrs: list[str]
    lab: Lab = field(repr=False)
    gateway: str | None = None

    @property
    def addr(self) -> str:
        return self.addrs[0]

    def run(self, cmd: list[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], capture_output=True, text=True,
                              check=check, timeout=timeout, **kw)

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], **kw)
        self.lab._procs.append(p)
        return p


_live_labs: list[Lab] = []


def _cleanup_all(*_args) -> None:
    for lab in list(_live_labs):
        lab.teardown()


def _on_signal(signum, frame):
    _cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


atexit.register(_cleanup_all)


def _sh(cmd: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}\n{(input or '')[:2000]}")
    return r


def list_namespaces() -> list[str]:
    r = _sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def cleanup_stale() -> list[str]:
    """Remove lab namespaces whose owning process is gone (a crashed earlier run)."""
    removed = []
    for ns in list_namespaces():
        m = PREFIX_RE.match(ns)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _kill_ns_pids(ns)
            _sh(["ip", "netns", "del", ns], check=False)
            removed.append(ns)
    return removed


def _kill_ns_pids(ns: str) -> None:
    r = _sh(["ip", "netns", "pids", ns], check=False)
    for pid in r.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class Lab:
    """Builds a Topology in namespaces; use as a context manager."""

    def __init__(self, topo: Topology, prefix: str | None = None):
        self.topo = topo
        self.prefix = prefix or f"hl{os.getpid()}x{secrets.token_hex(2)}"
        self.hosts: dict[str, Host] = {}
        self._public: dict[str, str] = {}
        self._procs: list[subprocess.Popen] = []
        self._namespaces: list[str] = []
        self.build_seconds = 0.0

    # -- context management -------------------------------------------------
    def __enter__(self) -> Lab:
        self.build()
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    # -- public helpers -----------------------------------------------------
    def host(self, name: str) -> Host:
        return self.hosts[name]

    def public_ip(self, name: str) -> str:
        return self._public[name]

    @staticmethod
    def wait_for(predicate: Callable[[], object], timeout: float = 10, what: str = "condition",
                 interval: float = 0.05):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def set_loss(self, name: str, percent: int) -> None:
        self.clear_loss(name)
        if percent > 0:
            _sh(["ip", "netns", "exec", self.hosts[name].ns, "nft", "-f", "-"], input=loss_ruleset("eth0", percent))

    def clear_loss(self, name: str) -> None:
        _sh(["ip", "netns", "exec", self.hosts[name].ns, "nft", "delete", "table", "inet", "labloss"], check=False)

    def set_rate(self, name: str, mbit: float) -> None:
        self.clear_rate(name)
        _sh(["ip", "-n", self.hosts[name].ns, "link", "set", "eth0", "up"])
        _sh(["tc", "-n", self.hosts[name].ns, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate",
             f"{mbit}mbit", "burst", "64kb", "latency", "50ms"])

    def clear_rate(self, name: str) -> None:
        _sh(["tc", "-n", self.hosts[name].ns, "qdisc", "del", "dev", "eth0", "root"], check=False)

    # -- building -----------------------------------------------------------
    def _ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def build(self) -> None:
        t0 = time.monotonic()
        cleanup_stale()
        _live_labs.append(self)
        if not _live_labs[:-1]:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                try:
                    signal.signal(sig, _on_signal)
                except ValueError:  # not the main thread
                    pass
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        self.build_seconds = time.monotonic() - t0

    def _build(self) -> None:
        topo = self.topo
        nodes: list[str] = ["inet"]
        if topo.server:
            nodes.append("srv")
        nodes += list(topo.relays) + list(topo.public) + list(topo.cgns)
        for s in topo.sites:
            nodes.append(f"{s.name}-nat")
            nodes += [f"{s.name}-{i}" for i in range(1, s.hosts + 1)]
        root_batch = [f"netns add {self._ns(n)}" for n in nodes]
        _sh(["ip", "-batch", "-"], input="\n".join(root_batch) + "\n")
        self._namespaces = [self._ns(n) for n in nodes]

        per_ns: dict[str, list[str]] = {n: ["link set lo up"] for n in nodes}
        sysctl_fwd: list[str] = ["inet"]
        inet = per_ns["inet"]
        inet += ["link add br0 type bridge", "link set br0 up",
                 "addr add 198.51.100.1/24 dev br0", "addr add 203.0.113.1/24 dev br0"]
        link_cmds: list[str] = []
        port = 0

        def uplink(node: str, bridge_ns: str, bridge: str, addrs: list[str], plen: int, gw: str) -> None:
            nonlocal port
            port += 1
            peer = f"p{port}"
            link_cmds.append(f"link add eth0 netns {self._ns(node)} type veth peer name {peer} "
                             f"netns {self._ns(bridge_ns)}")
            per_ns[bridge_ns].append(f"link set {peer} master {bridge} up")
            per_ns[node] += [f"addr add {a}/{plen} dev eth0" for a in addrs]
            per_ns[node] += ["link set eth0 up", f"route add default via {gw}"]

        def add_host(name: str, addrs: list[str], bridge_ns: str, bridge: str, plen: int, gw: str,
                     public: str | None) -> None:
            uplink(name, bridge_ns, bridge, addrs, plen, gw)
            self.hosts[name] = Host(name, self._ns(name), addrs, self, gw)
            self._public[name] = public or addrs[0]

        self.hosts["inet"] = Host("inet", self._ns("inet"), ["198.51.100.1", "203.0.113.1"], self)
        if topo.server:
            add_host("srv", list(SERVER_ADDRS), "inet", "br0", 24, "198.51.100.1", None)
        for i, r in enumerate(topo.relays):
            add_host(r, [RELAY_ADDRS.get(r, f"198.51.100.{22 + i}")], "inet", "br0", 24, "198.51.100.1", None)
        for i, p in enumerate(topo.public):
            add_host(p, [f"198.51.100.{30 + i}"], "inet", "br0", 24, "198.51.100.1", None)

        wan_n = 10
        nft_jobs: list[tuple[str, str]] = []
        cgn_inner: dict[str, int] = {}
        for ci, c in enumerate(topo.cgns):
            wan_ip = f"203.0.113.{wan_n}"
            wan_n += 1
            add_host(c, [wan_ip], "inet", "br0", 24, "203.0.113.1", None)
            per_ns[c] += ["link add lan type bridge", "link set lan up", f"addr add 172.30.{ci}.1/24 dev lan"]
            sysctl_fwd.append(c)
            cgn_inner[c] = ci
            # RFC 6888 REQ-9: a carrier-grade NAT must hairpin, so two subscribers behind it can meet.
            nft_jobs.append((c, ruleset("port-restricted", "eth0", "lan", wan_ip, f"172.30.{ci}.0/24", hairpin=True)))
        cgn_next: dict[str, int] = {c: 10 for c in topo.cgns}

        for si, s in enumerate(topo.sites):
            nat = f"{s.name}-nat"
            if s.behind:
                ci = cgn_inner[s.behind]
                wan_ip = f"172.30.{ci}.{cgn_next[s.behind]}"
                cgn_next[s.behind] += 1
                add_host(nat, [wan_ip], s.behind, "lan", 24, f"172.30.{ci}.1", None)
                self._public[nat] = self._public[s.behind]
            else:
                wan_ip = f"203.0.113.{wan_n}"
                wan_n += 1
                add_host(nat, [wan_ip], "inet", "br0", 24, "203.0.113.1", None)
            lan_net = f"10.{si + 1}.0.0/24"
            per_ns[nat] += ["link add lan type bridge", "link set lan up", f"addr add 10.{si + 1}.0.1/24 dev lan"]
            sysctl_fwd.append(nat)
            for h in range(1, s.hosts + 1):
                add_host(f"{s.name}-{h}", [f"10.{si + 1}.0.{10 + h}"], nat, "lan", 24, f"10.{si + 1}.0.1",
                         self._public[nat])
            nft_jobs.append((nat, ruleset(s.nat, "eth0", "lan", wan_ip, lan_net, hairpin=s.hairpin,
                                          allow_udp_to=() if s.nat == "no-udp" else SERVER_ADDRS)))

        # Bridges and their addresses first, then veth pairs, then the rest.
        for n in nodes:
            bridge_cmds = [c for c in per_ns[n] if "type bridge" in c or c.startswith("link set lo")]
            if bridge_cmds:
                _sh(["ip", "-n", self._ns(n), "-batch", "-"], input="\n".join(bridge_cmds) + "\n")
        _sh(["ip", "-batch", "-"], input="\n".join(link_cmds) + "\n")
        for n in nodes:
            rest = [c for c in per_ns[n] if not ("type bridge" in c or c.startswith("link set lo"))]
            # bridge ports and addresses before routes
            rest.sort(key=lambda c: 1 if c.startswith("route") else 0)
            if rest:
                _sh(["ip", "-n", self._ns(n), "-batch", "-"], input="\n".join(rest) + "\n")
        for n in sysctl_fwd:
            _sh(["ip", "netns", "exec", self._ns(n), "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            # With br_netfilter loaded, a DNATed frame would be bridged straight back to the
            # port it came from (and dropped) instead of being routed: keep NAT at layer 3.
            _sh(["ip", "netns", "exec", self._ns(n), "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"],
                check=False)
        for n, text in nft_jobs:
            _sh(["ip", "netns", "exec", self._ns(n), "nft", "-f", "-"], input=text)

    # -- teardown -----------------------------------------------------------
    def teardown(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                try:
                    p.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3
        for p in self._procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self._procs.clear()
        for ns in self._namespaces:
            _kill_ns_pids(ns)
        if self._namespaces:
            _sh(["ip", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in self._namespaces), check=False)
            # -batch stops at the first error; make sure every namespace is gone.
            for ns in set(self._namespaces) & set(list_namespaces()):
                _sh(["ip", "netns", "del", ns], check=False)
        self._namespaces = []
        if self in _live_labs:
            _live_labs.remove(self)
