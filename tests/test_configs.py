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
