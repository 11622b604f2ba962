"""Runs image jobs in the GPU worker: device lock, claim, generate, record the outcome.

`JobRunner.run_next()` claims and runs one job; `run_queue()` runs jobs back to
back for a bounded time, so no broker round trip sits between two jobs and
django-q2's per-task timeout still bounds the task. There, the device's thread only
claims and generates: a bookkeeping thread writes progress, sends events and
previews, and encodes, stores and completes each image while the device makes the
next one, so the device never waits on a database, a channel layer or a PNG encoder.
The clock, the wall-clock `now` and `sleep` are injected so tests can move time.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_q.exceptions import TimeoutException

from generation import heartbeat, selectors, services, texts
from generation.locks import DeviceBusy, device_lock
from generation.models import ImageJob
from generation.pipeline import (
    GenerationCancelled,
    GenerationRequest,
    GenerationTimeout,
    ImageGenerator,
    infotext,
    is_out_of_memory,
    latents_preview,
)
from generation.png import encode_png
from generation.registry import get_generator, model_family

logger = logging.getLogger(__name__)

PUSH_INTERVAL = 0.5  # seconds between live progress events (the page interpolates between them)
# While a drain runs, a thread that wants the GIL gets it within this many seconds
# (Python's default is 0.005). The device's thread gives the GIL up at every kernel
# launch; with the default, each launch could wait 5 ms behind the bookkeeper, which
# made a GPU image ~1.7x slower than the raw pipeline.
DRAIN_SWITCH_INTERVAL = 0.0001
PREVIEW_INTERVAL = 1.0  # seconds between live previews
PROGRESS_PERSIST_EVERY = 10  # percent
FINISHED_BACKLOG = 2  # passes' images waiting to be recorded before the device waits for the bookkeeper


class WorkerStopping(Exception):
    """This worker was told to stop and the running job would not end within the grace."""


class JobRunner:
    def __init__(
        self,
        generator: ImageGenerator | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = timezone.now,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.generator = generator or get_generator()
        self.clock = clock
        self.now = now
        self.sleep = sleep
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.device_busy = False
        self.out_of_time = False  # the task's hard timeout fired: claim nothing more in it

    def run_queue(self, *, budget: float) -> list[int]:
        """Run jobs back to back until none is runnable or `budget` seconds have passed.

        Returns the ids of the jobs run; every one of them has its outcome recorded.
        The device stays locked until the bookkeeper has written everything.
        """
        started = self.clock()
        ran: list[int] = []
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(DRAIN_SWITCH_INTERVAL)
        try:
            with self._device_locked(), _Bookkeeper(self) as bookkeeper:
                while not heartbeat.stop_requested():
                    jobs = self._run_one(bookkeeper)
                    if not jobs and bookkeeper.busy:
                        # A breaker trial may be the job being recorded: once its outcome
                        # is, the queue may open again.
                        bookkeeper.wait_idle()
                        jobs = self._run_one(bookkeeper)
                    if not jobs:
                        break
                    ran.extend(job.pk for job in jobs)
                    if self.out_of_time or self.clock() - started >= budget:
                        break
        except DeviceBusy as exc:
            # Nothing was claimed: the queue is untouched, for a later try.
            logger.warning("%s", exc)
            self.device_busy = True
        finally:
            sys.setswitchinterval(switch_interval)
        return ran

    def run_next(self) -> ImageJob | None:
        """Claim the oldest runnable job (and those that share its pass) and run them,
        writing everything on this thread.

        Returns the head job, or None when there was nothing to run; the outcomes are
        recorded before this returns.
        """
        try:
            with self._device_locked():
                jobs = self._run_one(None)
        except DeviceBusy as exc:
            logger.warning("%s", exc)
            self.device_busy = True
            return None
        return jobs[0] if jobs else None

    @property
    def max_batch(self) -> int:
        """How many images a pass may make: IMAGEGEN_MAX_BATCH, else 4 on CUDA and 1 on a CPU."""
        if not hasattr(self.generator, "generate_batch"):
            return 1
        configured = settings.IMAGEGEN_MAX_BATCH
        return configured or (4 if self.generator.device.startswith("cuda") else 1)

    def _device_locked(self):
        return device_lock(
            self.generator.device,
            lock_dir=settings.IMAGEGEN_LOCK_DIR,
            wait=settings.IMAGEGEN_GPU_LOCK_WAIT_SECONDS,
            clock=self.clock,
            sleep=self.sleep,
        )

    def _run_one(self, bookkeeper: _Bookkeeper | None) -> list[ImageJob]:
        jobs = self._claim_when_ready()
        if jobs:
            try:
                self._run(jobs, bookkeeper)
            except TimeoutException as exc:
                # django-q2's hard timeout fired (our soft one did not: a hang
                # outside the steps). End the jobs; the worker lives on.
                self.out_of_time = True
                seconds = settings.IMAGEGEN_HARD_TIMEOUT_SECONDS
                services.jobs_record_failure(jobs=jobs, exc=exc, error=texts.timed_out(seconds), now=self.now())
            except Exception as exc:
                # Something outside the generation failed (the database, the
                # disk): the jobs must still end, and the task report it.
                for job in jobs:
                    services.job_fail(job_id=job.pk, error=texts.FAILED_ERROR, detail=f"{type(exc).__name__}: {exc}")
                raise
        return jobs

    def _claim_when_ready(self) -> list[ImageJob]:
        """Claim a pass's jobs, waiting (bounded) when only a retry delay or the breaker holds the queue."""
        deadline = self.clock() + settings.IMAGEGEN_BREAKER_COOLDOWN_SECONDS + 5
        while not heartbeat.stop_requested():
            jobs = services.jobs_claim(worker=self.name, now=self.now(), max_batch=self.max_batch)
            if jobs:
                return jobs
            wake_at = selectors.queue_blocked_until(now=self.now())
            if wake_at is None:
                return []
            delay = max((wake_at - self.now()).total_seconds(), 0.0)
            if self.clock() + delay > deadline:
                return []
            # Short naps, so a job submitted meanwhile is not kept waiting.
            self.sleep(min(max(delay, 0.05), 1.0))
        return []  # told to stop: claim nothing more

    def _run(self, jobs: list[ImageJob], bookkeeper: _Bookkeeper | None) -> None:
        try:
            # Loading a model is not generating: the time limit starts after it. The
            # worker's beat keeps the jobs' heartbeats fresh meanwhile.
            with heartbeat.loading([job.pk for job in jobs]):
                self._load(jobs, jobs[0].model)
        except Exception as exc:
            logger.exception("Model %s could not be loaded for jobs %s", jobs[0].model, [job.pk for job in jobs])
            services.jobs_record_failure(jobs=jobs, exc=exc, now=self.now())
            return
        self._generate(jobs, bookkeeper)

    def _generate(self, jobs: list[ImageJob], bookkeeper: _Bookkeeper | None) -> None:
        """One pass for `jobs`; split in smaller passes when it does not fit in memory."""
        fits = _BATCH_FITS.get(_pass_size(jobs[0]), len(jobs))
        if len(jobs) > fits:
            for start in range(0, len(jobs), fits):
                self._generate(jobs[start : start + fits], bookkeeper)
            return
        requests = [job.generation_request() for job in jobs]
        timeout = settings.IMAGEGEN_TIMEOUT_SECONDS
        on_step = _StepReporter(self, jobs, started=self.clock(), timeout=timeout, bookkeeper=bookkeeper)
        try:
            if len(jobs) == 1:
                images = [self.generator.generate(requests[0], on_step)]
            else:
                images = self.generator.generate_batch(requests, on_step)
        except GenerationCancelled:
            logger.info("Jobs %s were cancelled while running", [job.pk for job in jobs])
            services.breaker_release_trial()
        except WorkerStopping:
            logger.info("Stopping: jobs %s go back to their places in the queue", [job.pk for job in jobs])
            for job in jobs:
                services.job_hand_back(job_id=job.pk)
            services.breaker_release_trial()
        except GenerationTimeout as exc:
            services.jobs_record_failure(
                jobs=on_step.live, exc=exc, error=texts.timed_out(timeout), detail=f"Over {timeout} s", now=self.now()
            )
        except Exception as exc:
            live = on_step.live
            if len(live) > 1 and is_out_of_memory(exc):
                # Smaller passes, remembered for this size: each job still gets its image.
                _BATCH_FITS[_pass_size(jobs[0])] = len(live) // 2
                logger.warning("A pass of %s images ran out of memory; trying %s", len(live), len(live) // 2)
                self._generate(live, bookkeeper)
                return
            logger.exception("Jobs %s failed", [job.pk for job in live])
            services.jobs_record_failure(jobs=live, exc=exc, now=self.now())
        else:
            made = [(job, image, request) for job, image, request in zip(jobs, images, requests, strict=True)]
            kept = [item for item in made if item[0].pk not in on_step.dropped]  # a cancelled job's image goes
            if not kept:
                services.breaker_release_trial()
            for job, image, request in kept:
                if bookkeeper is None:
                    self.finish(job, image, request)
                else:
                    bookkeeper.finish(job, image, request)

    def _load(self, jobs: list[ImageJob], model: str) -> None:
        """Load the jobs' model; a download first shows on their cards as "Downloading model…"."""
        needs_download = getattr(self.generator, "needs_download", None)
        downloading = bool(needs_download and needs_download(model))
        if downloading:
            services.jobs_downloading(jobs=jobs, downloading=True)
        try:
            self.generator.load(model)
        finally:
            if downloading:
                services.jobs_downloading(jobs=jobs, downloading=False)

    def finish(self, job: ImageJob, image, request: GenerationRequest) -> None:
        """Encode and store the image, complete the job, and tell the breaker."""
        png = encode_png(image, parameters=infotext(request, model_family(request.model)))
        if services.job_complete(job_id=job.pk, png=png, now=self.now()) is None:
            services.breaker_release_trial()
        else:
            services.breaker_record_success()


# (model, width, height) -> the most images a pass of that size made without running
# out of memory, learnt when a bigger one did; for the life of the worker process.
_BATCH_FITS: dict[tuple[str, int, int], int] = {}


def _pass_size(job: ImageJob) -> tuple[str, int, int]:
    return (job.model, job.width, job.height)


class _StepReporter:
    """The per-step callback of a pass: time limit, cancel checks, persisted and live
    progress and previews for each of its jobs.

    With a bookkeeper the writes are posted to it and a cancel is noticed from its
    last write; without one they happen here. A cancelled job is dropped from the
    pass (its image will be thrown away) while the others go on; when every job is
    cancelled the pass stops.
    """

    def __init__(
        self,
        runner: JobRunner,
        jobs: list[ImageJob],
        *,
        started: float,
        timeout: int,
        bookkeeper: _Bookkeeper | None,
    ):
        self.runner = runner
        self.jobs = jobs
        self.dropped: set[int] = set()
        self.started = started
        self.timeout = timeout
        self.bookkeeper = bookkeeper
        self.persisted_decile = 0
        self.persisted_at = started
        self.pushed_at = float("-inf")
        self.previewed_at = started

    @property
    def live(self) -> list[ImageJob]:
        return [job for job in self.jobs if job.pk not in self.dropped]

    def _drop(self, job: ImageJob) -> None:
        self.dropped.add(job.pk)
        if not self.live:
            raise GenerationCancelled()

    def __call__(self, step: int, total: int, latents) -> None:
        now = self.runner.clock()
        if now - self.started > self.timeout:
            raise GenerationTimeout()
        if step < total and heartbeat.stop_requested():
            # Told to stop: a pass about to end is finished, a longer one handed back.
            remaining = (now - self.started) / max(step, 1) * (total - step)
            if remaining > settings.IMAGEGEN_STOP_GRACE_SECONDS:
                raise WorkerStopping()
        if self.bookkeeper is not None:
            for job in self.live:
                if self.bookkeeper.cancelled(job.pk):
                    self._drop(job)
        decile = step * 100 // max(total, 1) // PROGRESS_PERSIST_EVERY
        persist = (
            decile > self.persisted_decile
            or now - self.persisted_at >= settings.IMAGEGEN_HEARTBEAT_SECONDS
            or step == total
        )
        push = now - self.pushed_at >= PUSH_INTERVAL or step == total
        if persist or push:
            progress = {"step": step, "total": total, "persist": persist, "push": push, "now": self.runner.now()}
            for job in self.live:
                if self.bookkeeper is not None:
                    self.bookkeeper.progress(job, **progress)
                elif not services.job_progress(job=job, **progress):
                    self._drop(job)
            if push:
                self.pushed_at = now
            if persist:
                self.persisted_decile, self.persisted_at = decile, now
        if step < total and now - self.previewed_at >= PREVIEW_INTERVAL:
            self.previewed_at = now
            rows = [(job, self.jobs.index(job)) for job in self.live]
            if self.bookkeeper is not None:
                # Only a copy off the device is started here; the bookkeeper waits for
                # it and makes the pictures.
                self.bookkeeper.preview(rows, step, *_copy_to_host(latents))
            else:
                host = latents.detach().float().cpu()
                for job, row in rows:
                    send_preview(job, step, host[row : row + 1])


def _copy_to_host(latents) -> tuple:
    """Start copying `latents` to the host without waiting for the device.

    Returns the host tensor and, on CUDA, an event that marks the copy's end: waiting
    on the copy in the step callback would stall the launch queue every preview.
    """
    import torch

    if not latents.is_cuda:
        return latents.detach().float().clone(), None
    host = torch.empty(latents.shape, dtype=latents.dtype, pin_memory=True)
    host.copy_(latents.detach(), non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied


def send_preview(job: ImageJob, step: int, latents) -> None:
    buffer = io.BytesIO()
    preview = latents_preview(latents, family=model_family(job.model), width=job.width, height=job.height)
    preview.save(buffer, format="JPEG", quality=70)
    data_url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    services.job_preview(job=job, step=step, image_data_url=data_url)


class _Bookkeeper:
    """A thread that does the writing while the device makes images.

    Progress for a job coalesces: when the device is ahead, only the newest state is
    written (a persisted one if any of those it replaces was), and none once the
    job's image is waiting to be recorded. Finished images wait
    in a bounded backlog, so a device faster than the bookkeeper waits for it
    instead of holding many images in memory. Leaving the `with` block waits until
    everything is written. A failure to record an image fails that job alone.
    """

    def __init__(self, runner: JobRunner):
        self.runner = runner
        self._items: deque[tuple[str, ImageJob, dict]] = deque()
        self._changed = threading.Condition()
        self._active = 0
        self._finishing = 0
        self._closing = False
        self._cancelled: set[int] = set()
        self._backlog = FINISHED_BACKLOG * runner.max_batch  # images of whole passes
        self._thread = threading.Thread(target=self._loop, name="bookkeeper", daemon=True)

    def __enter__(self) -> _Bookkeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()

    @property
    def busy(self) -> bool:
        with self._changed:
            return bool(self._items or self._active)

    def wait_idle(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: not self._items and not self._active)

    def cancelled(self, job_id: int) -> bool:
        with self._changed:
            return job_id in self._cancelled

    def progress(self, job: ImageJob, *, step: int, total: int, persist: bool, push: bool, now: datetime) -> None:
        fields = {"step": step, "total": total, "persist": persist, "push": push, "now": now}
        with self._changed:
            waiting = next(
                (
                    index
                    for index, (kind, other, _) in enumerate(self._items)
                    if kind == "progress" and other.pk == job.pk
                ),
                None,
            )
            if waiting is not None:
                last = self._items[waiting][2]
                fields["persist"] = persist or last["persist"]
                fields["push"] = push or last["push"]
                self._items[waiting] = ("progress", job, fields)
            else:
                self._items.append(("progress", job, fields))
            self._changed.notify_all()

    def preview(self, rows: list[tuple[ImageJob, int]], step: int, latents, copied=None) -> None:
        """Previews of a pass's jobs: `rows` pairs each job with its row in `latents`."""
        with self._changed:
            if not any(kind == "preview" for kind, *_ in self._items):  # a late preview is no use
                self._items.append(
                    ("preview", rows[0][0], {"rows": rows, "step": step, "latents": latents, "copied": copied})
                )
                self._changed.notify_all()

    def finish(self, job: ImageJob, image, request: GenerationRequest) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._finishing < self._backlog)
            self._finishing += 1
            # Its completion says more than any progress still waiting to be written.
            for item in [item for item in self._items if item[0] == "progress" and item[1].pk == job.pk]:
                self._items.remove(item)
            self._items.append(("finish", job, {"image": image, "request": request}))
            self._changed.notify_all()

    def _loop(self) -> None:
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._items or self._closing)
                    if not self._items:
                        return
                    kind, job, fields = self._items.popleft()
                    self._active += 1
                try:
                    self._write(kind, job, fields)
                finally:
                    with self._changed:
                        self._active -= 1
                        if kind == "finish":
                            self._finishing -= 1
                        self._changed.notify_all()
        finally:
            connection.close()  # this thread's own database connection

    def _write(self, kind: str, job: ImageJob, fields: dict) -> None:
        try:
            if kind == "progress":
                if not services.job_progress(job=job, **fields):
                    with self._changed:
                        self._cancelled.add(job.pk)
            elif kind == "preview":
                if fields["copied"] is not None:
                    fields["copied"].synchronize()
                latents = fields["latents"].float()
                for each, row in fields["rows"]:
                    send_preview(each, fields["step"], latents[row : row + 1])
            else:
                self.runner.finish(job, fields["image"], fields["request"])
        except Exception as exc:
            logger.exception("Could not record the %s of job %s", kind, job.pk)
            if kind == "finish":
                try:
                    services.job_fail(job_id=job.pk, error=texts.FAILED_ERROR, detail=f"{type(exc).__name__}: {exc}")
                except Exception:
                    logger.exception("Could not fail job %s either; the guard will", job.pk)
