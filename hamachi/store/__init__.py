"""Server state: the repository Protocol (protocol.py) and its two implementations."""

from __future__ import annotations


def open_store(backend: str, database: str, overlay4, overlay6, *, pool_size: int = 8):
    """The configured store: "sqlite" (a file path) or "postgresql" (a DSN; needs the postgres extra)."""
    from hamachi.store.protocol import StoreError

    if backend == "postgresql":
        try:
            from hamachi.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(f"the PostgreSQL store needs psycopg and psycopg_pool "
                             f"(pip install 'hamachi[postgres]'): {exc}") from None
        return PostgresStore(database, overlay4, overlay6, pool_size=pool_size)
    from hamachi.store.sqlite import SqliteStore

    return SqliteStore(database, overlay4, overlay6)
