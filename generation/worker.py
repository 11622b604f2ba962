"""Runs image jobs in the GPU worker: device lock, claim, generate, record the outcome.

One `JobRunner.run_next()` call claims and runs at most one job, so django-q2's
per-task timeout bounds one job, not a backlog. The clock, the wall-clock `now` and
`sleep` are injected so tests can move time.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.utils import timezone
from django_q.exceptions import TimeoutException

from generation import selectors, services
from generation.locks import DeviceBusy, device_lock
from generation.models import ImageJob
from generation.pipeline import (
    GenerationCancelled,
    GenerationRequest,
    GenerationTimeout,
    Generator,
    infotext,
    is_transient,
    latents_preview,
    save_png,
)
from generation.registry import get_generator

logger = logging.getLogger(__name__)

PUSH_INTERVAL = 0.1  # seconds between live progress events (and cancel checks)
PREVIEW_INTERVAL = 1.0  # seconds between live previews
PROGRESS_PERSIST_EVERY = 10  # percent

TRANSIENT_MESSAGE = "The image generator is temporarily unavailable. Please try again in a few minutes."
FAILED_MESSAGE = "Image generation failed because of a problem on the server. Please try again."


def timeout_message(seconds: int) -> str:
    return f"Image generation timed out after {seconds} s. Please try again."


class JobRunner:
    def __init__(
        self,
        generator: Generator | None = None,
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

    def run_next(self) -> ImageJob | None:
        """Claim the oldest runnable job and run it; None when there was nothing to run."""
        device = self.generator.device
        try:
            with device_lock(
                device,
                lock_dir=settings.IMAGEGEN_LOCK_DIR,
                wait=settings.IMAGEGEN_GPU_LOCK_WAIT_SECONDS,
                clock=self.clock,
                sleep=self.sleep,
            ):
                job = self._claim_when_ready()
                if job is not None:
                    try:
                        self._run(job)
                    except TimeoutException as exc:
                        # django-q2's hard timeout fired (our soft one did not: a hang
                        # outside the steps). End the job; the worker lives on.
                        seconds = settings.IMAGEGEN_HARD_TIMEOUT_SECONDS
                        services.job_fail(job_id=job.pk, error=timeout_message(seconds), detail=str(exc))
                        services.breaker_record_failure(now=self.now())
                    except Exception as exc:
                        # Something outside the generation failed (the database, the
                        # disk): the job must still end, and the task report it.
                        services.job_fail(job_id=job.pk, error=FAILED_MESSAGE, detail=f"{type(exc).__name__}: {exc}")
                        raise
                return job
        except DeviceBusy as exc:
            # Nothing was claimed: the queue is untouched, for a later try.
            logger.warning("%s", exc)
            self.device_busy = True
            return None

    def _claim_when_ready(self) -> ImageJob | None:
        """Claim a job, waiting (bounded) when only a retry delay or the breaker holds the queue."""
        deadline = self.clock() + settings.IMAGEGEN_BREAKER_COOLDOWN_SECONDS + 5
        while True:
            job = services.job_claim(worker=self.name, now=self.now())
            if job is not None:
                return job
            wake_at = selectors.queue_blocked_until(now=self.now())
            if wake_at is None:
                return None
            delay = max((wake_at - self.now()).total_seconds(), 0.0)
            if self.clock() + delay > deadline:
                return None
            # Short naps, so a job submitted meanwhile is not kept waiting.
            self.sleep(min(max(delay, 0.05), 1.0))

    def _run(self, job: ImageJob) -> None:
        request = GenerationRequest(
            model=job.model,
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            width=job.width,
            height=job.height,
            steps=job.steps,
            guidance=job.guidance,
            seed=job.seed,
            scheduler=job.scheduler,
        )
        timeout = settings.IMAGEGEN_TIMEOUT_SECONDS
        try:
            if settings.IMAGEGEN_TEST_FAULTS:
                self._injected_fault(job)
            # Loading a model is not generating: the time limit starts after it.
            self.generator.pipeline(request.model)
            on_step = _StepReporter(self, job, started=self.clock(), timeout=timeout)
            image = self.generator.generate(request, on_step)
        except GenerationCancelled:
            logger.info("Job %s was cancelled while running", job.pk)
            services.breaker_release_trial()
        except GenerationTimeout:
            services.job_fail(job_id=job.pk, error=timeout_message(timeout), detail=f"Over {timeout} s")
            services.breaker_record_failure(now=self.now())
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            logger.exception("Job %s failed (attempt %s)", job.pk, job.attempts)
            if is_transient(exc) and job.attempts < settings.IMAGEGEN_MAX_ATTEMPTS:
                delay = settings.IMAGEGEN_RETRY_BASE_SECONDS * 2 ** (job.attempts - 1)
                services.job_retry_later(job_id=job.pk, delay=delay, detail=detail, now=self.now())
            else:
                error = TRANSIENT_MESSAGE if is_transient(exc) else FAILED_MESSAGE
                services.job_fail(job_id=job.pk, error=error, detail=detail, now=self.now())
            services.breaker_record_failure(now=self.now())
        else:
            buffer = io.BytesIO()
            save_png(image, buffer, parameters=infotext(request))
            if services.job_complete(job_id=job.pk, png=buffer.getvalue(), now=self.now()) is None:
                services.breaker_release_trial()
            else:
                services.breaker_record_success()

    def _injected_fault(self, job: ImageJob) -> None:
        """Test-only faults, so browser tests can drive the real failure paths."""
        if "[fail]" in job.prompt:
            raise RuntimeError("Injected failure (IMAGEGEN_TEST_FAULTS)")
        if "[hang]" in job.prompt:
            # No heartbeat from here on, until the stuck-job guard ends the job.
            deadline = self.clock() + 120
            while self.clock() < deadline and ImageJob.objects.filter(pk=job.pk, status="processing").exists():
                self.sleep(0.5)
            raise GenerationCancelled()


class _StepReporter:
    """The per-step callback: time limit, cancel checks, persisted and live progress."""

    def __init__(self, runner: JobRunner, job: ImageJob, *, started: float, timeout: int):
        self.runner = runner
        self.job = job
        self.started = started
        self.timeout = timeout
        self.persisted_decile = 0
        self.persisted_at = started
        self.pushed_at = float("-inf")
        self.previewed_at = started

    def __call__(self, step: int, total: int, latents) -> None:
        now = self.runner.clock()
        if now - self.started > self.timeout:
            raise GenerationTimeout()
        decile = step * 100 // max(total, 1) // PROGRESS_PERSIST_EVERY
        persist = (
            decile > self.persisted_decile
            or now - self.persisted_at >= settings.IMAGEGEN_HEARTBEAT_SECONDS
            or step == total
        )
        if persist or now - self.pushed_at >= PUSH_INTERVAL:
            still_running = services.job_progress(
                job_id=self.job.pk, step=step, total=total, persist=persist, now=self.runner.now()
            )
            if not still_running:
                raise GenerationCancelled()
            self.pushed_at = now
            if persist:
                self.persisted_decile, self.persisted_at = decile, now
        if step < total and now - self.previewed_at >= PREVIEW_INTERVAL:
            self.previewed_at = now
            buffer = io.BytesIO()
            latents_preview(latents).save(buffer, format="JPEG", quality=70)
            data_url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
            services.job_preview(job=self.job, step=step, image_data_url=data_url)
