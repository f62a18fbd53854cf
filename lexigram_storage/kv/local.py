"""``LocalStorage``: key-value storage in one SQLite database (WAL mode) under ``base_path``.

Why SQLite and how it is used (the figures are in the README, "Key-value storage"):

- A write is one SQLite transaction, so a process killed mid-write leaves the old value or the
  new one, never a torn one; processes sharing the directory serialise their writes on the
  database's lock (``busy_timeout`` = ``lock_timeout``), so no acknowledged write is lost.
- Keys and namespaces are column values, never file names: no key can reach outside
  ``base_path``, and any text is a valid key.
- Two connections per store. Point operations (get, set, delete, exists) run on the event
  loop's thread on a connection that never waits: its busy timeout is 0, it never checkpoints
  the WAL (no fsync), and values over ``INLINE_LIMIT`` characters skip it. Whenever it would
  wait (another writer holds the lock), the operation goes to the store's worker thread, whose
  connection waits up to ``lock_timeout``; scans (``list_keys``, ``clear``), opening, closing,
  checkpoints, the purge of expired keys and, with ``fsync=True``, every write run there too.
  The event loop is therefore never blocked by a lock, an fsync or a scan.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from lexigram.contracts.core.health import HealthCheckResult
from lexigram.contracts.infra.storage import StorageError, StorageType
from lexigram.logging import get_logger

from lexigram_storage.errors import StorageUnavailableError
from lexigram_storage.kv.base import Clock, KVStoreBase, Pattern

__all__ = ["DATABASE_NAME", "INLINE_LIMIT", "LocalStorage"]

logger = get_logger(__name__)

DATABASE_NAME = "kv.sqlite3"
#: values longer than this (JSON characters) are written by the worker thread
INLINE_LIMIT = 64 * 1024
#: writes between two maintenance runs (WAL checkpoint + purge of expired keys)
_MAINTAIN_EVERY = 1000
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;
"""
_ALIVE = "(expires_at IS NULL OR expires_at > ?)"
_GET = f"SELECT value FROM kv WHERE ns = ? AND key = ? AND {_ALIVE}"
_EXISTS = f"SELECT 1 FROM kv WHERE ns = ? AND key = ? AND {_ALIVE}"
_SET = ("INSERT INTO kv (ns, key, value, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT (ns, key) "
        "DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at")
_DELETE = "DELETE FROM kv WHERE ns = ? AND key = ? RETURNING expires_at"
_LIST = f"SELECT key FROM kv WHERE ns = ? AND {_ALIVE}"
_LIST_PREFIX = f"SELECT key FROM kv WHERE ns = ? AND key GLOB ? AND {_ALIVE}"
_CLEAR = "DELETE FROM kv WHERE ns = ?"
_PURGE = "DELETE FROM kv WHERE expires_at <= ?"

_T = TypeVar("_T")


