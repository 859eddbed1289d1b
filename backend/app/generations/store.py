"""Where generation records and the response cache live.

:class:`GenerationStore` is what the rest of the service uses; :class:`SqliteGenerationStore`
implements it on one SQLite file (stdlib ``sqlite3``, WAL journal), so a server database can
replace it behind the same methods. Every method is blocking and thread-safe: call it from a
worker thread (:class:`app.generations.recorder.Recorder` does).

Records belong to a tenant: every read, delete and cache lookup takes the tenant, and another
tenant's record is as absent as one that never existed.

The cache's eviction is by frecency: each entry keeps an exponentially decaying use count
(each use adds 1; the count halves every ``half_life_s`` seconds). It is stored as
``rank = log2(count) + t / half_life_s`` at the time ``t`` of the last use, so rows order by
their current frecency without rewriting them as time passes (the lazily decayed counter of
Mozilla's "frecency" proposal for Firefox's address bar, 2017, in log form).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.generations.records import GenerationRecord, RecordQuery

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_at REAL NOT NULL,
    operation TEXT NOT NULL,
    story_id TEXT,
    body TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS generations_by_time ON generations (tenant, created_at);
CREATE INDEX IF NOT EXISTS generations_by_story ON generations (tenant, story_id, created_at);
CREATE INDEX IF NOT EXISTS generations_by_operation
    ON generations (tenant, operation, created_at);
CREATE TABLE IF NOT EXISTS cache (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    generation_id TEXT NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    bytes INTEGER NOT NULL,
    rank REAL NOT NULL,
    uses INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX IF NOT EXISTS cache_by_rank ON cache (rank);
CREATE INDEX IF NOT EXISTS cache_by_generation ON cache (generation_id);
"""


@dataclass(frozen=True)
class CacheStats:
    """The cache's size: entries and the bytes of the answers they serve."""

    entries: int
    bytes: int


class GenerationStore(Protocol):
    """Generation records and the response cache (blocking, thread-safe methods)."""

    def put(self, record: GenerationRecord, *, cache_key: str | None = None,
            cache_max_bytes: int = 0, now: float | None = None) -> None:
        """Keep ``record``; with ``cache_key``, make it the tenant's cached answer for that key
        and evict by frecency down to ``cache_max_bytes``. ``now``: the time of use (Unix
        seconds; default the clock)."""

    def get(self, tenant: str, generation_id: str) -> GenerationRecord | None:
        """The tenant's record, or ``None`` (none, or another tenant's)."""

    def find(self, tenant: str, query: RecordQuery) -> tuple[list[GenerationRecord], int]:
        """The tenant's records matching ``query`` (newest first, one page) and how many match
        in all."""

    def delete(self, tenant: str, generation_id: str) -> bool:
        """Delete the tenant's record (and its cache entry); ``False`` when there was none."""

    def cached(self, tenant: str, key: str, *, now: float | None = None
               ) -> GenerationRecord | None:
        """The tenant's cached answer for ``key`` (its use counted), or ``None``."""

    def purge(self, older_than: float) -> int:
        """Delete every record created before ``older_than`` (Unix seconds); how many."""

    def cache_stats(self) -> CacheStats:
        """The cache's entries and bytes, all tenants."""

    def close(self) -> None:
        """Release the database."""


