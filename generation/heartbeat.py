"""A GPU worker process's registration and heartbeat, beside whatever it is doing.

The beat runs on a thread of its own, so it goes on while the main thread loads a
model or runs a long step; while a model is loading for a job, it also keeps that
job's heartbeat fresh (the step callback cannot yet). Each beat also puts back in the
queue the jobs of dead workers (`services.jobs_requeue_from_dead_workers`: one query
when there are none), so a dead worker's job waits IMAGEGEN_WORKER_DEAD_AFTER_SECONDS
plus a beat while any other worker lives, and at most a minute more (the guard) when
none does. One per process: a forked child starts its own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection

from generation import workers

logger = logging.getLogger(__name__)

_beat: WorkerBeat | None = None
_lock = threading.Lock()


class WorkerBeat:
    def __init__(self, *, device: str, interval: float, max_batch: int = 1):
        self.name = workers.worker_name()
        self.pid = os.getpid()
        self.device = device
        self.max_batch = max_batch
        self.interval = interval
        self.loading_jobs: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-beat", daemon=True)

    def start(self) -> None:
        workers.worker_register(name=self.name, device=self.device, max_batch=self.max_batch)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        workers.worker_beat(
            name=self.name,
            device=self.device,
            max_batch=self.max_batch,
            loading_job_ids=self.loading_jobs,
            stopping=stop_requested(),
        )

    def _loop(self) -> None:
        from generation import services

        try:
            while not self._stop.wait(self.interval):
                try:
                    self.beat()
                    # A live worker takes back the jobs of workers that stopped beating,
                    # wherever they ran, without waiting for the guard's next minute.
                    services.jobs_requeue_from_dead_workers()
                except Exception:
                    logger.exception("Worker %s could not beat; trying again", self.name)
                    connection.close()  # a broken connection is opened afresh next time
        finally:
            connection.close()


def start(*, device: str | None = None, max_batch: int = 1) -> WorkerBeat:
    """Register this process as a worker and start beating, once per process."""
    global _beat
    with _lock:
        if _beat is None or _beat.pid != os.getpid():
            _beat = WorkerBeat(
                device=device or settings.IMAGEGEN_DEVICE,
                interval=settings.IMAGEGEN_WORKER_BEAT_SECONDS,
                max_batch=max_batch,
            )
            _beat.start()
        elif (device and device != _beat.device) or max_batch != _beat.max_batch:
            _beat.device = device or _beat.device
            _beat.max_batch = max_batch
            _beat.beat()
        return _beat


def stop_requested() -> bool:
    """Whether this cluster was told to stop (see IMAGEGEN_STOP_FILE); a stat, no query."""
    path = settings.IMAGEGEN_STOP_FILE
    return bool(path) and os.path.exists(path)


def stop() -> None:
    """Stop this process's beat (tests; a process that exits just stops beating)."""
    global _beat
    with _lock:
        if _beat is not None and _beat.pid == os.getpid():
            _beat.stop()
        _beat = None


@contextmanager
def loading(job_ids: list[int]) -> Iterator[None]:
    """While this block runs (a model loading for `job_ids`), the beat keeps the jobs' heartbeats fresh."""
    beat = _beat if _beat is not None and _beat.pid == os.getpid() else None
    if beat is None:
        yield
        return
    beat.loading_jobs = list(job_ids)
    try:
        yield
    finally:
        beat.loading_jobs = []
