"""Run real hamachi daemons in lab hosts: configs, start, wait for their local API, status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from hamachi.crypto.keys import KeyPair
from tests.lab.topology import Host, Lab

ROOT = Path(__file__).resolve().parent.parent.parent


def hamachi_cmd() -> list[str]:
    """The program under test: the zipapp when HAMACHI_PYZ points at one, else this checkout."""
    pyz = os.environ.get("HAMACHI_PYZ")
    if pyz:
        return [sys.executable, pyz]
    return [sys.executable, "-m", "hamachi"]


def write_key(path: Path) -> KeyPair:
    kp = KeyPair.generate()
    path.write_text(kp.private_text() + "\n")
    os.chmod(path, 0o600)
    return kp


def static_client_config(directory: Path, name: str, address: str, peers: list[dict], *, port: int = 51820,
                         offload: bool = True, mtu: int = 1420, keepalive: float = 0) -> tuple[Path, KeyPair]:
    directory.mkdir(parents=True, exist_ok=True)
    kp = write_key(directory / f"{name}.key")
    peer_text = ""
    for p in peers:
        peer_text += textwrap.dedent(f"""
            [[peer]]
            name = "{p['name']}"
            public_key = "{p['public_key']}"
            addresses = {json.dumps(p['addresses'])}
            endpoint = "{p['endpoint']}"
            keepalive = {p.get('keepalive', keepalive)}
            """)
    cfg = directory / f"{name}.toml"
    cfg.write_text(textwrap.dedent(f"""
        [client]
        name = "{name}"
        key_file = "{name}.key"
        api_socket = "{directory}/{name}.sock"
        [tunnel]
        interface = "ham0"
        address = "{address}"
        listen_port = {port}
        offload = {str(offload).lower()}
        mtu = {mtu}
        """) + peer_text)
    return cfg, kp


def static_pair(lab: Lab, directory: Path, a: str = "a", b: str = "b", offload: bool = True,
                keepalive: float = 0) -> dict[str, Path]:
    """Configs for a two-host static tunnel: `a` is 100.64.0.1, `b` is 100.64.0.2."""
    keys, cfgs = {}, {}
    for me, mine in ((a, "100.64.0.1/24"), (b, "100.64.0.2/24")):
        cfgs[me], keys[me] = static_client_config(directory / me, me, mine, [], offload=offload)
    for me, other, theirs in ((a, b, "100.64.0.2/32"), (b, a, "100.64.0.1/32")):
        with open(cfgs[me], "a") as fh:
            fh.write(textwrap.dedent(f"""
                [[peer]]
                name = "{other}"
                public_key = "{keys[other].public_text()}"
                addresses = ["{theirs}"]
                endpoint = "{lab.host(other).addr}:51820"
                keepalive = {keepalive}
                """))
    return cfgs


def start_client(host: Host, cfg: Path, log: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """`env`: extra environment variables for this daemon only (HAMACHI_NO_C=1, say)."""
    out = open(log or cfg.with_suffix(".log"), "ab")
    p = host.popen([*hamachi_cmd(), "client", "up", "--config", str(cfg), "-v"], stdout=out, stderr=out,
                   cwd=str(ROOT), env={**os.environ, **env} if env else None)
    host.lab.wait_for(lambda: p.poll() is not None or status(host, cfg, check=False) is not None, timeout=20,
                      what=f"hamachi client on {host.name} to serve its local API")
    if p.poll() is not None:
        raise RuntimeError(f"hamachi client on {host.name} exited {p.returncode}: "
                           f"{Path(out.name).read_text()[-2000:]}")
    return p


def status(host: Host, cfg: Path, check: bool = True) -> dict | None:
    r = host.run([*hamachi_cmd(), "client", "status", "--config", str(cfg), "--json"], check=False, cwd=str(ROOT))
    if r.returncode != 0:
        if check:
            raise RuntimeError(f"status failed on {host.name}: {r.stderr}")
        return None
    return json.loads(r.stdout)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def cli(host, *args, check=True):
    r = host.run([*hamachi_cmd(), *args], check=False, cwd=str(ROOT))
    if check and r.returncode != 0:
        raise AssertionError(f"hamachi {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r


class Deployment:
    """A control server on `srv` and clients on lab hosts, all real processes."""

    def __init__(self, lab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        srv = lab.host("srv")
        out = json.loads(cli(srv, "server", "init", "--dir", str(tmp / "srv"), "--public-address", "198.51.100.10",
                             "--json").stdout)
        self.server_key = out["public_key"]
        cfg = tmp / "srv" / "server.toml"
        # The lab's networks (14 NAT hosts, bursts of creates) are bigger than the free plan allows.
        cfg.write_text(cfg.read_text().replace("/run/hamachi/server.sock", str(tmp / "srv" / "api.sock"))
                       + "\n[plans.free]\nmembers_per_network = 256\nnetworks_per_client = 256\n")
        self.server_cfg = cfg
        self.server = None
        self.relays: dict[str, subprocess.Popen] = {}
        self.clients: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen] = {}

    def add_relay(self, host: str = "rly"):
        """A relay on `host`, registered in the server's config (call before start_server)."""
        h = self.lab.host(host)
        out = json.loads(cli(h, "relay", "init", "--dir", str(self.tmp / host), "--server-key", self.server_key,
                             "--json").stdout)
        rcfg = self.tmp / host / "relay.toml"
        rcfg.write_text(rcfg.read_text().replace("/run/hamachi/relay.sock", str(self.tmp / host / "api.sock")))
        self.run_relay(host)
        with open(self.server_cfg, "a") as fh:
            fh.write(f'\n[[relay]]\nname = "{host}"\npublic_key = "{out["public_key"]}"\n'
                     f'udp = "{h.addr}:3480"\ntcp = "{h.addr}:443"\n')

    def run_relay(self, host: str) -> None:
        """Start (or restart) the relay on `host` from its config, and wait until it listens."""
        h = self.lab.host(host)
        log = open(self.tmp / host / "relay.log", "ab")
        self.relays[host] = h.popen([*hamachi_cmd(), "relay", "run", "--config", str(self.tmp / host / "relay.toml")],
                                    stdout=log, stderr=log, cwd=str(ROOT))
        self.lab.wait_for(lambda: ":443" in h.run(["ss", "-ltn"]).stdout, timeout=20, what="relay")

    def start_server(self):
        srv = self.lab.host("srv")
        log = open(self.tmp / "srv" / "server.log", "ab")
        self.server = srv.popen([*hamachi_cmd(), "server", "run", "--config", str(self.server_cfg), "-v"],
                                stdout=log, stderr=log, cwd=str(ROOT))
        self.lab.wait_for(lambda: "7777" in srv.run(["ss", "-ltn"]).stdout, timeout=20, what="control server")

    def add_client(self, host: str, name: str, port: int = 7777, client_extra: str = ""):
        """`client_extra`: lines added to the [client] section (say `metrics = true`)."""
        d = self.tmp / name
        cli(self.lab.host(host), "client", "init", "--dir", str(d), "--server", f"198.51.100.10:{port}",
            "--server-key", self.server_key, "--name", name)
        cfg = d / "client.toml"
        text = cfg.read_text().replace("/run/hamachi/client-ham0.sock", str(d / "api.sock"))
        if client_extra:
            text = text.replace("[client]\n", "[client]\n" + client_extra.rstrip("\n") + "\n", 1)
        cfg.write_text(text)
        self.clients[name] = cfg
        self.procs[name] = start_client(self.lab.host(host), cfg)
        self.lab.wait_for(lambda: status(self.lab.host(host), cfg)["server_connected"], timeout=20,
                          what=f"{name} logged in")

    def kill_relay(self, host: str) -> None:
        """kill -9 one relay process (ours, by PID)."""
        proc = self.relays[host]
        proc.kill()
        proc.wait(timeout=10)

    def peer_status(self, host: str, name: str) -> list[dict]:
        return status(self.lab.host(host), self.clients[name])["peers"]

    def ask(self, host: str, name: str, *args, check=True):
        return cli(self.lab.host(host), "client", *args, "--config", str(self.clients[name]), check=check)

    def address(self, host: str, name: str) -> str:
        return status(self.lab.host(host), self.clients[name])["addresses"][0].split("/")[0]

    def can_ping(self, host: str, ip: str) -> bool:
        return self.lab.host(host).run(["ping", "-c1", "-W1", ip], check=False).returncode == 0

    def stop(self):
        for p in self.procs.values():
            stop(p)
        if self.server:
            stop(self.server)
        for r in self.relays.values():
            stop(r)


