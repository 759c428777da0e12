"""Retried writes counted once: the answers of POST /v1/outcomes by their `Idempotency-Key`.

A feed that retries a post after a time-out would count its flights twice and bias every quality
figure. A client that sends `Idempotency-Key: <key>` (the IETF draft "The Idempotency-Key HTTP
Header Field", as Stripe's API takes it) gets, for the same key and the same body within KEEP_S,
the first answer again (with `Idempotent-Replayed: true`), and nothing is counted twice; the same
key with another body is 422, and a key whose first request is still being answered is 409.

The keys live in a SQLite file that all the workers of one server share (beside its Prometheus
files, so a restart starts afresh). They hold within a pod, not across pods: a retry that a
balancer sends to another pod is counted there again, unless the balancer routes the route by the
header (HAProxy: `balance hdr(Idempotency-Key)`; docs/monitoring.md).

The file lives in the pod's /tmp (an emptyDir of 64 MiB, past which the pod is evicted), and a feed
may send a new key with every post: it is bounded at MAX_STORE_BYTES of rows. Past it, the oldest
quarter of the keys is dropped, and a retry of one of those would count again. A feed posting once a
minute keeps 1,440 keys a day, a few hundred KB: only one sending keys far faster reaches the bound.
"""

import sqlite3
import threading
import time
from enum import Enum
from pathlib import Path

KEEP_S = 24 * 3600  # the draft's example; a feed retries within minutes
STALE_S = 60.0  # a key claimed this long ago without an answer: its worker died, a retry may take it
MAX_KEY_CHARACTERS = 255
MAX_STORE_BYTES = 16 * 1_048_576  # of SQLite pages in use; freed pages are reused, so the file stays near it


class Claim(Enum):
    """What `IdempotencyStore.claim` found for a key."""

    NEW = "new"  # never seen (or expired, or stale): the caller answers and calls finish() or release()
    DONE = "done"  # answered before with the same body: replay the answer
    BUSY = "busy"  # its first request is being answered now
    OTHER_BODY = "other_body"  # answered or claimed with another body


def usable_key(key: str) -> bool:
    """A key of 1 to MAX_KEY_CHARACTERS printable ASCII characters."""
    return 0 < len(key) <= MAX_KEY_CHARACTERS and key.isascii() and key.isprintable()


class IdempotencyStore:
    """Keys, body fingerprints and answers in one SQLite file; safe across threads and processes."""

    def __init__(self, path: Path, max_bytes: int = MAX_STORE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.local = threading.local()
        self.opened: list[sqlite3.Connection] = []  # every thread's, to close
        with self.connection() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, "
                "answer BLOB, claimed REAL NOT NULL)"
            )

    def connection(self) -> sqlite3.Connection:
        """This thread's connection: autocommit, transactions opened explicitly."""
        db: sqlite3.Connection | None = getattr(self.local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            self.local.db = db
            self.opened.append(db)
        return db

    def close(self) -> None:
        """Close every thread's connection (the server's store lives as long as its worker; a test's
        does not, and Python 3.13 warns of a connection left open)."""
        for db in self.opened:
            db.close()
        self.opened.clear()

    def claim(self, key: str, fingerprint: str) -> tuple[Claim, bytes | None]:
        """Claim `key` for a request whose body has `fingerprint`; with DONE, the answer to replay."""
        now = time.time()
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM answers WHERE claimed < ?", (now - KEEP_S,))
            if self.bytes_used(db) > self.max_bytes:
                db.execute(
                    "DELETE FROM answers WHERE key IN "
                    "(SELECT key FROM answers ORDER BY claimed LIMIT (SELECT count(*) / 4 + 1 FROM answers))"
                )
            row = db.execute("SELECT fingerprint, answer, claimed FROM answers WHERE key = ?", (key,)).fetchone()
            if row is None:
                db.execute("INSERT INTO answers VALUES (?, ?, NULL, ?)", (key, fingerprint, now))
                claim, answer = Claim.NEW, None
            elif row[0] != fingerprint:
                claim, answer = Claim.OTHER_BODY, None
            elif row[1] is not None:
                claim, answer = Claim.DONE, bytes(row[1])
            elif now - row[2] > STALE_S:
                db.execute("UPDATE answers SET claimed = ? WHERE key = ?", (now, key))
                claim, answer = Claim.NEW, None
            else:
                claim, answer = Claim.BUSY, None
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return claim, answer

    @staticmethod
    def bytes_used(db: sqlite3.Connection) -> int:
        """Bytes of the file's pages that hold data (its size less its free pages)."""
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages * db.execute("PRAGMA page_size").fetchone()[0])

    def finish(self, key: str, answer: bytes) -> None:
        """Keep the answer of a claimed key, to replay."""
        self.connection().execute("UPDATE answers SET answer = ? WHERE key = ?", (answer, key))

    def release(self, key: str) -> None:
        """Give up a claimed key whose request failed: a retry is a first request again."""
        self.connection().execute("DELETE FROM answers WHERE key = ? AND answer IS NULL", (key,))
