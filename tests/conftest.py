"""Shared fixtures: the network lab (tests/lab), skipped with a reason where it cannot run."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.lab import Lab, Topology


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (run scripts/setup)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun on this machine"
    return None


def require_lab() -> None:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def lab_standard():
    """Every NAT kind of the acceptance matrix; built once per test session."""
    require_lab()
    with Lab(Topology.standard()) as lab:
        yield lab


@pytest.fixture(scope="session")
def lab_pair():
    """Two public hosts `a` and `b` plus `srv`; built once per test session."""
    require_lab()
    with Lab(Topology.pair()) as lab:
        yield lab


@pytest.fixture
def make_lab():
    """Build a custom Topology for one test; torn down afterwards."""
    require_lab()
    labs = []

    def make(topo: Topology) -> Lab:
        lab = Lab(topo)
        labs.append(lab)
        return lab.__enter__()

    yield make
    for lab in labs:
        lab.teardown()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL of our own (tests/lab/postgres.py), shared by the session; skipped if absent."""
    from tests.lab import postgres as pg

    reason = pg.unavailable()
    if reason:
        pytest.skip(reason)
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        pytest.skip("psycopg and psycopg_pool are not installed (pip install '.[postgres]')")
    with pg.ThrowawayPostgres() as server:
        yield server
