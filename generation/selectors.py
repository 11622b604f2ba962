"""Reads about jobs, the queue and the service."""

from __future__ import annotations

import heapq
from datetime import datetime
from statistics import median

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import F, Min, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.shortcuts import get_object_or_404

from generation import texts
from generation.models import CircuitBreaker, ImageJob, QueueBroadcast, Worker

Status = ImageJob.Status


def job_get_for_user(*, user: AbstractBaseUser, job_id: int) -> ImageJob:
    """The user's own job; anybody else's answers 404."""
    return get_object_or_404(ImageJob.objects.select_related("message"), pk=job_id, owner=user)


def queue_position(*, job: ImageJob) -> int | None:
    """1 + the number of queued jobs ahead of this one, or None if it is not queued."""
    if job.status != Status.QUEUED:
        return None
    return ImageJob.objects.filter(status=Status.QUEUED, sequence__lt=job.sequence).count() + 1


def queue_version() -> int:
    """The version of the latest queue broadcast; positions read after it are at least as new."""
    return QueueBroadcast.objects.filter(pk=1).values_list("version", flat=True).first() or 0


def queue_positions() -> dict[int, int]:
    """job id -> position for every queued job, in one query."""
    rows = (
        ImageJob.objects.filter(status=Status.QUEUED)
        .annotate(position=Window(RowNumber(), order_by=F("sequence").asc()))
        .values_list("pk", "position")
    )
    return dict(rows)


def duration_estimator(*, history: int = 200):
    """A function (model, width, height, steps) -> seconds, from recently finished jobs.

    Seconds per step are measured per model and size; a size with no history is
    scaled from the model's (or any model's) seconds per step per megapixel; with no
    history at all a configured default is used.
    """
    recent = (
        ImageJob.objects.filter(status=Status.COMPLETE, started_at__isnull=False, finished_at__isnull=False)
        .order_by("-finished_at")
        .values_list("model", "width", "height", "steps", "started_at", "finished_at")[:history]
    )
    per_size: dict[tuple[str, int, int], list[float]] = {}
    per_model: dict[str, list[float]] = {}
    overall: list[float] = []
    for model, width, height, steps, started, finished in recent:
        per_step = max((finished - started).total_seconds(), 0.0) / max(steps, 1)
        per_size.setdefault((model, width, height), []).append(per_step)
        per_megapixel = per_step / (width * height / 1e6)
        per_model.setdefault(model, []).append(per_megapixel)
        overall.append(per_megapixel)
    default = settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP / (512 * 512 / 1e6)
    rates: dict[tuple[str, int, int], float] = {}  # a queue repeats a few sizes many times

    def per_step(model: str, width: int, height: int) -> float:
        measured = per_size.get((model, width, height))
        if measured:
            return median(measured)
        scaled = per_model.get(model) or overall
        per_megapixel = median(scaled) if scaled else default
        return per_megapixel * (width * height / 1e6)

    def estimate(model: str, width: int, height: int, steps: int) -> float:
        key = (model, width, height)
        if key not in rates:
            rates[key] = per_step(model, width, height)
        return rates[key] * steps

    return estimate


def queue_eta(*, now: datetime | None = None) -> list[dict]:
    """Every queued job with its position and ETA, in queue order (a window function).

    The live workers are parallel lanes (at least one): each running job occupies the
    lane that is free soonest for what is left of it, then each queued job, in queue
    order, starts when the first lane frees and keeps that lane for its own duration.
    With one worker that is the sum of everything ahead. `estimated_start_seconds` is
    when a job should start, `estimated_seconds` adds its own duration (seconds until
    done). A worker told to stop claims nothing more, so it is no lane.
    """
    estimate = duration_estimator()
    fields = ("model", "width", "height", "steps")
    # A heap of the times at which each lane frees; the smallest is the next to take a job.
    lanes = [0.0] * max(1, workers_live(now=now).filter(stopping=False).count())
    for job in ImageJob.objects.filter(status=Status.PROCESSING).values("progress", *fields):
        left = estimate(*(job[f] for f in fields)) * (100 - job["progress"]) / 100
        heapq.heapreplace(lanes, lanes[0] + left)
    rows = (
        ImageJob.objects.filter(status=Status.QUEUED)
        .annotate(position=Window(RowNumber(), order_by=F("sequence").asc()))
        .order_by("sequence")
        .values("pk", "owner_id", "message_id", "position", *fields)
    )
    entries = []
    for row in rows:
        own = estimate(*(row[f] for f in fields))
        start = lanes[0]
        entries.append(
            {
                "job_id": row["pk"],
                "owner_id": row["owner_id"],
                "message_id": row["message_id"],
                "position": row["position"],
                "estimated_start_seconds": round(start),
                "estimated_seconds": round(start + own),
            }
        )
        heapq.heapreplace(lanes, start + own)
    return entries


