"""Commented TOML written by `init`. Default values come from hamachi.config."""

from __future__ import annotations

from hamachi import config as C


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_toml(public_addresses: list[str], port: int, overlay6: str) -> str:
    pubs = ", ".join(_q(a) for a in public_addresses)
    return f"""\
# hamachi control server. Validate with: hamachi server run --config THIS --check

[server]
# Private key of the server (base64, mode 0600). Clients pin its public key.
key_file = "server.key"
# TCP addresses the control server listens on.
listen = ["0.0.0.0:{port}"]
# Also on this TCP port (all addresses) when it is free and we may bind it, for
# clients behind firewalls that only let HTTPS out; 0 turns it off.
https_port = {C.DEFAULT_HTTPS_PORT}
# The server's public IP addresses. With two, the STUN service also answers
# RFC 5780 NAT-behaviour tests (CHANGE-REQUEST), so clients learn their
# NAT's filtering behaviour precisely.
public_addresses = [{pubs}]
# UDP port of the built-in STUN service (0 turns it off).
stun_port = {C.DEFAULT_STUN_PORT}
# Where state lives: a SQLite file (relative to this file), or a
# postgresql://user:pass@host/db URL for a multi-server cluster.
database = "state.db"
# "open": any key may register on first login; "token": a one-time token
# minted with `hamachi server token` is needed.
registration = "open"
# Overlay prefixes. Every client gets one stable address from each.
overlay_prefix = "{C.DEFAULT_OVERLAY4}"
overlay_prefix6 = "{overlay6}"
# Local admin API (Unix socket, root only).
api_socket = "{C.DEFAULT_RUN_DIR}/server.sock"
# Login attempts per second allowed from one source address.
login_rate = 5.0
# The plan of a client in no account (`hamachi server admin account ...`).
# "free" allows 5 members per network and 16 networks per client, "standard"
# 32, "premium" 256; change the limits in [plans.NAME] tables.
default_plan = "{C.DEFAULT_PLAN}"

# Relays the server may hand out when peers cannot connect directly.
# [[relay]]
# name = "relay1"
# public_key = "..."
# udp = "203.0.113.5:{C.DEFAULT_RELAY_UDP_PORT}"
# tcp = "203.0.113.5:{C.DEFAULT_RELAY_TCP_PORT}"
"""


def client_toml(name: str, server: str, server_key: str, interface: str, token: str = "") -> str:
    tok = (f"token = {_q(token)}" if token else '# token = "..."')
    return f"""\
# hamachi client. Validate with: hamachi client up --config THIS --check

[client]
# Your nickname, shown to the other members of your networks.
name = {_q(name)}
# Private key of this client (base64, mode 0600); your identity.
key_file = "client.key"
# Local API socket that `hamachi client status` and friends talk to.
api_socket = "{C.DEFAULT_RUN_DIR}/client-{interface}.sock"

[server]
# The control server and its public key (printed by `hamachi server init`).
address = {_q(server)}
public_key = {_q(server_key)}
# Tried when the server's usual port does not answer (sites that let only HTTPS out); 0: never.
fallback_port = {C.DEFAULT_HTTPS_PORT}
# One-time enrolment token, where the server has registration = "token" (its operator
# mints one with `hamachi server token`); only the first login needs it.
{tok}

[tunnel]
# Name of the virtual interface; "tun" carries IP, "tap" carries Ethernet.
interface = {_q(interface)}
mode = "tun"
mtu = {C.DEFAULT_MTU}
# UDP port for peer-to-peer traffic (0 picks a free one).
listen_port = {C.DEFAULT_DATA_PORT}
# Use TUN and UDP segmentation offloads where the kernel has them.
offload = true
# Data cipher: "auto" (measure; AES-256-GCM where the CPU has AES instructions, else
# ChaCha20-Poly1305; peers agree in the handshake), or "chacha20poly1305" / "aes256gcm" only.
cipher = "auto"
# Seconds between keepalives that hold NAT mappings open.
keepalive = {C.DEFAULT_KEEPALIVE:g}

# Last resort when hole punching cannot work: forward a UDP port on your
# router to this machine and say so here.
[port_forward]
enabled = false
# public_endpoint = "198.51.100.7:40000"
# listen_port = 40000
"""


def relay_toml(server_key: str, udp_port: int, tcp_port: int) -> str:
    return f"""\
# hamachi relay. Validate with: hamachi relay run --config THIS --check

[relay]
# Private key of the relay (base64, mode 0600).
key_file = "relay.key"
# Public key of the control server whose tickets this relay honours.
server_public_key = {_q(server_key)}
# Where relayed UDP arrives.
listen_udp = "0.0.0.0:{udp_port}"
# TCP framing for sites that block UDP; "" turns it off.
listen_tcp = "0.0.0.0:{tcp_port}"
# Local API socket for `hamachi relay status` (root only).
api_socket = "{C.DEFAULT_RUN_DIR}/relay.sock"
# Seconds after which an unused relay session is forgotten.
idle_timeout = 60.0
# Bandwidth caps in bytes per second (0 = unlimited).
session_rate_bps = 0
account_rate_bps = 0
"""
