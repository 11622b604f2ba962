"""The GPU worker's device thread: device lock, claim, generate, in numbered stages.

`JobRunner.run_queue()` is what the `gpu` cluster's task runs (and the only way in):
it runs passes back to back for a bounded time, so no broker round trip sits
between two passes and django-q2's per-task timeout still bounds the task. This
thread only claims and generates; the bookkeeping thread (`generation.bookkeeper`)
writes progress, sends events and previews, and encodes, stores and completes each
image while the device makes the next one. The clock, the wall-clock `now` and
`sleep` are injected so tests can move time.

`warm_up()` runs once when a `gpu` worker process starts: it loads the default model
and times two short passes, so that the first jobs' ETAs are measured, not guessed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.utils import timezone
from django_q.exceptions import TimeoutException

from generation import files, heartbeat, selectors, services, texts
from generation.bookkeeper import Bookkeeper
from generation.locks import DeviceBusy, device_lock
from generation.models import ImageJob
from generation.outages import OUTAGES, drop_broken_connections, is_outage
from generation.pipeline import default_max_batch, is_out_of_memory
from generation.registry import get_generator, model_limits
from generation.request import GenerationCancelled, GenerationRequest, GenerationTimeout, ImageGenerator
from generation.workers import worker_name, worker_record_warmup

logger = logging.getLogger(__name__)

PUSH_INTERVAL = 0.5  # seconds between live progress events (the page interpolates between them)
# While a drain runs, a thread that wants the GIL gets it within this many seconds
# (Python's default is 0.005). The device's thread gives the GIL up at every kernel
# launch; with the default, each launch could wait 5 ms behind the bookkeeper, which
# made a GPU image ~1.7x slower than the raw pipeline.
DRAIN_SWITCH_INTERVAL = 0.0001
PREVIEW_INTERVAL = 1.0  # seconds between live previews
PROGRESS_PERSIST_EVERY = 10  # percent


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
        self.name = worker_name()
        self.device_busy = False
        self.out_of_time = False  # the task's hard timeout fired: claim nothing more in it

    def run_queue(self, *, budget: float) -> list[int]:
        """Run jobs back to back until none is runnable or `budget` seconds have passed.

        Returns the ids of the jobs run; every one of them has its outcome recorded.
        The device stays locked until the bookkeeper has written everything. A budget
        of 0 runs one pass.
        """
        started = self.clock()
        ran: list[int] = []
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(DRAIN_SWITCH_INTERVAL)
        try:
            with (
                heartbeat.working(),
                self._device_locked(),
                Bookkeeper(now=self.now, max_batch=self.max_batch) as bookkeeper,
            ):
                while not heartbeat.stop_requested():
                    if files.disk_nearly_full():
                        # No image could be stored: claim nothing (submissions are refused too).
                        logger.warning("The images' disk is nearly full: no job is claimed until it has room")
                        break
                    try:
                        if not ran and heartbeat.the_only_drain():
                            # This drain holds nothing yet: a job processing under this
                            # worker's name is one whose claim an outage cut off.
                            services.jobs_hand_back_orphans(worker=self.name)
                        jobs = self._run_one(bookkeeper)
                        if not jobs and bookkeeper.busy:
                            # A breaker trial may be the job being recorded: once its outcome
                            # is, the queue may open again.
                            bookkeeper.wait_idle()
                            jobs = self._run_one(bookkeeper)
                    except Exception as exc:
                        # The database (or the disk) is away: claim nothing more. What the
                        # bookkeeper holds is recorded once it answers; a job claimed and
                        # not run goes back to its place (the beat, once this drain ends).
                        if OUTAGES.failed(exc, doing="claiming and running jobs") is None:
                            raise
                        drop_broken_connections()
                        break
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

    @property
    def max_batch(self) -> int:
        """How many images a pass may make: IMAGEGEN_MAX_BATCH, else 4 on CUDA and 1 on a CPU."""
        return default_max_batch(settings.IMAGEGEN_MAX_BATCH, self.generator.device)

    def _device_locked(self):
        return device_lock(
            self.generator.device,
            lock_dir=settings.IMAGEGEN_LOCK_DIR,
            wait=settings.IMAGEGEN_GPU_LOCK_WAIT_SECONDS,
            clock=self.clock,
            sleep=self.sleep,
        )

    def _run_one(self, bookkeeper: Bookkeeper) -> list[ImageJob]:
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
                if is_outage(exc):
                    raise  # the jobs are kept, not failed: see run_queue
                # Something outside the generation failed: the jobs must still end,
                # and the task report it.
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

    def _run(self, jobs: list[ImageJob], bookkeeper: Bookkeeper) -> None:
        try:
            # Loading a model is not generating: the time limit starts after it. The
            # worker's beat keeps the jobs' heartbeats fresh meanwhile.
            with heartbeat.keep_alive([job.pk for job in jobs]):
                self._load(jobs, jobs[0].model)
        except Exception as exc:
            if is_outage(exc):
                raise
            logger.exception("Model %s could not be loaded for jobs %s", jobs[0].model, [job.pk for job in jobs])
            services.jobs_record_failure(jobs=jobs, exc=exc, now=self.now())
            return
        self._generate(jobs, bookkeeper)

    def _generate(self, jobs: list[ImageJob], bookkeeper: Bookkeeper) -> None:
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
                bookkeeper.finish(job, image, request, stopped_at=on_step.stopped.get(job.pk))

    def _load(self, jobs: list[ImageJob], model: str) -> None:
        """Load the jobs' model; their cards say "Downloading model…" while its files
        download, then "Loading model…" while it loads (and compiles, in the speed mode)."""
        states = []
        if self.generator.needs_download(model):
            states.append("downloading")
        if getattr(self.generator, "loaded_model", model) != model:
            states.append("loading")
        for state in states:
            services.jobs_preparing(jobs=jobs, state=state, on=True)
        try:
            self.generator.load(model)
        finally:
            for state in states:
                services.jobs_preparing(jobs=jobs, state=state, on=False)


# (model, width, height) -> the most images a pass of that size made without running
# out of memory, learnt when a bigger one did; for the life of the worker process.
_BATCH_FITS: dict[tuple[str, int, int], int] = {}


def _pass_size(job: ImageJob) -> tuple[str, int, int]:
    return (job.model, job.width, job.height)


class _StepReporter:
    """The per-step callback of a pass: time limit, stop, cancel and interrupt checks,
    and the pass's progress and previews, posted to the bookkeeper.

    A cancel or an interrupt is noticed from the bookkeeper's last write. A cancelled
    job is dropped from the pass (its image will be thrown away) while the others go
    on; when every job is cancelled the pass stops. An interrupted job's row stops at
    the step it is noticed at (`stopped`: job id -> step), and the job ends with the
    image of that step; the other jobs of the pass go on, and the pass ends as soon
    as every row has stopped. The rows returned to the generator are those of both.
    """

    def __init__(
        self,
        runner: JobRunner,
        jobs: list[ImageJob],
        *,
        started: float,
        timeout: int,
        bookkeeper: Bookkeeper,
    ):
        self.runner = runner
        self.jobs = jobs
        self.dropped: set[int] = set()
        self.stopped: dict[int, int] = {}
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

    @property
    def running(self) -> list[ImageJob]:
        """The live jobs that have not stopped: their progress moves on."""
        return [job for job in self.live if job.pk not in self.stopped]

    def __call__(self, step: int, total: int, latents) -> list[int]:
        now = self.runner.clock()
        if now - self.started > self.timeout:
            raise GenerationTimeout()
        if step < total and heartbeat.stop_requested():
            # Told to stop: a pass about to end is finished, a longer one handed back.
            remaining = (now - self.started) / max(step, 1) * (total - step)
            if remaining > settings.IMAGEGEN_STOP_GRACE_SECONDS:
                raise WorkerStopping()
        self.dropped.update(job.pk for job in self.live if self.bookkeeper.cancelled(job.pk))
        if not self.live:
            raise GenerationCancelled()
        for job in self.running:
            if self.bookkeeper.interrupted(job.pk):
                self.stopped[job.pk] = step
        decile = step * 100 // max(total, 1) // PROGRESS_PERSIST_EVERY
        persist = (
            decile > self.persisted_decile
            or now - self.persisted_at >= settings.IMAGEGEN_HEARTBEAT_SECONDS
            or step == total
        )
        push = now - self.pushed_at >= PUSH_INTERVAL or step == total
        if persist or push:
            progress = {"step": step, "total": total, "persist": persist, "push": push, "now": self.runner.now()}
            for job in self.running:
                self.bookkeeper.progress(job, **progress)
            if push:
                self.pushed_at = now
            if persist:
                self.persisted_decile, self.persisted_at = decile, now
        running = self.running
        if running and step < total and now - self.previewed_at >= PREVIEW_INTERVAL:
            self.previewed_at = now
            self.bookkeeper.preview([(job, self.jobs.index(job)) for job in running], step, latents)
        settled = self.dropped.union(self.stopped)
        return [row for row, job in enumerate(self.jobs) if job.pk in settled]


# --- Start-up: the warm-up passes ------------------------------------------------------

WARM_UP_STEPS = 3  # the times between their callbacks are steps': the shortest is taken
WARM_UP_TINY = 64  # the first pass's side (or the family's smallest): it pays the first call's set-up


def warm_up(generator: ImageGenerator | None = None, *, model: str | None = None) -> dict | None:
    """Load `model` (IMAGEGEN_DEFAULT_MODEL) and measure how fast it runs, once a `gpu`
    worker has started (IMAGEGEN_WARMUP); returns what it measured, or None.

    The measurement goes on this worker's row (`Worker.warmup`), where the ETA takes it
    as the model's default until jobs of it have been timed. It holds the device's lock
    and makes no job and no image; a failure is logged and the worker goes on (its
    first job loads the model as it would have).
    """
    if not settings.IMAGEGEN_WARMUP or heartbeat.stop_requested():
        return None
    model = model or settings.IMAGEGEN_DEFAULT_MODEL
    try:
        runner = JobRunner(generator)
        heartbeat.start(device=runner.generator.device, max_batch=runner.max_batch, generator=runner.generator)
        started = time.perf_counter()
        with runner._device_locked():
            measured = measure_speed(runner.generator, model)
        worker_record_warmup(name=runner.name, model=model, measured=measured, generator=runner.generator)
    except DeviceBusy as exc:
        logger.warning("No warm-up pass: %s", exc)
        return None
    except Exception as exc:
        if OUTAGES.failed(exc, doing="recording the warm-up pass") is None:
            logger.exception("The warm-up pass of model %s failed; its first job will load it", model)
        drop_broken_connections()
        return None
    logger.info(
        "Warm-up of %s in %.1f s: %.3f s fixed, %.4f s a step + %.4f s a step per megapixel",
        model,
        time.perf_counter() - started,
        measured["overhead"],
        measured["step"],
        measured["step_per_mp"],
    )
    return measured


def measure_speed(generator: ImageGenerator, model: str, *, clock: Callable[[], float] = time.perf_counter) -> dict:
    """How fast `generator` runs `model`, from two passes of WARM_UP_STEPS steps.

    A tiny one first: it pays what a first call costs (allocations, kernels' set-up)
    and its step is the floor a step costs whatever the size. Then one at the model's
    default size: its step, less the floor, is the cost per megapixel; the rest of its
    time is the fixed part (prompt, scheduler, decode), of which what grows from the
    tiny pass's decode to this one's is counted per megapixel. The numbers are those of
    `generation.estimates.Speed`.
    """
    limits = model_limits(model)
    step_size = limits.size_step
    tiny = min(max(limits.min_size, -(-WARM_UP_TINY // step_size) * step_size), limits.default_size)
    generator.load(model)

    def timed(side: int) -> tuple[float, list[float], float]:
        marks: list[float] = []
        request = GenerationRequest(
            model=model,
            prompt="warm-up",
            negative_prompt="",
            width=side,
            height=side,
            steps=WARM_UP_STEPS,
            guidance=limits.default_guidance,
            seed=0,
            scheduler=limits.default_scheduler,
        )

        def mark(step: int, total: int, latents) -> None:
            # A GPU runs behind the launches: a step is done when the device says so.
            if getattr(getattr(latents, "device", None), "type", "") == "cuda":
                import torch

                torch.cuda.synchronize(latents.device)
            marks.append(clock())

        started = clock()
        generator.generate_batch([request], mark)
        return started, marks, clock()

    _, tiny_marks, tiny_end = timed(tiny)
    started, marks, ended = timed(limits.default_size)
    megapixels, tiny_megapixels = limits.default_size**2 / 1e6, tiny**2 / 1e6
    seconds = ended - started
    measured = {"size": limits.default_size, "seconds": round(seconds, 4)}
    if len(marks) < 2 or len(tiny_marks) < 2 or megapixels <= tiny_megapixels:
        # A generator that reports fewer steps: its time, all of it per step.
        speed = {
            "overhead": 0.0,
            "overhead_per_mp": 0.0,
            "step": 0.0,
            "step_per_mp": seconds / WARM_UP_STEPS / megapixels,
        }
        return speed | measured
    # Noise (another process, a late wake-up) only ever makes a step look longer.
    floor = min(b - a for a, b in zip(tiny_marks, tiny_marks[1:], strict=False))
    step = min(b - a for a, b in zip(marks, marks[1:], strict=False))
    step_per_mp = max(step - floor, 0.0) / (megapixels - tiny_megapixels)
    # After the last step: the decode (and whatever the pipeline does last).
    tail, tiny_tail = ended - marks[-1], tiny_end - tiny_marks[-1]
    overhead_per_mp = max(tail - tiny_tail, 0.0) / (megapixels - tiny_megapixels)
    fixed = max(seconds - len(marks) * step, 0.0)
    return {
        "overhead": max(fixed - overhead_per_mp * megapixels, 0.0),
        "overhead_per_mp": overhead_per_mp,
        "step": max(step - step_per_mp * megapixels, 0.0),
        "step_per_mp": step_per_mp,
    } | measured