def job_remaining_seconds(*, job: ImageJob, estimate=None) -> int:
    estimate = estimate or duration_estimator()
    return round(estimate(job.model, job.width, job.height, job.steps) * (100 - job.progress) / 100)


def service_status(*, breaker: CircuitBreaker | None = None) -> dict[str, str]:
    if breaker is None:
        breaker = CircuitBreaker.current()
    state = breaker.state if breaker else CircuitBreaker.State.CLOSED
    return {"state": state, "message": texts.SERVICE_NOTICES[state]}


def queue_blocked_until(*, now: datetime) -> datetime | None:
    """When the queue's head may next be claimed, if only a retry delay or the breaker holds it.

    None when there is nothing queued, or when a breaker trial is running elsewhere.
    """
    queued = ImageJob.objects.filter(status=Status.QUEUED)
    if queued.filter(Q(not_before__isnull=True) | Q(not_before__lte=now)).exists():
        jobs_ready = now
    else:
        jobs_ready = queued.aggregate(earliest=Min("not_before"))["earliest"]
        if jobs_ready is None:
            return None
    breaker = CircuitBreaker.current()
    breaker_ready = now if breaker is None else breaker.ready_at(now)
    if breaker_ready is None:
        return None
    return max(jobs_ready, breaker_ready)


def job_live_states(*, jobs: list[ImageJob]) -> dict[int, dict]:
    """Position and ETA of each pending job in `jobs`, keyed by job id (a few queries in all)."""
    pending = [job for job in jobs if job.status in ImageJob.PENDING]
    if not pending:
        return {}
    estimate = duration_estimator()
    queue = {entry["job_id"]: entry for entry in queue_eta()} if any(j.status == Status.QUEUED for j in pending) else {}
    states = {}
    for job in pending:
        entry = queue.get(job.pk, {})
        if job.status == Status.QUEUED:
            eta = entry.get("estimated_seconds")
        else:
            eta = job_remaining_seconds(job=job, estimate=estimate)
        states[job.pk] = {
            "position": entry.get("position"),
            "estimated_start_seconds": entry.get("estimated_start_seconds"),
            "estimated_seconds": eta,
        }
    return states


def user_active_jobs(*, user: AbstractBaseUser) -> list[dict]:
    """The user's queued and processing jobs with fresh positions, progress and ETA."""
    # Sorted here: asked to sort, SQLite walks the whole history in `sequence` order
    # instead of using the (owner, status) index for the few rows this is.
    jobs = sorted(ImageJob.objects.filter(owner=user, status__in=ImageJob.PENDING).order_by(), key=lambda j: j.sequence)
    states = job_live_states(jobs=jobs)
    return [
        {
            "job_id": job.pk,
            "message_id": job.message_id,
            "conversation_id": job.conversation_id,
            "status": job.status,
            "progress": job.progress,
            **states[job.pk],
        }
        for job in jobs
    ]


def image_list(*, user: AbstractBaseUser) -> QuerySet[ImageJob]:
    """The user's finished images, newest first, with what a gallery links back to."""
    return (
        ImageJob.objects.filter(owner=user, status=Status.COMPLETE)
        .exclude(image="")
        .select_related("conversation")
        .order_by("-finished_at", "-pk")
    )


def workers_live(*, now: datetime | None = None) -> QuerySet[Worker]:
    """Worker processes that beat within IMAGEGEN_WORKER_DEAD_AFTER_SECONDS."""
    from django.utils import timezone

    now = now or timezone.now()
    return Worker.objects.filter(last_seen_at__gte=Worker.live_since(now))
