"""A throwaway PostgreSQL for tests and benchmarks: initdb in a temp directory, run as `postgres`.

    tmp/data   the cluster (initdb), owned by the postgres user
    tmp/sock   its only listener: a unix socket (listen_addresses = ''), private port number

No system service is started, stopped or read: the server is our own child
(`postgres -D tmp/data`), stopped with SIGINT (fast shutdown) and its
directory removed afterwards. Unix sockets live in the file system, so lab
namespaces reach it too, whatever their network. `unavailable()` says why it
cannot run here (no binaries, not root) so tests skip with that reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
                   if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable() -> str | None:
    if bin_dir() is None:
        return "PostgreSQL is not installed (run scripts/setup; needs initdb from Debian's postgresql)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no `postgres` user to run a throwaway PostgreSQL as"
    if os.geteuid() != 0:
        return "starting a throwaway PostgreSQL as the postgres user needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="hamachi-pg-"))
        self.data = self.tmp / "data"
        self.sock = self.tmp / "sock"
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self._dbs = 0

    def start(self) -> ThrowawayPostgres:
        pg = pwd.getpwnam("postgres")
        self.sock.mkdir()
        os.chmod(self.tmp, 0o755)
        for d in (self.tmp, self.sock):
            os.chown(d, pg.pw_uid, pg.pw_gid)
        bins = bin_dir()
        as_pg = {"user": pg.pw_uid, "group": pg.pw_gid, "extra_groups": [], "cwd": str(self.tmp),
                 "env": {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"}}
        r = subprocess.run([str(bins / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                            "-E", "UTF8", "--no-sync", "--no-instructions"], capture_output=True, text=True,
                           timeout=120, **as_pg)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-1000:]}")
        log = open(self.tmp / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            [str(bins / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.sock),
             "-c", "listen_addresses=", "-c", "max_connections=200", "-c", "shared_buffers=32MB",
             "-c", "unix_socket_permissions=0777"],
            stdout=log, stderr=log, start_new_session=True, **as_pg)
        deadline = time.monotonic() + 60
        while not (self.sock / f".s.PGSQL.{self.port}").exists() or not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("postgres did not start: "
                                   + (self.tmp / "postgres.log").read_text(errors="replace")[-1000:])
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def dsn(self, dbname: str = "hamachi") -> str:
        return f"host={self.sock} port={self.port} user=postgres dbname={dbname}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh empty database; its DSN."""
        import psycopg

        self._dbs += 1
        name = f"{prefix}{os.getpid()}_{self._dbs}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
