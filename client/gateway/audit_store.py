"""The audit log in the gateway's database: one hash chain for every replica that shares the database.

Records are the file log's (client/audit.py: seq, time, prev_hash, hash = SHA-256 of the canonical record), stored
as their lines in the file log (canonical JSON, unsafe characters escaped). A head row (`audit_head`: the last seq
and hash) is written in the same transaction as each record and plays the head file's part: rows cut off the end
are caught. Appends serialise on that row (PostgreSQL: `SELECT ... FOR UPDATE`; SQLite: `BEGIN IMMEDIATE`
serialises writers anyway), so gateways sharing the database can neither fork the chain nor reuse a seq (the seq
is also the primary key).

`export` writes the log and its head file exactly as AuditLog writes them, from one consistent snapshot, so
`talkinghead audit verify` checks an export and `talkinghead verify --audit-log` finds a video's record in it. The
file log's limit holds here too: whoever can rewrite the table and the head row consistently leaves a consistent
chain; keep a head hash elsewhere (`audit verify --anchor`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..audit import GENESIS, AuditError, chained, check_event, head_path, log_line, write_head
from .db import Database

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_records (
        seq BIGINT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        record TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        time TEXT)""",
)
EXPORT_PAGE = 1000


def _database_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return sqlite3.Error, psycopg.Error


@dataclass(frozen=True)
class AuditExport:
    path: Path
    records: int
    last_seq: int | None
    last_hash: str | None


class DatabaseAuditLog:
    """An AuditAppender (client/audit.py) over the gateway's database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._errors = _database_errors()
        with self._storing("prepare the audit tables in"), db.transaction() as cursor:
            for statement in SCHEMA:
                cursor.execute(statement)
            cursor.execute("INSERT INTO audit_head (id, seq, hash, time) VALUES (1, 0, ?, NULL) "
                           "ON CONFLICT (id) DO NOTHING", (GENESIS,))

    @property
    def location(self) -> str:
        # Which database, never where: the delivery details that carry it reach tenants (no file path, host or
        # password of the gateway's).
        return f"the gateway's {self.db.dialect} database (table audit_records)"

    @contextlib.contextmanager
    def _storing(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise AuditError(f"could not {what} the audit database: {exc}") from None

    def append(self, event: dict, now: dt.datetime | None = None) -> dict:
        check_event(event)
        lock = " FOR UPDATE" if self.db.dialect == "postgres" else ""
        with self._storing("append to"), self.db.transaction() as cursor:
            head = cursor.execute(f"SELECT seq, hash FROM audit_head WHERE id = 1{lock}").one()
            record = chained((int(head["seq"]), head["hash"]) if head["seq"] else None, event, now)
            cursor.execute("INSERT INTO audit_records (seq, hash, record) VALUES (?, ?, ?)",
                           (record["seq"], record["hash"], log_line(record).decode()))
            cursor.execute("UPDATE audit_head SET seq = ?, hash = ?, time = ? WHERE id = 1",
                           (record["seq"], record["hash"], record["time"]))
        return record

    def export(self, path: Path) -> AuditExport:
        """The log file and its head, as AuditLog writes them, from one snapshot of the tables."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(path.name + ".tmp")
        records, last = 0, None
        with self._storing("read"), self.db.transaction() as cursor, open(temp, "wb") as out:
            if self.db.dialect == "postgres":  # SQLite's BEGIN IMMEDIATE already holds writers off
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            head = cursor.execute("SELECT seq, hash, time FROM audit_head WHERE id = 1").one()
            while True:
                rows = cursor.execute("SELECT seq, hash, record FROM audit_records WHERE seq > ? ORDER BY seq LIMIT ?",
                                      (last[0] if last else 0, EXPORT_PAGE)).all()
                if not rows:
                    break
                for row in rows:
                    out.write(row["record"].encode() + b"\n")
                records += len(rows)
                last = (int(rows[-1]["seq"]), rows[-1]["hash"])
        os.replace(temp, path)
        if head["seq"]:
            write_head(path, int(head["seq"]), head["hash"], head["time"])
        else:
            head_path(path).unlink(missing_ok=True)  # an empty chain has no head
        return AuditExport(path, records, *(last or (None, None)))
