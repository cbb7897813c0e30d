#!/usr/bin/env python3
"""A tour of hamachi in a network lab; run through scripts/demo. Cleans up after itself."""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.lab import Lab, Site, Topology, nodes  # noqa: E402

con = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def step(text: str) -> None:
    con.print(f"\n[bold cyan]▶ {text}[/]")


def show(cmd: list[str], host=None, cwd=None) -> str:
    where = f"[{host.name}] " if host else ""
    con.print(f"[dim]{where}$ {' '.join(c if ' ' not in c else repr(c) for c in cmd)}[/]")
    r = (host.run(cmd, check=False, cwd=cwd) if host else
         subprocess.run(cmd, capture_output=True, text=True, cwd=cwd))
    out = (r.stdout + r.stderr).rstrip()
    if out:
        con.print(out, markup=False)
    return r.stdout


def main() -> int:
    t0 = time.monotonic()
    ham = nodes.hamachi_cmd()
    topo = Topology(public=["a", "b"], relays=["rly"],
                    sites=[Site("home", "port-restricted"), Site("mobile", "symmetric"), Site("office", "udp-hostile")])
    with tempfile.TemporaryDirectory(prefix="hamachi-demo-") as tmp, Lab(topo) as lab:
        tmp = Path(tmp)
        step(f"A network lab: {len(lab.hosts)} namespaces built in {lab.build_seconds:.2f}s")
        t = Table("host", "address", "seen from the internet as")
        for n in ("srv", "rly", "a", "b", "home-1", "mobile-1", "office-1"):
            t.add_row(n, lab.host(n).addr, lab.public_ip(n))
        con.print(t)

        step("hamachi: one program, three roles")
        show([*ham, "--help"])
        step("Making configs: server, client and relay")
        out = show([*ham, "server", "init", "--dir", str(tmp / "srv"), "--public-address", "198.51.100.10",
                    "--public-address", "198.51.100.11"])
        key = out.split("server public key: ")[1].split()[0]
        show([*ham, "client", "init", "--dir", str(tmp / "alice"), "--server", "198.51.100.10:7777",
              "--server-key", key, "--name", "alice"])
        show([*ham, "relay", "init", "--dir", str(tmp / "rly"), "--server-key", key])
        step("A config with a typo: one line per problem, exit code 3")
        bad = tmp / "alice" / "client.toml"
        bad.write_text(bad.read_text().replace("mtu = 1420", "mtu = 1420\nmut = 9000"))
        show([*ham, "client", "up", "--config", str(bad), "--check"])

        step("The control server on srv (also on TCP 443), a relay on rly; five people log in: alice and bob "
             "(public), carol (home NAT), dave (symmetric mobile NAT), erin (office firewall: only TCP 443 out)")
        dep = nodes.Deployment(lab, tmp / "live")
        dep.add_relay("rly")
        cfg_text = dep.server_cfg.read_text().replace('"0.0.0.0:7777"', '"0.0.0.0:7777", "0.0.0.0:443"')
        dep.server_cfg.write_text(cfg_text)
        dep.start_server()
        people = (("a", "alice"), ("b", "bob"), ("home-1", "carol"), ("mobile-1", "dave"), ("office-1", "erin"))
        for host, name in people:
            dep.add_client(host, name, port=443 if name == "erin" else 7777)
        ip = {n: dep.address(h, n) for h, n in people}
        con.print("overlay addresses handed out by the server: " + ", ".join(f"{n} {a}" for n, a in ip.items()))
        step("alice creates a network; bob tries a wrong password, then everyone joins")
        a_cfg = ["--config", str(dep.clients["alice"])]
        show([*ham, "client", "create", "lan-party", "--password", "gg", *a_cfg], lab.host("a"), cwd=str(ROOT))
        show([*ham, "client", "join", "lan-party", "--password", "nope", "--config", str(dep.clients["bob"])],
             lab.host("b"), cwd=str(ROOT))
        show([*ham, "client", "join", "lan-party", "--password", "gg", "--config", str(dep.clients["bob"])],
             lab.host("b"), cwd=str(ROOT))
        for host, name in people[2:]:
            show([*ham, "client", "join", "lan-party", "--password", "gg", "--config", str(dep.clients[name])],
                 lab.host(host), cwd=str(ROOT))
        show([*ham, "client", "networks", *a_cfg], lab.host("a"), cwd=str(ROOT))
        step("The server told everyone to set up tunnels: peer-to-peer where any NAT allows it, through the "
             "relay (still end-to-end encrypted) where nothing else works")
        for n in ("bob", "carol", "dave", "erin"):
            lab.wait_for(lambda n=n: dep.can_ping("a", ip[n]), timeout=30, what=f"alice -> {n}")
            show(["ping", "-c2", "-i0.2", ip[n]], lab.host("a"))
        srv = lab.host("b").popen(["iperf3", "-s", "-1", "-B", ip["bob"]], stdout=subprocess.DEVNULL)
        lab.wait_for(lambda: "5201" in lab.host("b").run(["ss", "-ltn"]).stdout, what="iperf3")
        out = lab.host("a").run(["iperf3", "-c", ip["bob"], "-t", "2"], check=False).stdout
        srv.wait(timeout=10)
        con.print(f"[dim][a] $ iperf3 -c {ip['bob']} -t 2[/]")
        con.print("\n".join(line for line in out.splitlines() if "sender" in line or "receiver" in line), markup=False)
        step("What alice sees: hamachi client status")
        show([*ham, "client", "status", *a_cfg], lab.host("a"), cwd=str(ROOT))
        step("bob leaves: the server tells alice and carol to drop their tunnels to him")
        show([*ham, "client", "leave", "lan-party", "--config", str(dep.clients["bob"])], lab.host("b"),
             cwd=str(ROOT))
        lab.wait_for(lambda: not dep.can_ping("a", ip["bob"]), timeout=20, what="tunnel to bob to go down")
        con.print(f"alice can no longer reach bob ({ip['bob']}); carol still answers: "
                  f"{'yes' if dep.can_ping('a', ip['carol']) else 'no'}")
        step("erin can only reach the outside over TCP 443: hamachi client doctor explains her paths")
        show([*ham, "client", "doctor", "--config", str(dep.clients["erin"])], lab.host("office-1"), cwd=str(ROOT))
        dep.stop()
        step(f"Done in {time.monotonic() - t0:.1f}s; the lab is torn down on exit.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
