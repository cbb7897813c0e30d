"""Server nodes for tests and benchmarks: real `hamachi server run` processes sharing one store.

`Nodes(tmp, store, dsn_or_path)` writes one config per node (same cluster key,
same database, own port and API socket) and starts/kills them by PID.
`host` (a lab Host) runs a node inside a lab namespace; None runs it here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from tests.lab.nodes import ROOT, hamachi_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nodes:
    def __init__(self, tmp: Path, backend: str, database: str, *, count: int = 2, debounce: float = 10.0,
                 addresses: list[str] | None = None, hosts: list | None = None, login_rate: float = 10000.0,
                 extra: str = ""):
        self.tmp = tmp
        self.hosts = hosts or [None] * count
        self.addresses = addresses or ["127.0.0.1"] * count
        self.ports = [7777 if hosts else free_port() for _ in range(count)]
        tmp.mkdir(parents=True, exist_ok=True)
        out = json.loads(subprocess.run([*hamachi_cmd(), "server", "init", "--dir", str(tmp / "n0"),
                                         "--public-address", self.addresses[0], "--json"], capture_output=True,
                                        text=True, check=True, cwd=ROOT).stdout)
        self.public_key = out["public_key"]
        key = (tmp / "n0" / "server.key").read_text()
        store = (f'[store]\nbackend = "postgresql"\ndsn = "{database}"\n' if backend == "postgresql"
                 else f'[store]\nbackend = "sqlite"\npath = "{database}"\n')
        self.configs = []
        for i in range(count):
            d = tmp / f"n{i}"
            d.mkdir(exist_ok=True)
            (d / "server.key").write_text(key)  # one cluster identity: clients pin one key
            os.chmod(d / "server.key", 0o600)
            cfg = d / "server.toml"
            cfg.write_text(f'[server]\nkey_file = "server.key"\nlisten = ["{self.addresses[i]}:{self.ports[i]}"]\n'
                           f'public_addresses = ["{self.addresses[i]}"]\nstun_port = 0\n'
                           f'api_socket = "{d}/api.sock"\nlogin_rate = {login_rate}\nnode = "node{i + 1}"\n'
                           f"presence_debounce = {debounce}\n{extra}\n{store}")
            self.configs.append(cfg)
        self.procs: list[subprocess.Popen | None] = [None] * count

    def endpoint(self, i: int) -> tuple[str, int]:
        return self.addresses[i], self.ports[i]

    def start(self, i: int, wait: bool = True) -> subprocess.Popen:
        cmd = [*hamachi_cmd(), "server", "run", "--config", str(self.configs[i]), "-v"]
        log = open(self.tmp / f"n{i}" / "server.log", "ab")
        h = self.hosts[i]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = (h.popen(cmd, stdout=log, stderr=log, cwd=str(ROOT), env=env) if h is not None else
             subprocess.Popen(cmd, stdout=log, stderr=log, cwd=str(ROOT), env=env))
        self.procs[i] = p
        if wait:
            self.wait_listening(i)
        return p

    def listening(self, i: int) -> bool:
        p = self.procs[i]
        if p is None or p.poll() is not None:
            return False
        try:
            if self.hosts[i] is not None:
                return f"{self.addresses[i]}:{self.ports[i]}" in self.hosts[i].run(["ss", "-ltn"]).stdout
            socket.create_connection(self.endpoint(i), timeout=0.5).close()
            return True
        except OSError:
            return False

    def wait_listening(self, i: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.listening(i):
            p = self.procs[i]
            if p is None or p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server node {i + 1} did not start: {self.log(i)[-3000:]}")
            time.sleep(0.05)

    def log(self, i: int) -> str:
        return (self.tmp / f"n{i}" / "server.log").read_text(errors="replace")

    def kill9(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)

    def stop(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)

