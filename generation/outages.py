"""When something the service depends on is away: the database, Redis or the disk.

`kind_of(exc)` says whether an exception is an outage (and of what) rather than a bug.
`OUTAGES` logs each outage once when it starts and once when it ends, per process,
however many writes fail meanwhile. `retry_while_down` runs a function again, with
bounded exponential backoff (tenacity), until what it needs answers.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import connections
from django.db.utils import InterfaceError, OperationalError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_never, wait_exponential

logger = logging.getLogger(__name__)

T = TypeVar("T")

DATABASE, REDIS, DISK = "database", "redis", "disk"
WHAT = {DATABASE: "the database", REDIS: "Redis", DISK: "the disk"}
FULL_DISK = {errno.ENOSPC, errno.EDQUOT}
# Seconds between tries while something is down: from a quarter second up to this.
MAX_BACKOFF = 2.0


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # pragma: no cover - redis is a dependency
        return ()
    return (RedisConnectionError, RedisTimeoutError)


def _pool_errors() -> tuple[type[BaseException], ...]:
    try:
        from psycopg_pool import PoolTimeout
    except ImportError:  # pragma: no cover - only with PostgreSQL
        return ()
    return (PoolTimeout,)


REDIS_ERRORS = _redis_errors()
DATABASE_ERRORS = (OperationalError, InterfaceError, *_pool_errors())


# SQLite's errors that mean "not now" rather than a bug (a missing table, bad SQL).
SQLITE_AWAY = ("database is locked", "disk i/o error", "database or disk is full", "unable to open database file")
# PostgreSQL's: connection exceptions (08), shutdowns (57P01-57P03), insufficient
# resources (53: disk full, out of memory, too many connections).
POSTGRES_AWAY = ("08", "57P01", "57P02", "57P03", "53")


def _database_away(error: BaseException) -> bool:
    if not isinstance(error, OperationalError):
        return True  # InterfaceError (a closed connection), the pool's timeout
    cause = error.__cause__
    sqlstate = getattr(getattr(cause, "diag", None), "sqlstate", None) or getattr(cause, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(POSTGRES_AWAY)
    message = str(error).lower()
    if cause is not None and type(cause).__module__.startswith("sqlite3"):
        return message.startswith(SQLITE_AWAY)
    return True  # a connection that could not be made or was cut carries no SQLSTATE


def kind_of(exc: BaseException) -> str | None:
    """DATABASE, REDIS or DISK when `exc` means that dependency is away; None for anything else.

    A database error counts only when it means the database cannot answer now (a
    connection refused, cut or closed, a server shutting down, a lock or a full disk),
    never for a bug such as a missing table.
    """
    for error in _chain(exc):
        if isinstance(error, DATABASE_ERRORS):
            return DATABASE if _database_away(error) else None
        if REDIS_ERRORS and isinstance(error, REDIS_ERRORS):
            return REDIS
        if isinstance(error, OSError) and error.errno in FULL_DISK:
            return DISK
    return None


def is_outage(exc: BaseException) -> bool:
    return kind_of(exc) is not None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


class Outages:
    """This process's view of what is down: each outage is logged when it starts and when it ends."""

    def __init__(self):
        self._lock = threading.Lock()
        self._since: dict[str, tuple[float, str]] = {}
        self._ended: dict[str, float] = {}  # kind -> when its last outage ended (monotonic)

    def failed(self, exc: BaseException, *, doing: str = "") -> str | None:
        """Note a failure; returns its kind (None when `exc` is no outage, which is not noted)."""
        kind = kind_of(exc)
        if kind is None:
            return None
        with self._lock:
            if kind in self._since:
                return kind
            self._since[kind] = (time.monotonic(), doing)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        logger.warning(
            "Outage: %s cannot be reached (%s%s). Retrying until it answers.",
            WHAT[kind],
            f"{doing}: " if doing else "",
            detail,
        )
        return kind

    def answered(self, kind: str) -> None:
        """`kind` worked again: the end of its outage, if there was one, is logged."""
        with self._lock:
            began = self._since.pop(kind, None)
            if began is not None:
                self._ended[kind] = time.monotonic()
        if began is not None:
            logger.warning("Outage over: %s answers again after %.1f s.", WHAT[kind], time.monotonic() - began[0])

    def missed(self, kind: str) -> None:
        """`kind` may have been away until now without this process noticing (it was not
        asking meanwhile): for `settled`, as if an outage had just ended."""
        with self._lock:
            if kind not in self._since:
                self._ended[kind] = time.monotonic()

    def down(self, kind: str) -> bool:
        with self._lock:
            return kind in self._since

    def forget(self) -> None:
        """Forget every outage, current and past (a process that starts afresh: tests)."""
        with self._lock:
            self._since.clear()
            self._ended.clear()

    def settled(self, kind: str, *, seconds: float) -> bool:
        """Whether `kind` has answered for at least `seconds` since this process last saw it away."""
        with self._lock:
            if kind in self._since:
                return False
            ended = self._ended.get(kind)
        return ended is None or time.monotonic() - ended >= seconds


OUTAGES = Outages()


def drop_broken_connections() -> None:
    """Close this thread's database connections that failed, so the next query opens a new one.

    Django only does this at the start and end of a request; a worker's threads call it
    after an outage error. A connection inside a transaction is left to its `atomic`.
    """
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            continue
        try:
            conn.close()
        except Exception:  # a broken connection may fail to close; it is dropped either way
            conn.connection = None


def retry_while_down(
    work: Callable[[], T],
    *,
    doing: str,
    kind: str = DATABASE,
    give_up: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `work` until it succeeds, waiting out outages with bounded exponential backoff.

    An error that is no outage is raised at once. `give_up()` is asked after each
    failure: when it says yes, the outage error is raised. The start and end of the
    outage are logged once each.
    """

    noted: set[str] = set()

    def note(state: RetryCallState) -> None:
        noted.add(OUTAGES.failed(state.outcome.exception(), doing=doing))
        drop_broken_connections()

    def stop(state: RetryCallState) -> bool:
        return give_up()

    retrying = Retrying(
        retry=retry_if_exception(is_outage),
        wait=wait_exponential(multiplier=0.25, max=MAX_BACKOFF),
        stop=stop if give_up else stop_never,
        before_sleep=note,
        sleep=sleep,
        reraise=True,
    )
    result = retrying(work)
    for answered in {kind, *noted}:
        OUTAGES.answered(answered)
    return result


class OutageLogFilter(logging.Filter):
    """A log record whose exception is an outage becomes the outage's one line.

    Libraries log a traceback for every failed write (django-q2's monitor, scheduler
    and pusher; Django's request handler); while the database or Redis is away that
    would be one per write. Such a record is noted in `OUTAGES` (logged once when the
    outage starts) and dropped; every other record passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == __name__:
            return True
        if record.exc_info and record.exc_info[1] is not None:
            return OUTAGES.failed(record.exc_info[1], doing=record.getMessage()[:120]) is None
        if isinstance(record.msg, BaseException):  # logger.error(exc), as django-q2's status saver does
            return OUTAGES.failed(record.msg, doing=f"{record.name} logging") is None
        return True
