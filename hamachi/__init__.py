"""hamachi: an open, self-hostable peer-to-peer VPN."""

__version__ = "0.1.0"
