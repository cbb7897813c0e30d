"""The lab checks itself: a third-party STUN client classifies every NAT as built.

coturn's `turnserver` runs on `srv` (both public addresses, RFC 5780 alternate
port 3479) and coturn's `turnutils_natdiscovery` runs on every host with -m
(mapping), -f (filtering) and -H (hairpinning). The UDP-hostile site is
checked directly: UDP to a public host must die, TCP 443 must pass.
"""

from __future__ import annotations

import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.lab.topology import SERVER_ADDRS, Lab

EIM, ADM, APDM = "endpoint-independent", "address-dependent", "address-and-port-dependent"
VERDICTS = {
    "No NAT! (Endpoint Independent Mapping)": ("mapping", EIM),
    "NAT with Endpoint Independent Mapping!": ("mapping", EIM),
    "NAT with Address Dependent Mapping!": ("mapping", ADM),
    "NAT with Address and Port Dependent Mapping!": ("mapping", APDM),
    "NAT with Endpoint Independent Filtering!": ("filtering", EIM),
    "NAT with Address Dependent Filtering!": ("filtering", ADM),
    "NAT with Address and Port Dependent Filtering!": ("filtering", APDM),
}
HAIRPIN_LINE = "Received a request (maybe a successful hairpinning)"

# What each NAT kind must look like to a STUN client: (mapping, filtering).
EXPECTED_BY_KIND = {
    "none": (EIM, EIM),
    "full-cone": (EIM, EIM),
    "restricted": (EIM, ADM),
    "port-restricted": (EIM, APDM),
    "symmetric": (APDM, APDM),
    "udp-hostile": (EIM, APDM),  # UDP to the server is allowed, so it looks port-restricted there
    "no-udp": (None, None),  # no UDP at all: nothing to classify
}


@dataclass
class Verdict:
    host: str
    kind: str
    mapping: str | None
    filtering: str | None
    hairpin: bool | None
    expected: tuple[str, str, bool | None]
    extra_ok: bool = True
    note: str = ""

    @property
    def ok(self) -> bool:
        want_m, want_f, want_h = self.expected
        return (self.mapping == want_m and self.filtering == want_f
                and (want_h is None or self.hairpin == want_h) and self.extra_ok)


def start_coturn(lab: Lab, workdir: Path) -> subprocess.Popen:
    srv = lab.host("srv")
    cmd = ["turnserver", "-n", "--stun-only", "--no-tls", "--no-dtls", "--no-cli", "--simple-log",
           "--listening-port", "3478", "--alt-listening-port", "3479", "--no-software-attribute",
           "--log-file", str(workdir / "turn.log"), "--pidfile", str(workdir / "turn.pid"),
           "--userdb", str(workdir / "turn.db")]
    for a in SERVER_ADDRS:
        cmd += ["-L", a]
    p = srv.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = ("import socket,os;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.2);"
             f"s.sendto(bytes.fromhex('000100002112a442')+os.urandom(12),('{SERVER_ADDRS[0]}',3478));s.recv(100)")
    lab.wait_for(lambda: lab.host("pub" if "pub" in lab.hosts else "srv").run(
        ["python3", "-c", probe], check=False).returncode == 0, timeout=10, what="coturn to answer STUN")
    return p


def natdiscovery(lab: Lab, host: str, flag: str, server: str = SERVER_ADDRS[0], port: int = 3478) -> list[str]:
    r = lab.host(host).run(["timeout", "30", "turnutils_natdiscovery", flag, "-p", str(port), server],
                           check=False, timeout=40)
    return r.stdout.splitlines()


def classify(lab: Lab, host: str, server: str = SERVER_ADDRS[0], port: int = 3478) -> dict:
    out: dict = {"mapping": None, "filtering": None, "hairpin": False}
    with ThreadPoolExecutor(3) as ex:
        results = list(ex.map(lambda f: (f, natdiscovery(lab, host, f, server, port)), ("-m", "-f", "-H")))
    for flag, lines in results:
        for line in lines:
            line = line.strip()
            if line in VERDICTS:
                key, value = VERDICTS[line]
                out[key] = value
            if flag == "-H" and HAIRPIN_LINE in line:
                out["hairpin"] = True
    return out


def _udp_hostile_extra(lab: Lab, host: str) -> tuple[bool, str]:
    """UDP to a non-server public host must be dropped; TCP 443 must pass."""
    target = lab.host("pub")
    listener = target.popen(["python3", "-c",
        "import socket;u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.bind(('0.0.0.0',9999));"
        "t=socket.socket();t.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);t.bind(('0.0.0.0',443));"
        "t.listen();u.settimeout(3);\ntry:\n d,a=u.recvfrom(10);print('udp',flush=True)\nexcept OSError:"
        "\n print('noudp',flush=True)\nc,_=t.accept();print('tcp',flush=True)"],
        stdout=subprocess.PIPE, text=True)
    sender = ("import socket,time;time.sleep(0.3);u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
              f"[u.sendto(b'x',('{target.addr}',9999)) for _ in range(3)];time.sleep(3);"
              f"socket.create_connection(('{target.addr}',443),timeout=3)")
    r = lab.host(host).run(["python3", "-c", sender], check=False)
    out, _ = listener.communicate(timeout=10)
    ok = "noudp" in out and "tcp" in out and r.returncode == 0
    return ok, "udp blocked, tcp/443 open" if ok else f"listener saw {out.split()}; sender rc={r.returncode}"


def run_selftest(lab: Lab) -> list[Verdict]:
    with tempfile.TemporaryDirectory(prefix="hamachi-lab-") as tmp:
        coturn = start_coturn(lab, Path(tmp))
        try:
            hosts = []
            for name in lab.topo.public:
                hosts.append((name, "none", None))
            for s in lab.topo.sites:
                for i in range(1, s.hosts + 1):
                    hairpin = s.hairpin if s.hosts > 1 else None
                    hosts.append((f"{s.name}-{i}", s.nat, hairpin))
            with ThreadPoolExecutor(8) as ex:
                results = list(ex.map(lambda h: classify(lab, h[0]), hosts))
            # natdiscovery gives up after its own short timeouts; on a busy 2-core box one of
            # 42 parallel runs can lose that race and print no verdict. Ask again, alone.
            for i, (name, _kind, _hp) in enumerate(hosts):
                for _ in range(2):
                    if results[i]["mapping"] and results[i]["filtering"]:
                        break
                    retry = classify(lab, name)
                    results[i] = {k: results[i][k] or retry[k] for k in results[i]}
            verdicts = []
            for (name, kind, hairpin), res in zip(hosts, results, strict=False):
                m, f = EXPECTED_BY_KIND[kind]
                v = Verdict(name, kind, res["mapping"], res["filtering"], res["hairpin"], (m, f, hairpin))
                if kind == "udp-hostile" and "pub" in lab.hosts:
                    v.extra_ok, v.note = _udp_hostile_extra(lab, name)
                verdicts.append(v)
            return verdicts
        finally:
            coturn.terminate()
            coturn.wait(timeout=5)


def format_table(verdicts: list[Verdict]) -> str:
    rows = [("host", "built as", "mapping", "filtering", "hairpin", "ok", "note")]
    for v in verdicts:
        hp = "-" if v.expected[2] is None else ("yes" if v.hairpin else "no")
        rows.append((v.host, v.kind, v.mapping or "?", v.filtering or "?", hp, "OK" if v.ok else "WRONG", v.note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows)
