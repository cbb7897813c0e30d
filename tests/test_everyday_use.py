"""Everyday use (issue 14, second part): what a user sees when keys, tokens and signals go wrong.

A real `hamachi server run` on loopback (no root needed) and real control clients
(io.control.ControlClient, the client daemon's own connection) in this process.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hamachi.crypto.keys import KeyPair, decode_key
from hamachi.exitcodes import ExitCode
from hamachi.io.control import WRONG_KEY, ControlClient
from tests.test_everyday import _cli, _free_port, _server_cfg


class Server:
    def __init__(self, tmp: Path, extra: str = ""):
        self.port = _free_port()
        self.cfg = _server_cfg(tmp, self.port, extra=extra)
        self.key = decode_key(_cli("server", "run", "--config", str(self.cfg), "--check", "--json")
                              .stdout.split('"public": "')[1].split('"')[0])
        self.log = tmp / "server.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "hamachi", "server", "run", "--config", str(self.cfg)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        deadline = time.monotonic() + 30
        while not (tmp / "server.sock").exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    yield srv
    srv.stop()


def _client(srv: Server, key: KeyPair | None = None, server_key: bytes | None = None, token: str = "",
            name: str = "alice") -> ControlClient:
    async def nothing(*a):
        pass

    return ControlClient(key or KeyPair.generate(), ("127.0.0.1", srv.port), server_key or srv.key, name,
                         lambda: 1, on_welcome=nothing, on_peer_up=nothing, on_peer_down=nothing, token=token)


async def _until(cond, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_wrong_server_key_is_named(server):
    async def main():
        c = _client(server, server_key=KeyPair.generate().public)
        task = asyncio.create_task(c.run())
        await _until(lambda: c.last_error, what="the first attempt")
        task.cancel()
        return c

    c = _run(main())
    assert not c.connected
    assert c.last_error == WRONG_KEY
    assert "does not match the pinned [server] public_key" in c.last_error


def test_same_key_on_two_hosts_the_loser_is_told_and_stays_off(server):
    key = KeyPair.generate()

    async def main():
        first, second = _client(server, key, name="alice"), _client(server, key, name="alice")
        t1 = asyncio.create_task(first.run())
        await _until(lambda: first.connected, what="first login")
        t2 = asyncio.create_task(second.run())
        await _until(lambda: second.connected and not first.connected, what="the second to take over")
        # The loser does not come back to kick the winner off (no turn-taking every few seconds).
        await asyncio.sleep(3.0)
        out = (first.connected, second.connected, first.last_error)
        t1.cancel()
        t2.cancel()
        return out

    first_on, second_on, err = _run(main())
    assert (first_on, second_on) == (False, True)
    assert err.startswith("server closed the connection: replaced: this client's key logged in again from 127.0.0.1")
    assert "give each host its own" in err


def test_token_registration_refused_without_and_enrols_with(tmp_path):
    srv = Server(tmp_path, extra='registration = "token"\n')
    try:
        r = _cli("server", "token", "--config", str(srv.cfg), "--json")
        assert r.returncode == 0, r.stderr
        token = re.search(r'"token": "([^"]+)"', r.stdout).group(1)

        async def main():
            without = _client(srv)
            t = asyncio.create_task(without.run())
            await _until(lambda: without.last_error, what="refusal")
            t.cancel()
            with_token = _client(srv, token=token, name="bob")
            t = asyncio.create_task(with_token.run())
            await _until(lambda: with_token.connected or with_token.last_error, what="enrolment")
            enrolled = with_token.connected
            t.cancel()
            # one-time: a second new key with the same token is refused
            again = _client(srv, token=token, name="carol")
            t = asyncio.create_task(again.run())
            await _until(lambda: again.last_error, what="reuse refused")
            t.cancel()
            return without.last_error, enrolled, with_token.last_error, again.last_error

        refused, enrolled, err, reused = _run(main())
        assert "registration needs a valid one-time token" in refused
        assert enrolled, err
        assert "registration needs a valid one-time token" in reused
    finally:
        srv.stop()


def test_client_init_and_up_take_a_token(tmp_path):
    r = _cli("client", "init", "--dir", str(tmp_path), "--server", "127.0.0.1:7777", "--server-key",
             KeyPair.generate().public_text(), "--name", "bob", "--token", "tok-123")
    assert r.returncode == 0, r.stderr
    assert 'token = "tok-123"' in (tmp_path / "client.toml").read_text()
    from hamachi import config as C

    assert C.load_client(tmp_path / "client.toml").token == "tok-123"
    r = _cli("client", "up", "--config", str(tmp_path / "client.toml"), "--check", "--json", "--token", "other")
    assert r.returncode == 0, r.stderr
    assert '"token": "<redacted>"' in r.stdout and "tok-123" not in r.stdout and "other" not in r.stdout


def test_sigterm_tells_clients_and_logs_no_errors(server):
    async def main():
        c = _client(server)
        t = asyncio.create_task(c.run())
        await _until(lambda: c.connected, what="login")
        assert c.request  # a request in flight must not matter either
        code = await asyncio.to_thread(server.stop)
        await _until(lambda: not c.connected, what="the client to hear of it")
        t.cancel()
        return code, c.last_error

    code, err = _run(main())
    assert code == 0
    log = server.log.read_text()
    assert "Traceback" not in log and "CancelledError" not in log and " ERROR " not in log, log
    assert err == "server closed the connection: server shutting down"


def test_help_has_no_python_artefacts():
    from hamachi.cli.app import app

    runner = CliRunner()
    seen = []

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            seen.append([*path, name])
            walk(sub, [*path, name])

    import typer.main

    walk(typer.main.get_command(app), [])
    assert len(seen) > 30
    for args in seen:
        out = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "100"}).output
        assert not re.search(r"<(bool|str|int|float|path|list\[)", out), (args, out)
        usage = out.split("Usage:", 1)[1].splitlines()[0]
        assert "{" not in usage, (args, usage)
    out = runner.invoke(app, ["relay", "init", "--help"], env={"COLUMNS": "100"}).output
    assert "[[relay]]" in out
    assert ExitCode.OK == 0
