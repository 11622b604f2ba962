"""Positions and ETAs of waiting jobs: coalesced, and sent from off the worker's path.

A change of the queue (submit, claim, cancel, retry, requeue) only asks for a
broadcast, after it commits: one conditional UPDATE of a single row, plus a task for
the maintenance cluster when no request is pending yet. Whatever the queue's depth,
that is all the GPU worker and the web process do.

The broadcast runs in the maintenance cluster. It reads every queued job's position
and ETA once, refreshes the copies in message metadata (which a reload shows) with
one statement, and sends every user with queued jobs one `queue.positions` event
that carries all of their queued jobs, numbered by `version`. A burst of changes
costs at most a few broadcasts a second (`IMAGEGEN_BROADCAST_INTERVAL_SECONDS`):
the requests coalesce while one is pending, and a broadcast waits out the interval
since the last one before it reads the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from chat.services import message_update_many
from generation import doorbells, events, selectors
from generation.models import QueueBroadcast

logger = logging.getLogger(__name__)

QUEUE_LOCK_KEY = 7_301_001  # pg_advisory_lock key: one broadcast at a time across processes
# A request whose task never ran (a broker flushed, a cluster removed) is made again
# by the next change after this long.
STALE_REQUEST = timedelta(seconds=30)


def queue_broadcast_request(*, now: datetime | None = None) -> bool:
    """Ask for a broadcast; True when this call queued one, False when one is pending.

    Runs after the change commits (`transaction.on_commit(..., robust=True)`), so a
    failure here is logged and never undoes or strands the change.
    """
    now = now or timezone.now()
    table = QueueBroadcast._meta.db_table
    stamp, stale = (connection.ops.adapt_datetimefield_value(moment) for moment in (now, now - STALE_REQUEST))
    # Created on first use, else marked as requested unless a request is pending:
    # one statement, whose answer says whether this call made the request.
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (id, requested_at, version) VALUES (1, %s, 0)"
            f" ON CONFLICT (id) DO UPDATE SET requested_at = excluded.requested_at"
            f" WHERE {table}.requested_at IS NULL OR {table}.requested_at < %s RETURNING id",
            [stamp, stale],
        )
        if cursor.fetchone() is None:
            return False
    doorbells.enqueue("generation.tasks.broadcast_queue", cluster="maintenance", name="queue broadcast")
    return True


def queue_broadcast_run(
    *,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = timezone.now,
) -> int:
    """Send everyone waiting their fresh positions and ETAs; returns the version sent."""
    global _last_duration, _copied_at
    QueueBroadcast.objects.get_or_create(pk=1)
    # A long queue makes a broadcast cost more; then they come further apart, so
    # they never take more than about a third of a core.
    interval = max(settings.IMAGEGEN_BROADCAST_INTERVAL_SECONDS, 3 * _last_duration)
    last = QueueBroadcast.objects.filter(pk=1).values_list("sent_at", flat=True).get()
    if last is not None and interval:
        wait = interval - (now() - last).total_seconds()
        if wait > 0:
            sleep(min(wait, interval))
    started = time.monotonic()
    with _one_at_a_time():
        # The request is cleared before the queue is read: a change that commits
        # after the read asks for (and gets) a broadcast of its own.
        QueueBroadcast.objects.filter(pk=1).update(requested_at=None, version=F("version") + 1, sent_at=now())
        version = QueueBroadcast.objects.filter(pk=1).values_list("version", flat=True).get()
        entries = selectors.queue_eta()
        moment = now()
        since = None if _copied_at is None else (moment - _copied_at).total_seconds()
        copy_due = since is None or not 0 <= since < copy_interval(len(entries))
        if copy_due:
            # A message shared by several images of a prompt shows its first one's
            # place and when its last one should be ready.
            copies: dict[int, dict] = {}
            for entry in entries:
                copy = copies.setdefault(entry["message_id"], {"queue_position": entry["position"]})
                copy["estimated_seconds"] = entry["estimated_seconds"]
            message_update_many(updates=copies, only_if={"status": "queued"})
            _copied_at = moment
        per_user: dict[int, list[dict]] = {}
        for entry in entries:
            per_user.setdefault(entry["owner_id"], []).append(
                {key: entry[key] for key in ("job_id", "position", "estimated_start_seconds", "estimated_seconds")}
            )
        events.send_to_users(
            [(owner_id, "queue.positions", {"version": version, "jobs": jobs}) for owner_id, jobs in per_user.items()]
        )
    _last_duration = time.monotonic() - started
    if not copy_due:
        # The copy is owed: a later broadcast writes it, even if the queue stays still.
        transaction.on_commit(queue_broadcast_request, robust=True)
    return version


def copy_interval(depth: int) -> float:
    """Seconds between two refreshes of the messages' copy of positions, for `depth` jobs.

    Rewriting every queued message is the one part of a broadcast whose cost grows with
    the queue, in the database server. Up to COPY_EVERY_BROADCAST jobs it is done every
    time; beyond, at most COPY_ROWS_PER_SECOND rows a second, so the database's share
    stays the same whatever the depth (2000 waiting: every 1.8 s). Pages never wait
    for it: they show positions from the job table, as the live events do.
    """
    return max(0, depth - COPY_EVERY_BROADCAST) / COPY_ROWS_PER_SECOND


COPY_EVERY_BROADCAST = 200
COPY_ROWS_PER_SECOND = 1000
_last_duration = 0.0  # seconds the last broadcast of this process took
_copied_at: datetime | None = None  # when this process last refreshed the messages' copy


@contextmanager
def _one_at_a_time():
    """Serialise broadcasts across processes, so versions follow the order of the reads.

    A session-level advisory lock on PostgreSQL, held without a transaction, so
    the workers' requests (an UPDATE of the same row) never wait on a broadcast. On
    SQLite there is one maintenance cluster per database file.
    """
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [QUEUE_LOCK_KEY])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [QUEUE_LOCK_KEY])
