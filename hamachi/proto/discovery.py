"""NAT behaviour discovery (RFC 5780 §4), sans I/O, over the client's own data socket.

The tests run one after another, because a test that talks to the server's
second address opens the NAT's filter for it and would spoil a later
filtering test (§4.4 on test order):

    T1  Binding to primary (A1,P1) ----- no answer --> UDP blocked (done)
        | mapped M1, OTHER-ADDRESS (A2,P2)
    F2  CHANGE-REQUEST ip+port --------- answer ------> filtering endpoint-independent
        | no answer
    F3  CHANGE-REQUEST port ------------ answer ------> filtering address-dependent
        | no answer                                      else address-and-port-dependent
    M2  Binding to (A2,P1): M2 == M1 --> mapping endpoint-independent
    M3  Binding to (A2,P2): M3 == M2 --> address-dependent, else address-and-port-dependent
    H   Binding to M1 from a second local port: our own request arrives --> hairpinning works
        (what another host behind the same NAT would see; a probe from the same port could ride
        back on its own NAT binding and overstate hairpin support)

Without an OTHER-ADDRESS (a one-address server) only T1 and H run. Every
step is retransmitted a few times (RFC 8489 §6.2.1, with a shorter schedule:
a missing answer is itself a result here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hamachi.wire import stun as S
from hamachi.wire.codec import DecodeError

EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"
RETRANSMIT = (0.0, 0.25, 0.6)
STEP_TIMEOUT = 1.0


@dataclass
class NatReport:
    udp: bool | None = None
    mapped: S.Addr | None = None
    nat: bool | None = None
    mapping: str | None = None
    filtering: str | None = None
    hairpin: bool | None = None
    notes: list[str] = field(default_factory=list)
    probes: dict[str, bytes] = field(default_factory=dict)  # step (T1, M2, M3) -> txid of its answered probe

    def to_dict(self) -> dict:
        return {"udp": self.udp, "mapped": f"{self.mapped[0]}:{self.mapped[1]}" if self.mapped else None,
                "nat": self.nat, "mapping": self.mapping, "filtering": self.filtering, "hairpin": self.hairpin}

    @property
    def summary(self) -> str:
        if self.udp is False:
            return "UDP to the server is blocked"
        if self.nat is False:
            return "no NAT (public address)"
        if self.mapping is None and self.filtering is None:
            # e.g. a server with one public address cannot run the RFC 5780 tests
            return "NAT: mapping and filtering unknown (the server could not test them), " \
                   f"hairpin {'yes' if self.hairpin else 'no' if self.hairpin is False else 'unknown'}"
        return f"NAT: {self.mapping or 'unknown'} mapping, {self.filtering or 'unknown'} filtering, " \
               f"hairpin {'yes' if self.hairpin else 'no' if self.hairpin is False else 'unknown'}"


class Discovery:
    def __init__(self, server: S.Addr, local: S.Addr, rand: Callable[[int], bytes], now: float):
        self.server = server
        self.local = local
        self.rand = rand
        self.report = NatReport()
        self.done = False
        self.other: S.Addr | None = None
        self._out: list[tuple[bytes, S.Addr]] = []
        self._step: str | None = None
        self._start(now, "T1", server)

    # -- plumbing ---------------------------------------------------------------
    def _start(self, now: float, step: str, dest: S.Addr, change: int = 0) -> None:
        self._step, self._dest, self._change = step, dest, change
        self._txid = self.rand(12)
        self._started = now
        self._sent = 0
        self._send(now)

    def _send(self, now: float) -> None:
        self._out.append((S.binding_request(self._txid, self._change), self._dest))
        self._sent += 1

    @property
    def from_second_socket(self) -> bool:
        """The I/O shell sends the current probe from another local port (the hairpin test)."""
        return self._step == "H"

    def datagrams_to_send(self) -> list[tuple[bytes, S.Addr]]:
        out, self._out = self._out, []
        return out

    def next_timer(self) -> float | None:
        if self.done:
            return None
        if self._sent < len(RETRANSMIT):
            return self._started + RETRANSMIT[self._sent]
        return self._started + STEP_TIMEOUT

    def handle_timer(self, now: float) -> None:
        if self.done:
            return
        if self._sent < len(RETRANSMIT) and now >= self._started + RETRANSMIT[self._sent]:
            self._send(now)
        elif now >= self._started + STEP_TIMEOUT:
            self._advance(now, None)

    def receive(self, data: bytes, source: S.Addr, now: float) -> bool:
        """True if the datagram belonged to discovery."""
        try:
            msg = S.StunMessage.decode(data)
        except DecodeError:
            return False
        if msg.txid != self._txid or self.done:
            return False
        if msg.msg_type == S.BINDING_REQUEST and self._step == "H":
            self.report.hairpin = True  # our own request came back through the NAT
            self._finish()
            return True
        if msg.msg_type != S.BINDING_RESPONSE:
            return True
        self._advance(now, msg)
        return True

    def _finish(self) -> None:
        self.done = True
        self._step = None

    # -- the algorithm --------------------------------------------------------------
    def _advance(self, now: float, msg: S.StunMessage | None) -> None:
        r = self.report
        step = self._step
        if msg is not None and step in ("T1", "M2", "M3"):
            r.probes[step] = self._txid
        if step == "T1":
            if msg is None:
                r.udp = False
                r.notes.append("no answer from the server's STUN service over UDP")
                self._finish()
                return
            r.udp = True
            r.mapped = msg.mapped
            r.nat = r.mapped != self.local
            self.other = msg.address(S.OTHER_ADDRESS)
            if self.other is None:
                r.notes.append("the server has one address: mapping and filtering cannot be told")
                self._start(now, "H", r.mapped)
            else:
                self._start(now, "F2", self.server, S.CHANGE_IP | S.CHANGE_PORT)
        elif step == "F2":
            if msg is not None:
                r.filtering = EIM
                self._start(now, "M2", (self.other[0], self.server[1]))
            else:
                self._start(now, "F3", self.server, S.CHANGE_PORT)
        elif step == "F3":
            r.filtering = ADM if msg is not None else APDM
            self._start(now, "M2", (self.other[0], self.server[1]))
        elif step == "M2":
            if msg is None:
                r.notes.append("no answer from the server's second address")
                self._start(now, "H", r.mapped)
                return
            self._m2 = msg.mapped
            if self._m2 == r.mapped:
                r.mapping = EIM
                self._start(now, "H", r.mapped)
            else:
                self._start(now, "M3", self.other)
        elif step == "M3":
            if msg is not None:
                r.mapping = ADM if msg.mapped == self._m2 else APDM
            self._start(now, "H", r.mapped)
        elif step == "H":
            r.hairpin = False
            self._finish()
