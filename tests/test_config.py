"""Config validation: one line per problem, naming the key; exit code 3 from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hamachi import config as C
from hamachi.crypto.keys import KeyPair

PUB = KeyPair.generate().public_text()


def _key(dirpath: Path, name: str = "client.key", mode: int = 0o600) -> Path:
    p = dirpath / name
    p.write_text(KeyPair.generate().private_text() + "\n")
    os.chmod(p, mode)
    return p


def _client(tmp_path: Path, body: str, key_mode: int = 0o600, write_key: bool = True) -> Path:
    if write_key:
        _key(tmp_path, mode=key_mode)
    cfg = tmp_path / "client.toml"
    cfg.write_text(body)
    return cfg


GOOD_CLIENT = f"""
[client]
name = "alice"
key_file = "client.key"
[server]
address = "198.51.100.10:7777"
public_key = "{PUB}"
"""


def test_good_client_loads(tmp_path):
    s = C.load_client(_client(tmp_path, GOOD_CLIENT))
    assert s.name == "alice"
    assert s.server == C.Endpoint("198.51.100.10", 7777)
    assert s.mtu == C.DEFAULT_MTU
    assert s.key_file == tmp_path / "client.key"  # relative to the config's directory


BAD_CASES = [
    # (description, body, expected key in the line, expected words)
    ("unknown key with hint", GOOD_CLIENT.replace('name = "alice"', 'name = "alice"\nnmae = "x"'),
     "client.nmae", "did you mean 'name'"),
    ("unknown section", GOOD_CLIENT + "\n[tunel]\nmtu = 1400\n", "tunel", "did you mean 'tunnel'"),
    ("wrong type", GOOD_CLIENT + "\n[tunnel]\nmtu = \"big\"\n", "tunnel.mtu", "must be an int"),
    ("bool is not a number", GOOD_CLIENT + "\n[tunnel]\nmtu = true\n", "tunnel.mtu", "boolean"),
    ("out of range", GOOD_CLIENT + "\n[tunnel]\nmtu = 100\n", "tunnel.mtu", "out of range"),
    ("bad endpoint", GOOD_CLIENT.replace("198.51.100.10:7777", "198.51.100.10:70000"),
     "server.address", "out of range"),
    ("bad host", GOOD_CLIENT.replace("198.51.100.10:7777", "bad host!:7777"),
     "server.address", "neither an IP address nor a host name"),
    ("bad port text", GOOD_CLIENT.replace("198.51.100.10:7777", "198.51.100.10:http"),
     "server.address", "not a number"),
    ("bad key text", GOOD_CLIENT.replace(PUB, "not-a-key"), "server.public_key", "not a public key"),
    ("bad overlay address", GOOD_CLIENT + "\n[tunnel]\naddress = \"100.64.0.300/10\"\n",
     "tunnel.address", "not an IPv4"),
    ("bad mode", GOOD_CLIENT + "\n[tunnel]\nmode = \"tan\"\n", "tunnel.mode", "not one of"),
    ("bad cipher", GOOD_CLIENT + "\n[tunnel]\ncipher = \"rot13\"\n", "tunnel.cipher", "not one of"),
    ("peer missing key", GOOD_CLIENT + "\n[[peer]]\naddresses = [\"100.64.0.3/32\"]\n",
     "peer[0].public_key", "is required"),
    ("port forward without endpoint", GOOD_CLIENT + "\n[port_forward]\nenabled = true\n",
     "port_forward.public_endpoint", "is required"),
]


@pytest.mark.parametrize("desc,body,key,words", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_client_config_one_line_per_problem(tmp_path, desc, body, key, words):
    cfg = _client(tmp_path, body)
    with pytest.raises(C.ConfigError) as ei:
        C.load_client(cfg)
    lines = ei.value.problems
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{cfg}: {key}: "), lines[0]
    assert words in lines[0]


def test_missing_key_file(tmp_path):
    cfg = _client(tmp_path, GOOD_CLIENT, write_key=False)
    with pytest.raises(C.ConfigError) as ei:
        C.load_client(cfg)
    assert ei.value.problems == [
        f"{cfg}: client.key_file: key file {tmp_path / 'client.key'} does not exist "
        "(create it with `hamachi ... init`)"
    ]


def test_loose_key_permissions(tmp_path):
    cfg = _client(tmp_path, GOOD_CLIENT, key_mode=0o644)
    with pytest.raises(C.ConfigError) as ei:
        C.load_client(cfg)
    (line,) = ei.value.problems
    assert line.startswith(f"{cfg}: client.key_file: ") and "loose permissions 0644" in line


def test_several_problems_are_all_reported(tmp_path):
    body = GOOD_CLIENT.replace('name = "alice"', 'name = 5\nfoo = 1') + "\n[tunnel]\nmtu = 1\n"
    cfg = _client(tmp_path, body)
    with pytest.raises(C.ConfigError) as ei:
        C.load_client(cfg)
    keys = sorted(line.split(": ")[1] for line in ei.value.problems)
    assert keys == ["client.foo", "client.name", "tunnel.mtu"]


def test_invalid_toml_is_one_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[client\nname=")
    with pytest.raises(C.ConfigError) as ei:
        C.load_client(cfg)
    assert len(ei.value.problems) == 1 and "not valid TOML" in ei.value.problems[0]


def test_server_rejects_forbidden_overlay(tmp_path):
    _key(tmp_path, "server.key")
    cfg = tmp_path / "server.toml"
    cfg.write_text('[server]\nkey_file = "server.key"\noverlay_prefix = "25.0.0.0/8"\n')
    with pytest.raises(C.ConfigError) as ei:
        C.load_server(cfg)
    (line,) = ei.value.problems
    assert "server.overlay_prefix" in line and "belongs to others" in line


def test_endpoint_parsing():
    assert C.parse_endpoint("[2001:db8::1]:51820") == C.Endpoint("2001:db8::1", 51820)
    assert C.parse_endpoint("example.net", 7777) == C.Endpoint("example.net", 7777)
    for bad in ("2001:db8::1", "host:", ":80", "[::1", "1.2.3.4:-1"):
        with pytest.raises(ValueError):
            C.parse_endpoint(bad)


def test_redacted_never_shows_private_key(tmp_path):
    s = C.load_client(_client(tmp_path, GOOD_CLIENT))
    view = C.redacted(s)
    text = repr(view)
    assert s.key.private_text() not in text
    assert view["key"]["public"] == s.key.public_text()
    assert C.redacted("postgresql://u:secret@db/x") == "postgresql://u:<redacted>@db/x"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hamachi", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("desc,body,key,words", BAD_CASES[:4], ids=[c[0] for c in BAD_CASES[:4]])
def test_cli_exit_3_with_one_line(tmp_path, desc, body, key, words):
    cfg = _client(tmp_path, body)
    r = _cli("client", "up", "--config", str(cfg), "--check")
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{key}: " in lines[0] and "Traceback" not in r.stderr


def test_cli_config_from_env(tmp_path):
    cfg = _client(tmp_path, GOOD_CLIENT)
    r = _cli("client", "up", "--check", "--json", env={"HAMACHI_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    assert '"schema_version": 1' in r.stdout and "<redacted>" in r.stdout


def test_cli_missing_config_file(tmp_path):
    r = _cli("server", "run", "--config", str(tmp_path / "nope.toml"), "--check")
    assert r.returncode == 3
    assert r.stderr.strip() == f"{tmp_path / 'nope.toml'}: file does not exist"


def _server(tmp_path: Path, extra: str) -> Path:
    _key(tmp_path, "server.key")
    cfg = tmp_path / "server.toml"
    cfg.write_text('[server]\nkey_file = "server.key"\n' + extra)
    return cfg


def test_store_section(tmp_path):
    s = C.load_server(_server(tmp_path, ""))
    assert s.store_backend == "sqlite" and s.database == str(tmp_path / "state.db")
    assert s.presence_debounce == C.DEFAULT_PRESENCE_DEBOUNCE and s.pool_size == C.DEFAULT_POOL_SIZE
    s = C.load_server(_server(tmp_path, '[store]\nbackend = "sqlite"\npath = "x/y.db"\n'))
    assert s.database == str(tmp_path / "x" / "y.db")
    dsn = "host=/run/pg dbname=hamachi user=hamachi password=hunter2"
    s = C.load_server(_server(tmp_path, f'node = "n1"\n[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n'
                                        "pool_size = 4\n"))
    assert (s.store_backend, s.database, s.pool_size, s.node) == ("postgresql", dsn, 4, "n1")
    assert "hunter2" not in repr(C.redacted(s))
    # The old spelling: [server] database = "postgresql://..."
    s = C.load_server(_server(tmp_path, 'database = "postgresql://u:pw@db/h"\n'))
    assert s.store_backend == "postgresql" and s.database == "postgresql://u:pw@db/h"


@pytest.mark.parametrize("extra, words", [
    ('[store]\nbackend = "postgresql"\n', "store.dsn: is required"),
    ('[store]\nbackend = "mysql"\n', "store.backend"),
    ('[store]\nbackend = "sqlite"\ndsn = "host=x"\n', "store.dsn"),
    ('[store]\nbackend = "postgresql"\ndsn = "host=x"\npath = "a.db"\n', "store.path"),
    ('[store]\nbackend = "postgresql"\ndsn = "host=x"\npool_size = 0\n', "store.pool_size"),
])
def test_bad_store_section_one_line(tmp_path, extra, words):
    with pytest.raises(C.ConfigError) as ei:
        C.load_server(_server(tmp_path, extra))
    (line,) = ei.value.problems
    assert words in line


def test_client_lists_several_servers(tmp_path):
    body = GOOD_CLIENT.replace('address = "198.51.100.10:7777"',
                               'address = ["198.51.100.10:7777", "198.51.100.11", "srv.example.net:443"]')
    s = C.load_client(_client(tmp_path, body))
    assert s.servers == (C.Endpoint("198.51.100.10", 7777), C.Endpoint("198.51.100.11", 7777),
                         C.Endpoint("srv.example.net", 443))
    assert s.server == s.servers[0]
    with pytest.raises(C.ConfigError) as ei:
        C.load_client(_client(tmp_path, GOOD_CLIENT.replace('address = "198.51.100.10:7777"', "address = [1]")))
    assert "server.address[0]" in ei.value.problems[0]
