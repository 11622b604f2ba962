"""django-q2 task entry points. They take ids (or nothing), never objects."""

import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings

from generation import heartbeat
from generation.broadcasts import queue_broadcast_run
from generation.models import ImageJob
from generation.outages import DATABASE, OUTAGES, drop_broken_connections
from generation.retention import records_prune
from generation.services import jobs_expire_stuck, ring_worker
from generation.worker import JobRunner

T = TypeVar("T")


def process_next_job() -> list[int]:
    """A doorbell: run queued jobs back to back, for up to IMAGEGEN_DRAIN_SECONDS.

    Draining in one task keeps the broker out of the gap between two jobs; the
    budget keeps the task under its hard timeout. Returns the ids of the jobs run.
    """
    queued = ImageJob.objects.filter(status=ImageJob.Status.QUEUED)
    ran: list[int] = []
    try:
        if not queued.exists():
            return []  # a spare doorbell: nothing to load, lock or claim
        runner = JobRunner()
        heartbeat.start(device=runner.generator.device, max_batch=runner.max_batch, generator=runner.generator)
        ran = runner.run_queue(budget=drain_budget())
        if (ran or runner.device_busy) and queued.exists():
            # Keep the queue moving even if a doorbell was lost, or the device was busy
            # this time; a spare doorbell finds nothing and stops.
            ring_worker()
    except Exception as exc:
        # The database is away: the worker's beat rings again once it answers.
        if OUTAGES.failed(exc, doing="draining the queue") is None:
            raise
        drop_broken_connections()
    return ran


def drain_budget() -> float:
    """How long one task may go on claiming jobs: the drain time, within the hard timeout.

    What is left of the hard timeout after the budget must still hold a whole job
    (its time limit, a breaker cool-down and 120 s for loading a model); with a
    short hard timeout a task runs one job.
    """
    spare = (
        settings.IMAGEGEN_HARD_TIMEOUT_SECONDS
        - settings.IMAGEGEN_TIMEOUT_SECONDS
        - settings.IMAGEGEN_BREAKER_COOLDOWN_SECONDS
        - 120
    )
    return max(0.0, min(settings.IMAGEGEN_DRAIN_SECONDS, spare))


def broadcast_queue() -> int | None:
    """The maintenance cluster's coalesced queue broadcast; returns its version."""
    return _maintenance(queue_broadcast_run, doing="broadcasting the queue")


def expire_stuck_jobs() -> dict | None:
    """The maintenance cluster's guard, every 60 s.

    A guard that has not run for much longer than its minute may have slept through an
    outage of the database that this process never saw (nothing asked it meanwhile):
    then silence is not taken for death this time either (`selectors.silence_means_dead`).
    """
    global _guard_ran_at
    now = time.monotonic()
    if _guard_ran_at is not None and now - _guard_ran_at > GUARD_SECONDS + settings.IMAGEGEN_WORKER_DEAD_AFTER_SECONDS:
        OUTAGES.missed(DATABASE)
    result = _maintenance(jobs_expire_stuck, doing="guarding against stuck jobs")
    if result is not None:
        _guard_ran_at = now
    return result


def prune() -> dict | None:
    """The maintenance cluster's retention task, every 15 minutes."""
    return _maintenance(records_prune, doing="pruning old records")


GUARD_SECONDS = 60  # the guard's schedule (migration 0002)
_guard_ran_at: float | None = None  # monotonic, this process's last guard that worked


def _maintenance(task: Callable[[], T], *, doing: str) -> T | None:
    """Run a maintenance task. While the database is away it does nothing (the next run
    will), logged once; once it works, an outage this process saw is over."""
    try:
        result = task()
    except Exception as exc:
        if OUTAGES.failed(exc, doing=doing) is None:
            raise
        drop_broken_connections()
        return None
    OUTAGES.answered(DATABASE)
    return result
