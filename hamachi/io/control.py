"""Control connections over TCP: Noise IK handshake, then length-prefixed encrypted frames.

Server side: `ControlListener` feeds a `proto.control_server.ControlServer`.
Every call into that core runs on one worker thread (`CoreThread`), because
the core calls the store, and store calls (SQLite fsyncs, PostgreSQL round
trips) must never block the event loop; Noise handshakes run in a small
thread pool (libsodium releases the GIL), so logins use every core.
Client side: `ControlClient` keeps one connection up (reconnecting with
backoff), and hands presence events to callbacks. Framing and the handshake
are in wire/control.py; all decisions are in proto/.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from hamachi import __version__
from hamachi.crypto.keys import KeyPair
from hamachi.crypto.noise import CipherState, HandshakeError, NoiseIK
from hamachi.io.metrics import Histogram
from hamachi.proto.control_server import ControlServer
from hamachi.wire import control as M
from hamachi.wire.codec import DecodeError

log = logging.getLogger("hamachi.control")
PROLOGUE = b"hamachi control v1"
HANDSHAKE_TIMEOUT = 10.0
MAX_WRITE_BUFFER = 4 << 20
PING_INTERVAL = 10.0
FALLBACK_DELAY = 1.0  # the usual port gets this long on its own before the fallback port is tried too
FANOUT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FANOUT_KINDS = {"PeerUp", "PeerDown", "Delta", "Netmap"}
MAX_PARTS = 256  # parts of one split netmap update (a 65535-member network needs about 120)
# A client whose key logged in from somewhere else waits this long before trying again, so two
# hosts sharing one key do not take turns kicking each other off every few seconds.
REPLACED_BACKOFF = 300.0
WRONG_KEY = ("the server closed the connection during the handshake: its key does not match the pinned "
             "[server] public_key (check it against `hamachi server init`), or it is not a hamachi server")


class FrameError(Exception):
    pass


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(2)
    n = int.from_bytes(head, "big")
    if n == 0:
        raise FrameError("empty frame")
    return await reader.readexactly(n)


class _Stream:
    """Encrypts and frames outgoing messages; decrypts and decodes incoming ones."""

    def __init__(self, reader, writer, send: CipherState, recv: CipherState):
        self.reader, self.writer, self.send_cs, self.recv_cs = reader, writer, send, recv

    def write(self, msg: M.Message) -> None:
        self.writer.write(M.frame(self.send_cs.encrypt_with_ad(b"", msg.encode())))

    async def read(self) -> M.Message:
        data = await read_frame(self.reader)
        return M.decode(self.recv_cs.decrypt_with_ad(b"", data))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class CoreThread:
    """Runs every call into a ControlServer on one worker thread, in order.

    `call(fn, *args)` returns fn's result; what the call made the core send
    goes to `deliver(outbox)` and `publish(cluster_outbox)` on the loop, in
    the order the calls ran.
    """

    def __init__(self, core: ControlServer, deliver: Callable[[list], None]):
        self.core = core
        self.deliver = deliver
        self.publish: Callable[[list], None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hamachi-core")
        # Fan-out latency: from the call that caused presence or netmap changes to their last
        # message handed to the transports (queueing for the core thread included).
        self.fanout = Histogram(FANOUT_BUCKETS)
        self.sent: Counter = Counter()  # messages handed to the transports, by type

    def _run(self, fn, args):
        result = fn(*args)
        return result, self.core.outbox(), self.core.cluster_outbox()

    async def call(self, fn, *args):
        started = time.monotonic()
        result, out, cluster = await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn, args)
        if out:
            self.deliver(out)
            kinds = Counter(type(m).__name__ for _, m in out)
            self.sent.update(kinds)
            if kinds.keys() & FANOUT_KINDS:
                self.fanout.observe(time.monotonic() - started)
        if cluster and self.publish is not None:
            self.publish(cluster)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _respond(local: KeyPair, msg1: bytes):
    """The responder's half of Noise IK (4 X25519 operations): run off the loop."""
    hs = NoiseIK.responder(local, PROLOGUE)
    hs.read_message(msg1)
    msg2 = hs.write_message(b"")
    send, recv = hs.split()
    return hs.remote_static, msg2, send, recv