class SqliteGenerationStore:
    """:class:`GenerationStore` on one SQLite file.

    ``half_life_s``: the half-life of a cache entry's use count (seconds), see the module.
    One connection, serialised by a lock (a record is a few kilobytes; a write takes about a
    millisecond).

    Raises (from :meth:`open`):
        sqlite3.Error, OSError: the file cannot be created or is not a database.
    """

    def __init__(self, connection: sqlite3.Connection, half_life_s: float) -> None:
        self._db = connection
        self._half_life_s = half_life_s
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, half_life_s: float = 86_400.0) -> SqliteGenerationStore:
        """Open (creating it and its folder when missing) the store at ``path``.

        Raises:
            OSError: the folder cannot be created.
            sqlite3.Error: the file cannot be opened or is not a database.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.executescript(_SCHEMA)
        except sqlite3.Error:
            connection.close()
            raise
        return cls(connection, half_life_s)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rank(self, count: float, now: float) -> float:
        return math.log2(count) + now / self._half_life_s

    def put(self, record: GenerationRecord, *, cache_key: str | None = None,
            cache_max_bytes: int = 0, now: float | None = None) -> None:
        # the tenant is left out of a record's JSON answers, but kept here
        body = json.dumps({**record.model_dump(mode="json"), "tenant": record.tenant},
                          ensure_ascii=False)
        size = len(body.encode("utf-8"))
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (record.id, record.tenant, record.created_at.timestamp(),
                        record.operation, record.story_id, body, size))
            if cache_key is None or size > cache_max_bytes:
                return
            when = time.time() if now is None else now
            db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?, 1)",
                       (record.tenant, cache_key, record.id, size, self._rank(1.0, when)))
            self._evict(db, cache_max_bytes)

    @staticmethod
    def _evict(db: sqlite3.Connection, max_bytes: int) -> None:
        """Drop the entries of lowest frecency until the cache serves ``max_bytes`` at most."""
        total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM cache").fetchone()[0]
        if total <= max_bytes:
            return
        doomed: list[tuple[str, str]] = []
        for tenant, key, size in db.execute("SELECT tenant, key, bytes FROM cache "
                                            "ORDER BY rank ASC"):
            if total <= max_bytes:
                break
            doomed.append((tenant, key))
            total -= size
        db.executemany("DELETE FROM cache WHERE tenant = ? AND key = ?", doomed)

    def get(self, tenant: str, generation_id: str) -> GenerationRecord | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM generations WHERE id = ? AND tenant = ?",
                                   (generation_id, tenant)).fetchone()
        return GenerationRecord.model_validate_json(row[0]) if row else None

    def find(self, tenant: str, query: RecordQuery) -> tuple[list[GenerationRecord], int]:
        where, values = ["tenant = ?"], [tenant]
        if query.story_id is not None:
            where.append("story_id = ?")
            values.append(query.story_id)
        if query.operation is not None:
            where.append("operation = ?")
            values.append(query.operation)
        if query.since is not None:
            where.append("created_at >= ?")
            values.append(query.since.timestamp())  # type: ignore[arg-type]
        if query.until is not None:
            where.append("created_at < ?")
            values.append(query.until.timestamp())  # type: ignore[arg-type]
        clause = " AND ".join(where)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM generations WHERE {clause}",
                                     values).fetchone()[0]
            rows = self._db.execute(
                f"SELECT body FROM generations WHERE {clause} "
                "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                [*values, query.limit, query.offset]).fetchall()
        return [GenerationRecord.model_validate_json(row[0]) for row in rows], total

    def delete(self, tenant: str, generation_id: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute("DELETE FROM generations WHERE id = ? AND tenant = ?",
                                (generation_id, tenant))
            return cursor.rowcount > 0

    def cached(self, tenant: str, key: str, *, now: float | None = None
               ) -> GenerationRecord | None:
        when = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                "SELECT c.rank, g.body FROM cache c JOIN generations g "
                "ON g.id = c.generation_id WHERE c.tenant = ? AND c.key = ?",
                (tenant, key)).fetchone()
            if row is None:
                return None
            rank, body = row
            count = 2.0 ** (rank - when / self._half_life_s) + 1.0  # decayed, plus this use
            db.execute("UPDATE cache SET rank = ?, uses = uses + 1 WHERE tenant = ? AND key = ?",
                       (self._rank(count, when), tenant, key))
        return GenerationRecord.model_validate_json(body)

    def purge(self, older_than: float) -> int:
        with self._transaction() as db:
            return db.execute("DELETE FROM generations WHERE created_at < ?",
                              (older_than,)).rowcount

    def cache_stats(self) -> CacheStats:
        with self._lock:
            entries, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM cache").fetchone()
        return CacheStats(entries=entries, bytes=size)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def dump_lines(records: Sequence[GenerationRecord]) -> Iterator[str]:
    """``records`` as JSON Lines (one compact JSON object per line, no newline)."""
    for record in records:
        yield json.dumps(record.model_dump(mode="json"), ensure_ascii=False)

