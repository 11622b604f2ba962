"""Reads about jobs, the queue and the service."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import F, Min, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.shortcuts import get_object_or_404

from generation.models import CircuitBreaker, ImageJob

Status = ImageJob.Status

SERVICE_MESSAGES = {
    CircuitBreaker.State.CLOSED: "",
    CircuitBreaker.State.OPEN: (
        "Image generation is paused after repeated failures. Your requests are kept and will run when it recovers."
    ),
    CircuitBreaker.State.HALF_OPEN: "Image generation is recovering: trying one image before resuming the queue.",
}


def job_get_for_user(*, user: AbstractBaseUser, job_id: int) -> ImageJob:
    """The user's own job; anybody else's answers 404."""
    return get_object_or_404(ImageJob.objects.select_related("message"), pk=job_id, owner=user)


def queue_position(*, job: ImageJob) -> int | None:
    """1 + the number of queued jobs ahead of this one, or None if it is not queued."""
    if job.status != Status.QUEUED:
        return None
    return ImageJob.objects.filter(status=Status.QUEUED, sequence__lt=job.sequence).count() + 1


def queue_positions() -> dict[int, int]:
    """job id -> position for every queued job, in one query."""
    rows = (
        ImageJob.objects.filter(status=Status.QUEUED)
        .annotate(position=Window(RowNumber(), order_by=F("sequence").asc()))
        .values_list("pk", "position")
    )
    return dict(rows)


def queued_jobs() -> QuerySet[ImageJob]:
    return ImageJob.objects.filter(status=Status.QUEUED).select_related("owner").order_by("sequence")


def service_status(*, breaker: CircuitBreaker | None = None) -> dict[str, str]:
    if breaker is None:
        breaker = CircuitBreaker.objects.filter(name="generation").first()
    state = breaker.state if breaker else CircuitBreaker.State.CLOSED
    return {"state": state, "message": SERVICE_MESSAGES[state]}


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
    breaker = CircuitBreaker.objects.filter(name="generation").first()
    if breaker is None or breaker.state == CircuitBreaker.State.CLOSED or breaker.opened_at is None:
        breaker_ready = now
    elif breaker.state == CircuitBreaker.State.OPEN:
        breaker_ready = breaker.opened_at + timedelta(seconds=settings.IMAGEGEN_BREAKER_COOLDOWN_SECONDS)
    else:
        return None
    return max(jobs_ready, breaker_ready)


def job_card_state(*, job: ImageJob, positions: dict[int, int] | None = None) -> dict:
    """What a job card shows, as plain JSON-ready values."""
    if positions is None:
        positions = queue_positions() if job.status == Status.QUEUED else {}
    return {
        "job_id": job.pk,
        "message_id": job.message_id,
        "conversation_id": job.conversation_id,
        "status": job.status,
        "position": positions.get(job.pk),
        "progress": job.progress,
        "error": job.error or None,
    }


def user_active_jobs(*, user: AbstractBaseUser) -> list[dict]:
    """The user's queued and processing jobs with fresh positions, in two queries."""
    positions = queue_positions()
    jobs = ImageJob.objects.filter(owner=user, status__in=ImageJob.PENDING).order_by("sequence")
    return [job_card_state(job=job, positions=positions) for job in jobs]