class LocalStorage(KVStoreBase):
    """``StorageBackendProtocol`` persisted in ``<base_path>/kv.sqlite3``.

    ``connect()`` creates the directory and the database; any call before it (or after
    ``disconnect()``) opens them first. Several stores, threads and processes may use one
    ``base_path`` at once. Not for network file systems (SQLite's WAL mode needs shared memory).

    Args:
        base_path: directory of the database.
        default_ttl: seconds a key lives when ``set`` gets no ``ttl``; ``None``: forever.
        lock_timeout: seconds a write waits while another connection writes, then fails with
            ``StorageUnavailableError``.
        fsync: make each write durable against power loss (SQLite ``synchronous=FULL``); the
            default survives a crash of the process (SIGKILL) but not of the machine, and is
            several times faster.
        clock: the time in seconds since the epoch (``time.time``); tests may pass their own.
    """

    def __init__(
        self,
        base_path: str | Path,
        *,
        default_ttl: float | None = None,
        lock_timeout: float = 5.0,
        fsync: bool = False,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(default_ttl=default_ttl, clock=clock)
        if not lock_timeout > 0:
            raise ValueError(f"lock_timeout must be more than 0 seconds, not {lock_timeout!r}")
        self.base_path = Path(base_path)
        self.path = self.base_path / DATABASE_NAME
        self.lock_timeout = lock_timeout
        self.fsync = fsync
        self._executor: ThreadPoolExecutor | None = None
        self._inline: sqlite3.Connection | None = None  # event-loop thread, never waits
        self._worker: sqlite3.Connection | None = None  # worker thread, waits for locks
        self._writes = 0
        self._maintenance: asyncio.Future[None] | None = None

    @property
    def storage_type(self) -> StorageType:
        return StorageType.FILE

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Create ``base_path`` and the database if needed, and open both connections."""
        await self._in_thread(lambda db: None, None)  # opening is what _in_thread does first

    async def disconnect(self) -> None:
        """Close both connections once the worker thread's pending work is done. The worker
        thread itself ends with the store; a later call opens the database again."""
        inline, self._inline = self._inline, None  # no statement starts on it any more
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close, inline)

    def _open(self) -> None:
        if self._worker is not None:
            return
        self.base_path.mkdir(parents=True, exist_ok=True)
        synchronous = "FULL" if self.fsync else "NORMAL"
        worker = sqlite3.connect(self.path, timeout=self.lock_timeout, isolation_level=None)
        try:
            worker.execute("PRAGMA journal_mode = WAL")
            worker.execute(f"PRAGMA synchronous = {synchronous}")
            worker.executescript(_SCHEMA)
            inline = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                     check_same_thread=False)
        except BaseException:
            worker.close()
            raise
        inline.execute(f"PRAGMA synchronous = {synchronous}")
        inline.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints fsync: worker thread only
        self._worker, self._inline = worker, inline
        self._maintain()

    def _close(self, inline: sqlite3.Connection | None) -> None:
        for connection in (inline, self._worker):
            if connection is not None:
                connection.close()
        self._worker = None

    # ------------------------------------------------------------------ the protocol

    async def get(self, key: str, namespace: str | None = None) -> Any | None:
        args = (self._namespace(namespace), self._key(key), self.clock())
        # fetchall: the statement runs to its end, so its read transaction ends with it
        rows = await self._point(key, lambda db: db.execute(_GET, args).fetchall())
        return json.loads(rows[0][0]) if rows else None

    async def set(self, key: str, value: Any, namespace: str | None = None,
                  ttl: float | None = None) -> bool:
        ns, key = self._namespace(namespace), self._key(key)
        text = self._encode(key, value)
        args = (ns, key, text, self._expires_at(ttl))
        await self._point(key, lambda db: db.execute(_SET, args), write=True,
                          inline=len(text) <= INLINE_LIMIT)
        return True

    async def delete(self, key: str, namespace: str | None = None) -> bool:
        args = (self._namespace(namespace), self._key(key))
        rows: list[tuple[float | None]] = await self._point(
            key, lambda db: db.execute(_DELETE, args).fetchall(), write=True)
        now = self.clock()
        return any(expires_at is None or expires_at > now for (expires_at,) in rows)

    async def exists(self, key: str, namespace: str | None = None) -> bool:
        args = (self._namespace(namespace), self._key(key), self.clock())
        return bool(await self._point(key, lambda db: db.execute(_EXISTS, args).fetchall()))

    async def list_keys(self, pattern: str | None = None,
                        namespace: str | None = None) -> list[str]:
        ns, glob = self._namespace(namespace), Pattern(pattern)
        now = self.clock()

        def scan(db: sqlite3.Connection) -> list[str]:
            if glob.prefix:
                rows = db.execute(_LIST_PREFIX, (ns, glob.prefix + "*", now))
            else:
                rows = db.execute(_LIST, (ns, now))
            keys = [key for (key,) in rows]  # (ns, key) order: sorted by code point
            return keys if glob.match is None else [k for k in keys if glob.match(k) is not None]

        return await self._in_thread(scan, pattern)

    async def clear(self, namespace: str | None = None) -> bool:
        ns = self._namespace(namespace)
        await self._in_thread(lambda db: db.execute(_CLEAR, (ns,)), None)
        return True

    async def health_check(self, timeout: float = 5.0) -> HealthCheckResult:
        """Opens the database if needed and takes its write lock (then releases it): the
        store can be read and written within *timeout*. Never raises."""
        started = time.perf_counter()
        details: dict[str, Any] = {"path": str(self.path)}
        error = None
        try:
            await asyncio.wait_for(self._in_thread(_probe, None), timeout)
        except TimeoutError:
            error = f"no answer within {timeout}s"
        except Exception as exc:
            error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return self._health(started, error, details)

    # ------------------------------------------------------------------ running statements

    async def _point(self, key: str, statement: Callable[[sqlite3.Connection], _T], *,
                     write: bool = False, inline: bool = True) -> _T:
        """Run a one-key statement on the event loop's connection if it need not wait, else on
        the worker thread."""
        db = self._inline
        if db is not None and inline and not (write and self.fsync):
            try:
                result = statement(db)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in _BUSY:
                    raise _failure(exc, key) from exc
            except sqlite3.Error as exc:
                raise _failure(exc, key) from exc
            else:
                if write:
                    self._wrote()
                return result
        result = await self._in_thread(statement, key)
        if write:
            self._wrote()
        return result

    async def _in_thread(self, work: Callable[[sqlite3.Connection], _T], key: str | None) -> _T:
        """Run *work* with the worker thread's connection (opening the store first if needed)."""
        def run() -> _T:
            self._open()
            assert self._worker is not None
            return work(self._worker)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread(), run)
        except sqlite3.Error as exc:
            raise _failure(exc, key) from exc
        except OSError as exc:
            raise StorageUnavailableError(f"cannot open {self.path}: {exc}", backend=self.backend,
                                          key=key, cause=exc) from exc

    def _thread(self) -> ThreadPoolExecutor:
        # One thread for the store's lifetime, so that everything done with the worker's
        # connection (opening and closing included) runs in order.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="lexigram-kv")
        return self._executor

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % _MAINTAIN_EVERY == 0 and self._maintenance is None:
            future: Future[None] = self._thread().submit(self._maintain)
            self._maintenance = asyncio.wrap_future(future)
            self._maintenance.add_done_callback(self._maintained)

    def _maintain(self) -> None:
        """Checkpoint the WAL into the database (without waiting for anyone) and drop expired
        keys; runs on the worker thread."""
        if self._worker is None:
            return
        self._worker.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._worker.execute(_PURGE, (self.clock(),))

    def _maintained(self, done: asyncio.Future[None]) -> None:
        self._maintenance = None
        if not done.cancelled() and done.exception() is not None:
            logger.warning("storage.kv.maintenance_failed", path=str(self.path),
                           error=repr(done.exception()))


def _probe(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.execute("ROLLBACK")


def _failure(exc: sqlite3.Error, key: str | None) -> StorageError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in _BUSY:
        return StorageUnavailableError("the database stayed locked by another writer for "
                                       "longer than lock_timeout", backend="kv", key=key,
                                       cause=exc)
    return StorageUnavailableError(f"SQLite error: {exc}", backend="kv", key=key, cause=exc)
