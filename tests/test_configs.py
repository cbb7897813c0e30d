"""Every example in configs/ loads and passes --check, so the examples never rot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hamachi import config as C
from hamachi.crypto.keys import KeyPair

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "configs").rglob("*.toml"))
ROLE_OF = {"server": "server", "relay": "relay", "client": "client"}


def _role(text: str) -> str:
    first = re.search(r"^\[(\w+)\]", text, re.M)
    assert first, "no section"
    return ROLE_OF[first.group(1)]


def _prepare(example: Path, tmp_path: Path) -> Path:
    """Copy the example's directory and create the key files it names (never committed)."""
    dst = tmp_path / example.parent.name
    shutil.copytree(example.parent, dst)
    for cfg in dst.glob("*.toml"):
        for key in re.findall(r'^key_file\s*=\s*"([^"]+)"', cfg.read_text(), re.M):
            kp = dst / key
            if not kp.exists():
                kp.write_text(KeyPair.generate().private_text() + "\n")
                os.chmod(kp, 0o600)
    return dst / example.name


def test_there_are_examples_for_every_role():
    roles = {_role(p.read_text()) for p in EXAMPLES}
    assert roles == {"server", "relay", "client"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_example_loads(example, tmp_path):
    cfg = _prepare(example, tmp_path)
    role = _role(cfg.read_text())
    settings = C.load(role, cfg)
    assert settings.config_path == cfg.resolve()
    verb = "up" if role == "client" else "run"
    r = subprocess.run([sys.executable, "-m", "hamachi", role, verb, "--config", str(cfg), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_examples_are_commented():
    for p in EXAMPLES:
        assert p.read_text().lstrip().startswith("#"), f"{p} should open with a comment saying what it is"


@pytest.mark.lab
def test_two_host_static_example_runs_in_the_lab(lab_pair, tmp_path):
    """The documented example, with fresh keys, brings up a real tunnel (IPv4 and IPv6)."""
    from tests.lab import nodes

    lab = lab_pair
    src = ROOT / "configs" / "two-host-static"
    keys = {n: KeyPair.generate() for n in ("alice", "bob")}
    example_pub = {"alice": "6YS2Th0oB2DKZ5U64d4T+WUpl/f8wc9ZlbceHxmxcwA=",
                   "bob": "mFRlDB7ie1fDmgjWR7200yr61uMSrMgL1sCczCFTIAY="}
    cfgs = {}
    for n, host in (("alice", "a"), ("bob", "b")):
        text = (src / f"{n}.toml").read_text()
        for other in ("alice", "bob"):
            text = text.replace(example_pub[other], keys[other].public_text())
        text = text.replace("/run/hamachi/", f"{tmp_path}/")
        cfg = tmp_path / f"{n}.toml"
        cfg.write_text(text)
        (tmp_path / f"{n}.key").write_text(keys[n].private_text() + "\n")
        os.chmod(tmp_path / f"{n}.key", 0o600)
        cfgs[host] = cfg
    procs = [nodes.start_client(lab.host(h), cfgs[h]) for h in ("a", "b")]
    try:
        lab.wait_for(lambda: lab.host("a").run(["ping", "-c1", "-W1", "100.64.0.2"], check=False).returncode == 0,
                     timeout=15, what="ping over the example tunnel")
        lab.host("b").run(["ping", "-6", "-c1", "-W2", "fd42::1"])
    finally:
        for p in procs:
            nodes.stop(p)
