"""One small SQL layer over SQLite (default) and PostgreSQL (several gateway replicas), same statements for both.

Statements are written with `?` placeholders and portable types; PostgreSQL gets them with `%s`. Every write runs
in a transaction: SQLite's `BEGIN IMMEDIATE` takes the write lock up front (no lock-upgrade deadlocks between
gateway processes), WAL mode lets readers go on meanwhile, and `synchronous=FULL` makes a committed job survive
power loss, not only a crash of the process. Connections are per thread: the gateway calls the store from worker
threads (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class DatabaseError(Exception):
    """The database cannot be opened or used; the message names it and what to do."""


class Cursor:
    """The part of a DB-API cursor the store uses, rows as dicts, `?` placeholders on both dialects."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self._raw, self._dialect = raw, dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self._dialect == "postgres":
            sql = sql.replace("?", "%s")
        self._raw.execute(sql, tuple(params))
        return self

    def one(self) -> dict | None:
        # fetchall, not fetchone: SQLite keeps an UPDATE ... RETURNING statement open until it is stepped to
        # its end, and COMMIT then fails with "SQL statements in progress".
        rows = self._raw.fetchall()
        return dict(rows[0]) if rows else None

    def all(self) -> list[dict]:
        return [dict(row) for row in self._raw.fetchall()]

    @property
    def rowcount(self) -> int:
        return self._raw.rowcount


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        if parsed.scheme == "sqlite":
            self.dialect = "sqlite"
            self._path = Path(parsed.path)
            self._path.parent.mkdir(parents=True, exist_ok=True)
        elif parsed.scheme in ("postgresql", "postgres"):
            self.dialect = "postgres"
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise DatabaseError("a postgresql:// database needs psycopg: pip install 'psycopg[binary]'") from None
        else:
            raise DatabaseError(f"database_url {url!r}: use sqlite:///path/to/gateway.db or postgresql://...")
        self._local = threading.local()
        self._connections: list[Any] = []
        # A thread that `asyncio.to_thread` started goes on after its awaiting task is cancelled at shutdown, so
        # `close` can meet a connection mid-statement; closing it then crashes the sqlite3 module. Such a
        # connection is retired instead and closed by its own thread when the statement ends.
        self._busy: set[Any] = set()
        self._retired: set[Any] = set()
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self.dialect == "sqlite":
            try:
                conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30.0)
            except sqlite3.Error as exc:
                raise DatabaseError(f"cannot open {self._path}: {exc}") from None
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            # Deleted rows are overwritten with zeros, not left in free pages: erasure (retention.py) means gone.
            conn.execute("PRAGMA secure_delete=ON")
        else:
            import psycopg
            from psycopg.rows import dict_row

            try:
                conn = psycopg.connect(self.url, row_factory=dict_row, autocommit=True)
            except psycopg.Error as exc:
                raise DatabaseError(f"cannot connect to the PostgreSQL database: {exc}") from None
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[Any]:
        while True:
            conn = self._connection()
            with self._lock:
                if conn in self._connections:  # else a `close` came in between: this thread connects again
                    self._busy.add(conn)
                    break
        try:
            yield conn
        finally:
            with self._lock:
                self._busy.discard(conn)
                retired = conn in self._retired
                self._retired.discard(conn)
            if retired:
                with contextlib.suppress(Exception):
                    conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._in_use() as conn:
            if self.dialect == "sqlite":
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield Cursor(conn.cursor(), "sqlite")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            else:
                with conn.transaction(), conn.cursor() as cursor:
                    yield Cursor(cursor, "postgres")

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        """A single read outside any write transaction (a consistent snapshot of one statement)."""
        with self._in_use() as conn:
            if self.dialect == "sqlite":
                return [dict(row) for row in conn.execute(sql, tuple(params)).fetchall()]
            with conn.cursor() as cursor:
                return Cursor(cursor, "postgres").execute(sql, params).all()

    def script(self, statements: Sequence[str]) -> None:
        with self.transaction() as cursor:
            for statement in statements:
                cursor.execute(statement)

    def compact(self) -> None:
        """After an erasure: SQLite moves the WAL (which holds page images from before it) into the database file
        and empties it; PostgreSQL vacuums the tables that held the erased rows."""
        with self._in_use() as conn:
            if self.dialect == "sqlite":
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                return
            for table in ("jobs", "cache_entries", "webhook_deliveries", "webhook_attempts", "reviews"):
                conn.execute(f"VACUUM {table}")

    def release_thread(self) -> None:
        """Close this thread's connection: for short-lived threads (one per job run), so connections do not pile
        up over the gateway's lifetime."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        """Close every thread's connection; one in the middle of a statement is closed by its thread afterwards."""
        with self._lock:
            idle = [conn for conn in self._connections if conn not in self._busy]
            self._retired.update(conn for conn in self._connections if conn in self._busy)
            self._connections.clear()
            self._local = threading.local()
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()