class ControlListener:
    """Accepts control connections for a ControlServer core."""

    def __init__(self, core: ControlServer, local: KeyPair, handshake_threads: int = 2):
        self.core = core
        self.local = local
        self.runner = CoreThread(core, self.flush)
        self.streams: dict[int, _Stream] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.drops: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._timer: asyncio.Task | None = None
        self._crypto = ThreadPoolExecutor(handshake_threads, thread_name_prefix="hamachi-noise")
        self._handlers: set[asyncio.Task] = set()

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    async def listen(self, host: str, port: int) -> None:
        self.servers.append(await asyncio.start_server(self._handle, host, port, limit=M.MAX_FRAME + 2))
        if self._timer is None:
            self._timer = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.runner.call(self.core.handle_timer, time.monotonic())

    def flush(self, outbox: list) -> None:
        for conn_id, msg in outbox:
            st = self.streams.get(conn_id)
            if st is None:
                continue
            try:
                st.write(msg)
            except Exception:  # a broken transport: forget it
                self._forget(conn_id)
                continue
            if isinstance(msg, M.Close):
                self._forget(conn_id)
            elif st.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                # A client that does not read must not make the server hoard memory.
                self._drop("slow_reader")
                self._forget(conn_id)  # its reader ends and tells the core

    def _forget(self, conn_id: int) -> None:
        st = self.streams.pop(conn_id, None)
        if st is not None:
            st.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        conn_id = next(self._ids)
        task = asyncio.current_task()
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            msg1 = await asyncio.wait_for(read_frame(reader), HANDSHAKE_TIMEOUT)
            remote, msg2, send, recv = await asyncio.get_running_loop().run_in_executor(
                self._crypto, _respond, self.local, msg1)
            writer.write(M.frame(msg2))
        except (TimeoutError, HandshakeError, FrameError, asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            # Unauthenticated: close silently, never answer.
            self._drop("bad_handshake")
            writer.close()
            return
        st = _Stream(reader, writer, send, recv)
        self.streams[conn_id] = st
        if not await self.runner.call(self.core.connect, conn_id, remote, (peer[0], peer[1]), time.monotonic()):
            self._forget(conn_id)
            return
        try:
            while conn_id in self.streams:
                try:
                    msg = await st.read()
                except (DecodeError, HandshakeError, FrameError) as exc:
                    self._drop("malformed")
                    with contextlib.suppress(Exception):
                        st.write(M.Close(f"malformed message: {exc}"))
                    break
                await self.runner.call(self.core.receive, conn_id, msg, time.monotonic())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            try:
                await self.runner.call(self.core.disconnect, conn_id, time.monotonic(), "lost")
            finally:
                self._forget(conn_id)

    async def close(self) -> None:
        """Stop: tell every client (they come back soon), then close; nothing is left running."""
        if self._timer:
            self._timer.cancel()
        for s in self.servers:
            s.close()
        for st in list(self.streams.values()):
            with contextlib.suppress(Exception):
                st.write(M.Close(M.Close.SHUTDOWN))
        for st in list(self.streams.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(st.writer.drain(), 1.0)
        for conn_id in list(self.streams):
            self._forget(conn_id)
        # Each connection's task tells the core it ended (on the core thread, still running).
        if self._handlers:
            _, late = await asyncio.wait(set(self._handlers), timeout=2.0)
            for task in late:
                task.cancel()
        self._crypto.shutdown(wait=False, cancel_futures=True)


def _close_if_connected(task: asyncio.Task) -> None:
    """A losing connection attempt that connected anyway: close it."""
    if not task.cancelled() and task.exception() is None:
        task.result()[1].close()


class ControlClient:
    """The client's side: connect, log in, keep the netmap, turn presence into callbacks."""

    def __init__(self, local: KeyPair, server: tuple[str, int] | list[tuple[str, int]], server_key: bytes,
                 nickname: str,
                 listen_port: Callable[[], int], *,
                 on_welcome: Callable[[M.Welcome], Awaitable[None]],
                 on_peer_up: Callable[[M.PeerUp], Awaitable[None]],
                 on_peer_down: Callable[[M.PeerDown], Awaitable[None]],
                 token: str = "", report: Callable[[], dict] | None = None,
                 fallback_ports: tuple[int, ...] = (),
                 candidates: Callable[[], tuple[M.Candidate, ...]] | None = None,
                 on_networks: Callable[[dict[str, M.NetworkInfo]], Awaitable[None]] | None = None):
        # Several addresses (a cluster's nodes, or one name with several records): each new session
        # tries the next one, so a client whose node died is on another one at its first retry.
        self.servers = list(server) if isinstance(server, list) else [server]
        self.local, self.server, self.server_key, self.nickname = local, self.servers[0], server_key, nickname
        self._attempt = 0
        self.fallback_ports = tuple(p for p in fallback_ports if p)
        self.via: tuple[str, int] | None = None  # the address the current connection reached
        self.listen_port = listen_port
        self.on_welcome, self.on_peer_up, self.on_peer_down = on_welcome, on_peer_up, on_peer_down
        self.token = token
        self.report = report or dict
        self.candidates = candidates or tuple
        self.on_networks = on_networks
        self.networks: dict[str, M.NetworkInfo] = {}
        self.seq = 0
        self.connected = False
        self.last_error = ""
        self.welcome: M.Welcome | None = None
        self._stream: _Stream | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._parts: list = []  # parts of a split Netmap/Delta received so far

    async def run(self) -> None:
        backoff = 1.0
        while True:
            wait = None
            try:
                await self._session()
                backoff = 1.0
            except (TimeoutError, OSError, asyncio.IncompleteReadError, HandshakeError, DecodeError, FrameError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("control connection to %s:%d lost: %s", *self.server, self.last_error)
                if self.last_error.startswith(f"server closed the connection: {M.Close.REPLACED}"):
                    wait = REPLACED_BACKOFF
                elif self.last_error.startswith(f"server closed the connection: {M.Close.SHUTDOWN}"):
                    wait, backoff = 0.5, 1.0  # most likely a restart: come back soon
            finally:
                self.connected = False
                self._stream = None
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("lost the connection to the server"))
                self._pending.clear()
            await asyncio.sleep(backoff if wait is None else wait)
            backoff = min(backoff * 2, 30.0)

    async def _next_server(self) -> tuple[str, int]:
        addrs: list[tuple[str, int]] = []
        loop = asyncio.get_running_loop()
        for host, port in self.servers:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                continue
            for *_, sa in infos:
                if (sa[0], port) not in addrs:
                    addrs.append((sa[0], port))
        if not addrs:
            raise OSError(f"cannot resolve the server address {', '.join(h for h, _ in self.servers)}")
        pick = addrs[self._attempt % len(addrs)]
        self._attempt += 1
        return pick

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[str, int]]:
        """Connect to the usual port; if it has not answered within FALLBACK_DELAY (a site that drops
        everything but HTTPS), race the fallback ports too. The first to connect wins."""
        loop = asyncio.get_running_loop()
        targets = [self.server] + [(self.server[0], p) for p in self.fallback_ports if p != self.server[1]]
        pending: dict[asyncio.Task, tuple[str, int]] = {}
        errors: list[BaseException] = []

        def attempt(t):
            return asyncio.create_task(asyncio.wait_for(asyncio.open_connection(*t, limit=M.MAX_FRAME + 2),
                                                        HANDSHAKE_TIMEOUT))
        try:
            for i, target in enumerate(targets):
                pending[attempt(target)] = target
                end = loop.time() + (FALLBACK_DELAY if i + 1 < len(targets) else HANDSHAKE_TIMEOUT + 1)
                while pending and loop.time() < end:
                    done, _ = await asyncio.wait(pending, timeout=end - loop.time(),
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if not done:
                        break
                    for task in done:
                        t = pending.pop(task)
                        if task.exception() is None:
                            reader, writer = task.result()
                            return reader, writer, t
                        errors.append(task.exception())
            raise errors[0] if errors else TimeoutError(f"no answer from {self.server[0]}")
        finally:
            for task in pending:
                task.cancel()
                task.add_done_callback(_close_if_connected)

    async def _session(self) -> None:
        self.server = await self._next_server()
        reader, writer, via = await self._open()
        if via != self.server:
            log.info("control connection over TCP %d (port %d did not answer)", via[1], self.server[1])
        self.via = via
        try:
            hs = NoiseIK.initiator(self.local, self.server_key, PROLOGUE)
            writer.write(M.frame(hs.write_message(b"")))
            try:
                reply = await asyncio.wait_for(read_frame(reader), HANDSHAKE_TIMEOUT)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                # A hamachi server that cannot decrypt our first message closes without a word
                # (it never answers the unauthenticated): almost always a wrong pinned key.
                raise HandshakeError(WRONG_KEY) from None
            try:
                hs.read_message(reply)
            except HandshakeError:
                raise HandshakeError(WRONG_KEY) from None
            send, recv = hs.split()
            st = _Stream(reader, writer, send, recv)
            st.write(M.Hello(__version__, self.nickname, self.token))
            msg = await asyncio.wait_for(st.read(), HANDSHAKE_TIMEOUT)
            if isinstance(msg, M.Close):
                raise ConnectionRefusedError(f"server refused the login: {msg.reason}")
            if not isinstance(msg, M.Welcome):
                raise DecodeError(f"expected Welcome, got {type(msg).__name__}")
            self.welcome = msg
            self._parts.clear()
            await self.on_welcome(msg)
            st.write(M.Discovery(self.listen_port(), tuple((k, str(v)) for k, v in self.report().items()),
                                 tuple(self.candidates())[:M.MAX_CANDIDATES]))
            self._stream = st
            self.connected = True
            self.last_error = ""
            pinger = asyncio.create_task(self._ping())
            try:
                while True:
                    await self._dispatch(await st.read())
            finally:
                pinger.cancel()
        finally:
            writer.close()

    async def _ping(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(PING_INTERVAL)
            n += 1
            if self._stream is not None:
                self._stream.write(M.Ping(n))

    def _join_parts(self, msg: M.Netmap | M.Delta) -> M.Netmap | M.Delta | None:
        """A large Netmap or Delta arrives in parts with one seq; None until the last part is in."""
        parts = self._parts
        if parts and (type(parts[0]) is not type(msg) or parts[0].seq != msg.seq):
            parts.clear()  # an interrupted sequence: start over with this one
        parts.append(msg)
        if msg.more:
            if len(parts) > MAX_PARTS:
                parts.clear()
                raise DecodeError(f"more than {MAX_PARTS} parts in one netmap update")
            return None
        whole = type(msg)(msg.seq, M.join_networks([p.networks for p in parts]), *(
            (msg.removed,) if isinstance(msg, M.Delta) else ()))
        parts.clear()
        return whole

    async def _dispatch(self, msg: M.Message) -> None:
        if isinstance(msg, (M.Netmap, M.Delta)):
            msg = self._join_parts(msg)
            if msg is None:
                return
        if isinstance(msg, M.Netmap):
            self.seq = msg.seq
            self.networks = {n.name: n for n in msg.networks}
        elif isinstance(msg, M.Delta):
            if msg.seq != self.seq + 1:
                self._stream.write(M.Resync(self.seq))  # a gap: ask for the whole netmap again
                return
            self.seq = msg.seq
            for n in msg.networks:
                self.networks[n.name] = n
            if msg.removed:
                self.networks.pop(msg.removed, None)
        if isinstance(msg, (M.Netmap, M.Delta)) and self.on_networks is not None:
            await self.on_networks(self.networks)
        elif isinstance(msg, M.PeerUp):
            await self.on_peer_up(msg)
        elif isinstance(msg, M.PeerDown):
            await self.on_peer_down(msg)
        elif isinstance(msg, M.Reply):
            fut = self._pending.pop(msg.req_id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, M.Close):
            raise ConnectionResetError(f"server closed the connection: {msg.reason}")

    async def request(self, verb: str, timeout: float = 15.0, **args: str) -> M.Reply:
        if self._stream is None:
            raise ConnectionError(f"not connected to the server ({self.last_error or 'connecting'})")
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        self._stream.write(M.Request(req_id, verb, tuple((k, v) for k, v in args.items() if v is not None)))
        return await asyncio.wait_for(fut, timeout)
