"""A GPU worker process's registration and heartbeat, beside whatever it is doing.

The beat runs on a thread of its own, so it goes on while the main thread loads a
model or runs a long step; while a model is loading for a job (or its image waits for
the disk), it also keeps that job's heartbeat fresh (`keep_alive`). Each beat also looks after the
queue (`WorkerBeat.look_after_the_queue`): it puts back the jobs of dead workers
(one query when there are none), so a dead worker's job waits
IMAGEGEN_WORKER_DEAD_AFTER_SECONDS plus a beat while any other worker lives, and at
most a minute more (the guard) when none does; it puts back its own jobs that it is
not running; and it rings a doorbell that was lost. While the database is away the
beat retries every few seconds, so the queue moves again soon after it answers.
One per process: a forked child starts its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_q.conf import Conf

from generation import workers
from generation.outages import DATABASE, MAX_BACKOFF, OUTAGES, drop_broken_connections

logger = logging.getLogger(__name__)

_beat: WorkerBeat | None = None
_lock = threading.Lock()


class WorkerBeat:
    def __init__(self, *, device: str, interval: float, max_batch: int = 1, generator=None):
        self.name = workers.worker_name()
        self.generator = generator  # what it has loaded goes on the worker's row; idle, it may unload
        self.idle_since = time.monotonic()  # when the last drain ended
        self.pid = os.getpid()
        self.device = device
        self.max_batch = max_batch
        self.interval = interval
        self.kept_alive: set[int] = set()  # jobs whose heartbeats the beat writes (see keep_alive)
        self.registered = False
        # Held by the device thread while it starts or ends a drain, and by the beat while
        # it looks for this worker's lost jobs: a job claimed meanwhile is never taken for
        # one. Reentrant: with in-process tasks (Q_SYNC) a hand-back's doorbell runs a
        # drain on the thread that holds it.
        self.work_lock = threading.RLock()
        self.working = 0  # drains running (nested ones too)
        self._idle_with_work = False  # the last beat found runnable jobs and no drain
        self._owe_ring = False  # the database came back, or a ring failed: ring when idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-beat", daemon=True)

    def start(self) -> None:
        try:
            self._register()
        except Exception as exc:
            # The database is away: the beat registers this worker once it answers.
            if OUTAGES.failed(exc, doing="registering the worker") is None:
                raise
            drop_broken_connections()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _register(self) -> None:
        workers.worker_register(name=self.name, device=self.device, max_batch=self.max_batch)
        self.registered = True

    def beat(self) -> None:
        if not self.registered:
            self._register()
            return
        workers.worker_beat(
            name=self.name,
            device=self.device,
            max_batch=self.max_batch,
            loading_job_ids=sorted(self.kept_alive),
            stopping=stop_requested(),
            model_state=workers.model_state(self.generator) if self.generator is not None else None,
        )

    def _loop(self) -> None:
        backoff = 0.0  # while the database is away: a quarter second, doubling up to MAX_BACKOFF
        try:
            while not self._stop.wait(backoff or self.interval):
                try:
                    back = OUTAGES.down(DATABASE)
                    self.beat()
                    OUTAGES.answered(DATABASE)
                    self.look_after_the_queue(database_back=back)
                    if self.unload_when_idle():
                        self.beat()  # the row says so at once
                    backoff = 0.0
                except Exception as exc:
                    if OUTAGES.failed(exc, doing=f"beating worker {self.name}") is None:
                        logger.exception("Worker %s could not beat; trying again", self.name)
                    drop_broken_connections()  # opened afresh next time
                    backoff = min(max(backoff * 2, 0.25), MAX_BACKOFF)
        finally:
            connection.close()

    def look_after_the_queue(self, *, database_back: bool = False) -> None:
        """What a live worker does for the queue at each beat.

        - It takes back the jobs of workers that stopped beating, wherever they ran,
          without waiting for the guard's next minute.
        - While it runs nothing, a job still `processing` under its own name is one it
          lost track of (an outage cut a claim's answer off, or ended its drain): the
          job goes back to its place.
        - While it runs nothing and jobs could run, it rings the doorbell: at the first
          such beat after the database came back or a ring failed, else when the
          previous beat saw the same. A doorbell lost with the broker or the database
          is so rung again within two beats of it answering.
        """
        from generation import selectors, services

        self._owe_ring = self._owe_ring or database_back
        services.jobs_requeue_from_dead_workers()
        with self.work_lock:
            if self.working:
                self._idle_with_work = False
                return
            services.jobs_hand_back_orphans(worker=self.name)
            now = timezone.now()
            ready_at = selectors.queue_blocked_until(now=now)
        # In-process tasks (Q_SYNC) have no broker to lose a doorbell, and a ring would
        # run the drain on this thread.
        runnable = ready_at is not None and ready_at <= now and not Conf.SYNC
        if runnable and (self._owe_ring or self._idle_with_work):
            self._owe_ring = not services.ring_worker()
            runnable = False
        self._idle_with_work = runnable

    def unload_when_idle(self) -> bool:
        """Free the loaded model once nothing has run for IMAGEGEN_UNLOAD_AFTER_SECONDS and
        nothing is queued (the GPU's memory goes back to whatever shares it); True if it did.

        The device thread cannot start a drain meanwhile: it waits for the model to be
        freed, then loads it again for its job.
        """
        after = settings.IMAGEGEN_UNLOAD_AFTER_SECONDS
        unload = getattr(self.generator, "unload", None)
        if not after or unload is None or getattr(self.generator, "loaded_model", None) is None:
            return False
        from generation.models import ImageJob

        with self.work_lock:
            if self.working or time.monotonic() - self.idle_since < after:
                return False
            if ImageJob.objects.filter(status__in=[ImageJob.Status.QUEUED, ImageJob.Status.PROCESSING]).exists():
                return False
            name = unload()
        if name is not None:
            logger.info("Worker %s unloaded model %s after %s s with nothing to do", self.name, name, after)
        return name is not None


def start(*, device: str | None = None, max_batch: int = 1, generator=None) -> WorkerBeat:
    """Register this process as a worker and start beating, once per process."""
    global _beat
    with _lock:
        if _beat is None or _beat.pid != os.getpid():
            _beat = WorkerBeat(
                device=device or settings.IMAGEGEN_DEVICE,
                interval=settings.IMAGEGEN_WORKER_BEAT_SECONDS,
                max_batch=max_batch,
                generator=generator,
            )
            _beat.start()
        elif (device and device != _beat.device) or max_batch != _beat.max_batch or generator is not _beat.generator:
            _beat.device = device or _beat.device
            _beat.max_batch = max_batch
            _beat.generator = generator or _beat.generator
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


def _this_process_beat() -> WorkerBeat | None:
    """This process's beat, if it started one (a forked child's inherited one is not)."""
    return _beat if _beat is not None and _beat.pid == os.getpid() else None


def the_only_drain() -> bool:
    """Whether the drain asking is the only one running in this process (with in-process
    tasks a doorbell can start one inside another)."""
    beat = _this_process_beat()
    if beat is None:
        return True
    with beat.work_lock:
        return beat.working <= 1


@contextmanager
def working() -> Iterator[None]:
    """While this block runs, this process's worker is draining the queue (the device thread).

    Its jobs are its own business then: the beat does not take any of them for lost.
    """
    beat = _this_process_beat()
    if beat is None:
        yield
        return
    with beat.work_lock:
        beat.working += 1
    try:
        yield
    finally:
        with beat.work_lock:
            beat.working -= 1
            beat.idle_since = time.monotonic()


@contextmanager
def keep_alive(job_ids: list[int]) -> Iterator[None]:
    """While this block runs, the beat keeps the jobs' heartbeats fresh.

    For work on a job that writes no progress: its model loading, or its image
    waiting for the disk to take it.
    """
    beat = _this_process_beat()
    if beat is None:
        yield
        return
    beat.kept_alive.update(job_ids)
    try:
        yield
    finally:
        beat.kept_alive.difference_update(job_ids)
