"""Waiting for jobs without holding a thread or a database connection.

An API request may wait minutes behind a long queue. Its view is async: database work
runs in short calls on a small, bounded pool of threads (`run_db`), each call closing
its connections (on PostgreSQL they go back to the web process's pool), and the wait
itself is an `asyncio.Event`. One watcher per event loop looks up every awaited job in
one query every IMAGEGEN_API_POLL_SECONDS, so 200 waiting requests cost one small
query per tick, not 200.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from generation.models import ImageJob

logger = logging.getLogger(__name__)

T = TypeVar("T")


@cache
def _db_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.IMAGEGEN_API_DB_THREADS, thread_name_prefix="api-db")


async def run_db(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run `function` on the API's database threads; its connections are closed after it."""

    def call() -> T:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return await sync_to_async(call, thread_sensitive=False, executor=_db_executor())()


def _pending(job_ids: list[int]) -> dict[int, str]:
    """The status of each job still pending; a job deleted meanwhile (with its
    conversation) has ended, like a finished one."""
    pending = ImageJob.objects.filter(pk__in=job_ids, status__in=ImageJob.PENDING)
    return dict(pending.values_list("pk", "status"))


class JobWatcher:
    """Wakes the requests that wait for jobs once none of their jobs is in a status they
    wait out: pending (the default: until the jobs end), or only queued (until the jobs
    run, for a stream that sends previews)."""

    def __init__(self) -> None:
        self._waiting: dict[asyncio.Event, tuple[set[int], frozenset[str]]] = {}
        self._task: asyncio.Task | None = None

    async def wait(self, job_ids: Iterable[int], *, while_status: Iterable[str] = ImageJob.PENDING) -> None:
        ids = set(job_ids)
        if not ids:
            return
        done = asyncio.Event()
        self._waiting[done] = (ids, frozenset(while_status))
        if self._task is None or self._task.done():
            # A context of its own: it outlives the request that started it.
            self._task = asyncio.get_running_loop().create_task(self._watch(), context=contextvars.Context())
        try:
            await done.wait()
        finally:
            # Also when the client went away and the view was cancelled.
            self._waiting.pop(done, None)

    async def _watch(self) -> None:
        while self._waiting:
            await asyncio.sleep(settings.IMAGEGEN_API_POLL_SECONDS)
            awaited = sorted(set().union(*(ids for ids, _ in self._waiting.values())))
            if not awaited:
                continue
            try:
                pending = await run_db(_pending, awaited)
            except Exception:
                logger.exception("Could not look up %d awaited jobs; trying again", len(awaited))
                continue
            looked_up = set(awaited)
            for done, (ids, statuses) in list(self._waiting.items()):
                # Only the jobs looked up: a request may have begun to wait during the query.
                ids -= {job_id for job_id in ids & looked_up if pending.get(job_id) not in statuses}
                if not ids:
                    done.set()
                    self._waiting.pop(done, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)


_watchers: dict[asyncio.AbstractEventLoop, JobWatcher] = {}


def watcher() -> JobWatcher:
    """The watcher of the running event loop (daphne has one; tests may make several)."""
    loop = asyncio.get_running_loop()
    if loop not in _watchers:
        for old in [old for old in _watchers if old.is_closed()]:
            del _watchers[old]
        _watchers[loop] = JobWatcher()
    return _watchers[loop]


async def wait_for_jobs(job_ids: Iterable[int]) -> None:
    """Until every one of the jobs has ended."""
    await watcher().wait(job_ids)


async def wait_for_start(job_ids: Iterable[int]) -> None:
    """Until none of the jobs is queued: each runs, or has ended."""
    await watcher().wait(job_ids, while_status=(ImageJob.Status.QUEUED,))
