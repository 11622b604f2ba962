"""What both APIs do with jobs: submit through `job_submit` (attaching a client's
retry to the job it already queued), say when to come back, and read the results."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from generation import selectors, services
from generation.api.auth import api_key_conversation
from generation.models import ApiKey, ApiRequest, ImageJob
from generation.pipeline import infotext
from generation.registry import model_family

# A retry attaches to the job of its first try while that job is pending, or finished
# this recently (the answer was lost on the way, the image is there).
ATTACH_FINISHED_WITHIN = timedelta(minutes=10)
RETRY_AFTER_MAX = 120


class Throttled(Exception):
    """A cap refused the request: the user's pending jobs, or submissions a minute."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def request_key(*, endpoint: str, idempotency_key: str = "", body: bytes = b"") -> str:
    """The digest a request is remembered by: its Idempotency-Key, else its body."""
    material = f"key:{idempotency_key}".encode() if idempotency_key else b"body:" + body
    return hashlib.sha256(endpoint.encode() + b"\n" + material).hexdigest()


def prompt_jobs(job: ImageJob) -> list[ImageJob]:
    """All the jobs one prompt made (n images), in queue order."""
    jobs = getattr(job, "prompt_jobs", None)  # set by job_submit
    if jobs:
        return list(jobs)
    return list(ImageJob.objects.filter(message_id=job.message_id).order_by("sequence"))


def _attachable(jobs: list[ImageJob], now) -> bool:
    """Whether a retry should have these jobs (of its first try) rather than new ones."""
    if any(job.status in ImageJob.PENDING for job in jobs):
        return True
    return any(
        job.status == ImageJob.Status.COMPLETE and job.finished_at and job.finished_at >= now - ATTACH_FINISHED_WITHIN
        for job in jobs
    )


def api_jobs_submit(
    *,
    api_key: ApiKey,
    prompt: str,
    count: int,
    key: str | None = None,
    attach: bool = True,
    **params: Any,
) -> list[ImageJob]:
    """Queue `count` images of one prompt for the key's owner, in the key's conversation.

    With `key`, the request is remembered; when `attach` and a request with the same
    key has a pending (or just finished) job, that job's images are returned instead
    of queuing them again. Raises ValidationError for bad input and Throttled when a
    cap refuses.
    """
    user = api_key.owner
    now = timezone.now()
    with transaction.atomic():
        # The caps' own lock, taken first: a retry arriving beside its first try waits
        # here and then finds the job that one queued.
        list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))
        if key:
            previous = ApiRequest.objects.select_related("job").filter(owner=user, key=key).first()
            if attach and previous is not None:
                jobs = prompt_jobs(previous.job)
                if _attachable(jobs, now):
                    return jobs
        conversation = api_key_conversation(api_key=api_key)
        try:
            job = services.job_submit(user=user, conversation=conversation, prompt=prompt, count=count, **params)
        except ValidationError as exc:
            if hasattr(exc, "error_dict"):
                raise  # bad input, on its fields
            raise Throttled(" ".join(exc.messages), retry_after(user=user, asked=count, now=now)) from None
        if key:
            ApiRequest.objects.update_or_create(owner=user, key=key, defaults={"job": job, "created_at": now})
        return prompt_jobs(job)


def retry_after(*, user, asked: int = 1, now=None) -> int:
    """Seconds until the user's caps let a request for `asked` images in (1-120).

    For the pending cap: until enough of the user's pending jobs should have ended
    (their ETAs); for the rate: until the oldest prompt of the last minute leaves it.
    """
    now = now or timezone.now()
    pending = list(ImageJob.objects.filter(owner=user, status__in=ImageJob.PENDING))
    waits = []
    over = len(pending) + asked - settings.IMAGEGEN_MAX_PENDING_PER_USER
    if over > 0 and pending:
        etas = sorted(state["estimated_seconds"] or 0 for state in selectors.job_live_states(jobs=pending).values())
        waits.append(etas[min(over, len(etas)) - 1])
    recent = ImageJob.objects.filter(owner=user, created_at__gte=now - timedelta(minutes=1))
    if recent.values("message_id").distinct().count() >= settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE:
        oldest = recent.order_by("created_at").values_list("created_at", flat=True).first()
        waits.append(60 - (now - oldest).total_seconds())
    return max(1, min(RETRY_AFTER_MAX, round(max(waits, default=1))))


@dataclass
class Result:
    job: ImageJob
    png: bytes | None  # None unless complete


def results(job_ids: list[int]) -> list[Result]:
    """The jobs as they ended, in queue order, with the PNG of each complete one."""
    jobs = ImageJob.objects.filter(pk__in=job_ids).order_by("sequence")
    out = []
    for job in jobs:
        png = None
        if job.status == ImageJob.Status.COMPLETE and job.image:
            with job.image.open("rb") as file:
                png = file.read()
        out.append(Result(job=job, png=png))
    return out


def job_infotext(job: ImageJob) -> str:
    """The job's parameters as AUTOMATIC1111 writes them (the same text as in its PNG)."""
    return infotext(
        job.generation_request(),
        model_family(job.model),
    )


def api_job_cancel(*, job: ImageJob) -> bool:
    try:
        services.job_cancel(job=job)
    except services.JobError:
        return False  # it ended meanwhile
    return True
