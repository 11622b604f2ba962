"""What both APIs do with jobs: submit through `job_submit` (which attaches a client's
retry to the jobs it already queued) and read the results."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from generation import services
from generation.api.auth import api_key_conversation
from generation.models import ApiKey, ImageJob
from generation.pipeline import infotext
from generation.registry import get_loras, model_family


def request_key(*, endpoint: str, idempotency_key: str = "", body: bytes = b"") -> str:
    """The digest a request is remembered by: its Idempotency-Key, else its body."""
    material = f"key:{idempotency_key}".encode() if idempotency_key else b"body:" + body
    return hashlib.sha256(endpoint.encode() + b"\n" + material).hexdigest()


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

    With `key` (see `request_key`), the request is remembered; when `attach` and a
    request with the same key has a pending (or just finished) job, that job's images
    are returned instead of queuing them again (`services.job_submit` decides, under
    the user's lock). Raises ValidationError for bad input and JobRefused (with its
    Retry-After) when a cap refuses.
    """
    with transaction.atomic():
        conversation = api_key_conversation(api_key=api_key)
        submission = services.job_submit(
            user=api_key.owner,
            conversation=conversation,
            prompt=prompt,
            count=count,
            idempotency_key=key or "",
            attach=attach,
            **params,
        )
    return submission.jobs


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
        get_loras(),
        stopped_at=job.stopped_at_step,
    )


def api_job_cancel(*, job: ImageJob) -> bool:
    try:
        services.job_cancel(job=job)
    except services.JobError:
        return False  # it ended meanwhile
    return True
