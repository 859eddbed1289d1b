"""The author's feedback on variants and drafts, per tenant and story, in SQLite.

A record keeps the passage chosen, those rejected, a rating (1-10) and a note. A note the
author marks ``carry_note`` is carried into the story's next prose request (one that names
the story in ``story_id``) as a user request, once. The chosen passage becomes a voice
exemplar (the routes archive it tagged as the author's voice; see ``app.api.v1.voice``).

SQLite through the standard library's ``sqlite3`` in WAL mode; one connection guarded by a
lock, used from worker threads.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.errors import FeedbackUnavailable
from app.schemas.context import Priority, UserRequest

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    story_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    operation TEXT,
    chosen TEXT,
    rejected TEXT NOT NULL,
    rating INTEGER,
    note TEXT,
    carry_note INTEGER NOT NULL DEFAULT 0,
    carried_at TEXT,
    exemplar_file TEXT
);
CREATE INDEX IF NOT EXISTS feedback_story ON feedback (tenant, story_id, id);
"""


@dataclass(frozen=True)
class FeedbackRecord:
    """One stored piece of feedback (``rating`` 1-10; times ISO 8601, UTC)."""

    id: int
    story_id: str
    created_at: str
    operation: str | None
    chosen: str | None
    rejected: list[str]
    rating: int | None
    note: str | None
    carry_note: bool
    carried_at: str | None
    exemplar_file: str | None


class FeedbackStore:
    """Feedback records in the SQLite database at ``path`` (created with its directory).

    Raises:
        sqlite3.Error: the database cannot be opened or written (callers turn it into
            their own error).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls, path: Path) -> FeedbackStore:
        """The store at ``path``.

        Raises:
            FeedbackUnavailable: it cannot be opened (HTTP 503; the cause is logged).
        """
        try:
            return cls(path)
        except (sqlite3.Error, OSError) as error:
            logger.warning("the feedback database %s could not be opened: %s: %s", path,
                           type(error).__name__, error)
            raise FeedbackUnavailable(
                "The feedback database could not be opened: make FEEDBACK_DB_PATH a writable "
                "file path (see the server log).", param="FEEDBACK_DB_PATH") from error

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def add(self, tenant: str, story_id: str, *, operation: str | None, chosen: str | None,
            rejected: list[str], rating: int | None, note: str | None,
            carry_note: bool) -> FeedbackRecord:
        """Store one record and return it."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT INTO feedback (tenant, story_id, created_at, operation, chosen, "
                "rejected, rating, note, carry_note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tenant, story_id, now, operation, chosen, json.dumps(rejected), rating, note,
                 int(carry_note)))
            row_id = int(cursor.lastrowid or 0)
        return self._get(tenant, row_id)

    def set_exemplar(self, tenant: str, record_id: int, file: str) -> FeedbackRecord:
        """Record the archive file the chosen passage was stored as."""
        with self._lock, self._db:
            self._db.execute("UPDATE feedback SET exemplar_file = ? WHERE tenant = ? AND id = ?",
                             (file, tenant, record_id))
        return self._get(tenant, record_id)

    def for_story(self, tenant: str, story_id: str) -> list[FeedbackRecord]:
        """The story's records, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM feedback WHERE tenant = ? AND story_id = ? ORDER BY id",
                (tenant, story_id)).fetchall()
        return [_record(row) for row in rows]

    def take_notes(self, tenant: str, story_id: str) -> list[str]:
        """The notes waiting to be carried into the story's next request, oldest first;
        they are marked carried (each is carried once)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock, self._db:
            rows = self._db.execute(
                "SELECT id, note FROM feedback WHERE tenant = ? AND story_id = ? AND "
                "carry_note = 1 AND carried_at IS NULL AND note IS NOT NULL ORDER BY id",
                (tenant, story_id)).fetchall()
            self._db.executemany("UPDATE feedback SET carried_at = ? WHERE id = ?",
                                 [(now, row["id"]) for row in rows])
        return [str(row["note"]) for row in rows]

    def _get(self, tenant: str, record_id: int) -> FeedbackRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM feedback WHERE tenant = ? AND id = ?",
                                   (tenant, record_id)).fetchone()
        return _record(row)


def _record(row: sqlite3.Row) -> FeedbackRecord:
    return FeedbackRecord(
        id=row["id"], story_id=row["story_id"], created_at=row["created_at"],
        operation=row["operation"], chosen=row["chosen"], rejected=json.loads(row["rejected"]),
        rating=row["rating"], note=row["note"], carry_note=bool(row["carry_note"]),
        carried_at=row["carried_at"], exemplar_file=row["exemplar_file"])


def with_notes(request: Any, notes: list[str]) -> Any:
    """``request`` with ``notes`` appended to its story's user requests (type ``feedback``,
    high priority, ids ``feedback-note-<n>``)."""
    if not notes:
        return request
    context = request.structured_context
    added = [UserRequest(type="feedback", content=note, priority=Priority.high,
                         id=f"feedback-note-{i}") for i, note in enumerate(notes, 1)]
    context = context.model_copy(update={"user_requests": [*context.user_requests, *added]})
    return request.model_copy(update={"structured_context": context})
