"""The server's STUN responder (RFC 8489 Binding, RFC 5780 behaviour discovery), sans I/O.

The server listens on up to two addresses x two ports (primary, alternate).
A Binding request that arrives on (A, P) is answered from:

    CHANGE-REQUEST   none     change-port   change-ip    both
    answer from      (A, P)   (A, P')       (A', P)      (A', P')

with XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS = (A', P') (RFC 5780
§6, §7.3). Only Binding requests are answered; everything else, and anything
malformed, is dropped and counted. An answer is never more than AMPLIFICATION
times the size of the request, so the service is useless as a reflector.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from hamachi.wire import stun as S
from hamachi.wire.codec import DecodeError

AMPLIFICATION = 4
SEEN_MAX = 8192  # recent Binding requests remembered by txid (the control server checks claims against them)
SOFTWARE = b"hamachi"


class StunResponder:
    def __init__(self, addresses: list[str], primary_port: int, alternate_port: int | None = None):
        self.addresses = addresses[:2]
        self.ports = (primary_port, alternate_port if alternate_port is not None else primary_port + 1)
        self.drops: Counter = Counter()
        self.answered = 0
        self._seen: OrderedDict[bytes, S.Addr] = OrderedDict()

    def observed(self, txid: bytes) -> S.Addr | None:
        """Where a recent Binding request with this txid came from, as this service saw it.

        The control server uses it to derive a client's public candidate and NAT mapping from
        its own observations, never from what the client claims (the txids are unguessable, so
        a client can only name its own probes)."""
        return self._seen.get(txid)

    def _remember(self, txid: bytes, source: S.Addr) -> None:
        self._seen[txid] = source
        self._seen.move_to_end(txid)
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)

    @property
    def full_rfc5780(self) -> bool:
        return len(self.addresses) == 2

    def listen_on(self) -> list[S.Addr]:
        return [(a, p) for a in self.addresses for p in self.ports]

    def _other(self, value, pair):
        return pair[1] if value == pair[0] else pair[0]

    def handle(self, local: S.Addr, source: S.Addr, data: bytes) -> tuple[S.Addr, S.Addr, bytes] | None:
        """A datagram that arrived on `local` from `source` -> (send from, send to, bytes) or None."""
        if not S.is_stun(data):
            self.drops["not_stun"] += 1
            return None
        try:
            msg = S.StunMessage.decode(data)
            change = msg.change_request
        except DecodeError:
            self.drops["malformed"] += 1
            return None
        if msg.msg_type != S.BINDING_REQUEST:
            self.drops["not_binding_request"] += 1
            return None
        self._remember(msg.txid, source)
        addr, port = local
        if change & S.CHANGE_IP:
            if not self.full_rfc5780:
                self.drops["cannot_change_ip"] += 1
                return None
            addr = self._other(addr, self.addresses)
        if change & S.CHANGE_PORT:
            port = self._other(port, self.ports)
        origin = (addr, port)
        other = None
        if self.full_rfc5780:
            other = (self._other(local[0], self.addresses), self._other(local[1], self.ports))
        limit = AMPLIFICATION * len(data)
        resp = S.binding_response(msg.txid, source, origin, other, SOFTWARE)
        if len(resp) > limit:  # shed optional attributes rather than amplify
            resp = S.binding_response(msg.txid, source, origin, other)
        if len(resp) > limit:
            resp = S.StunMessage(S.BINDING_RESPONSE, msg.txid,
                                 ((S.XOR_MAPPED_ADDRESS, S.encode_address(source, S.MAGIC_BYTES + msg.txid)),)
                                 ).encode(fingerprint=len(data) >= 28)
        if len(resp) > limit:
            self.drops["would_amplify"] += 1
            return None
        self.answered += 1
        return origin, source, resp
