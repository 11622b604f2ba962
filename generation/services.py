"""Every change of a job's state, and of the circuit breaker, happens here.

Each transition is a compare-and-set on the job row (`filter(pk=..., status=EXPECTED)
.update(...)`, then check the row count) plus a deep merge of the assistant message's
metadata, in one transaction. Events go out after commit, from `generation.events`.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Message
from chat.services import exchange_post, message_update
from generation import broadcasts, doorbells, events, files, selectors, texts
from generation.forms import SEED_MAX, JobForm
from generation.locks import worker_is_gone
from generation.models import ApiRequest, CircuitBreaker, ImageJob, JobPreview, QueueTicket, Worker
from generation.pipeline import ModelUnavailable, is_transient

logger = logging.getLogger(__name__)

Status = ImageJob.Status


class JobError(Exception):
    """A request about a job that cannot be carried out (wrong state, limits)."""


def ring_worker() -> None:
    """Tell the GPU cluster there is work. The job table, not the message, is the queue.

    After a commit it runs as a robust hook: a lost doorbell is rung again by the
    stuck-job guard, and must never fail the change that rang it.
    """
    doorbells.enqueue("generation.tasks.process_next_job", cluster="gpu", name="process next image job")


def _transition(
    job_id: int,
    change: str,
    *,
    fields: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    content: str | None = None,
) -> ImageJob | None:
    """Make `change` (a name in `ImageJob.LIFECYCLE`) to a job; merge its message too.

    A compare-and-set from the change's allowed states to its target. Returns the
    updated job, or None when the job was not in an allowed state (somebody else moved
    it first). Must run inside a transaction.
    """
    expected, to = ImageJob.LIFECYCLE[change]
    changes = {"status": to, **(fields or {})}
    if not ImageJob.objects.filter(pk=job_id, status__in=expected).update(**changes):
        return None
    job = ImageJob.objects.get(pk=job_id)
    metadata = {"status": to, **(metadata or {})}
    if to in ImageJob.FINAL:
        metadata["retrying"] = False  # a requeued job that ends is no longer being retried
    _message_update(job, metadata=metadata, content=content)
    if Status.QUEUED in expected or to == Status.QUEUED:
        _queue_changed()
    return job


def _message_update(job: ImageJob, *, metadata: dict[str, Any], content: str | None = None) -> None:
    """Merge a job's state into its message.

    A message with one job holds that job's state. One shared by the images of a
    prompt holds each job's state under `images.<job id>`, and, when a status changes,
    the prompt's as a whole: running while any runs, queued while any waits, then
    complete if any image was made.
    """
    if not job.in_group:
        message_update(job.message_id, content=content, metadata=metadata)
        return
    update: dict[str, Any] = {"images": {str(job.pk): metadata}}
    content = None
    if "status" in metadata:
        # The message's lock first: a sibling changing at the same moment has then
        # committed, and the statuses read next include its change.
        list(Message.objects.select_for_update().filter(pk=job.message_id).values_list("pk"))
        statuses = list(ImageJob.objects.filter(message_id=job.message_id).values_list("status", flat=True))
        status = next(
            (state for state in (Status.PROCESSING, Status.QUEUED, Status.COMPLETE, Status.ERROR) if state in statuses),
            Status.CANCELLED,
        )
        update["status"] = status
        if status != Status.QUEUED:
            update["queue_position"] = None
        content = texts.group_content(status, job.image_count, statuses.count(Status.COMPLETE))
    message_update(job.message_id, content=content, metadata=update)


def _announce_queued(job: ImageJob) -> None:
    # Its position follows in the next coalesced queue broadcast.
    events.send_to_user(
        job.owner_id,
        "job.queued",
        job_id=job.pk,
        message_id=job.message_id,
        conversation_id=job.conversation_id,
        status=job.status,
    )


def _queue_changed() -> None:
    """Ask for a queue broadcast once the change commits; constant work, never fatal."""
    transaction.on_commit(broadcasts.queue_broadcast_request, robust=True)


# --- Submit ------------------------------------------------------------------------


def _caps_refusal(owner_id: int, *, now: datetime, asked: int | None) -> str | None:
    """Lock the user's row, then check their caps; what to tell them, or None.

    One user's submissions and retries queue behind each other on that lock, so the
    caps hold even when several tabs or scripts ask at the same moment. The counts
    are a statement of their own: one that starts after the lock is granted sees
    every job committed by the one that held it (a single statement would count
    from its own, older snapshot on PostgreSQL). The pending cap counts images, so
    `asked` more must fit under it; a new submission (`asked` images) also counts,
    as one prompt, against the per-minute rate. A retry (`asked` None) brings back
    one job, so only the pending cap applies to it.
    """
    list(get_user_model().objects.select_for_update().filter(pk=owner_id).values_list("pk"))
    counts = ImageJob.objects.filter(owner_id=owner_id).aggregate(
        pending=Count("pk", filter=Q(status__in=ImageJob.PENDING)),
        recent=Count("message_id", filter=Q(created_at__gte=now - timedelta(minutes=1)), distinct=True),
    )
    limit = settings.IMAGEGEN_MAX_PENDING_PER_USER
    if counts["pending"] >= limit:
        return texts.pending_cap(counts["pending"])
    if asked is not None and counts["pending"] + asked > limit:
        return texts.too_many_asked(counts["pending"], asked, limit)
    if asked is not None and counts["recent"] >= settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE:
        return texts.TOO_FAST
    return None


def job_submit(
    *, user: AbstractBaseUser, conversation: Conversation, prompt: str, count: Any = 1, **params: Any
) -> ImageJob:
    """Validate, then create the user's message, the assistant's message and the jobs.

    `count` images (1-8) of one prompt are `count` jobs that share the assistant's
    message, with seeds seed, seed+1, ... (as AUTOMATIC1111 numbers a batch), next to
    each other in the queue. Raises ValidationError with field errors when any input
    is bad, or with a message when a cap refuses it; nothing is created then. The
    worker is rung after commit. Returns the first job; it carries what a page needs
    to show the exchange without reading it back: `job.prompt_jobs` (all the jobs,
    in order), `job.message` (the reply), `job.prompt_message` and `job.conversation`
    with its title as it is now.
    """
    if conversation.owner_id != user.pk:
        raise ValidationError({"conversation": texts.NOT_YOURS})
    form = JobForm(data={"prompt": prompt, "count": count, **params})
    if not form.is_valid():
        raise ValidationError(form.errors.as_data())
    data = form.cleaned_data
    count = data["count"]
    with transaction.atomic():
        now = timezone.now()
        refusal = _caps_refusal(user.pk, now=now, asked=count)
        if refusal:
            raise ValidationError(refusal)
        job_params = {key: data[key] for key in ("model", "width", "height", "steps", "guidance", "seed", "scheduler")}
        seeds = [(data["seed"] + index) % (SEED_MAX + 1) for index in range(count)]
        reply_metadata = {
            "status": Status.QUEUED,
            "progress": 0,
            "prompt": data["prompt"],
            "params": {**job_params, "negative_prompt": data["negative_prompt"]},
            "created_at": now.isoformat(),
        }
        if count > 1:
            reply_metadata.update(count=count, seeds=seeds)
        asked, assistant = exchange_post(
            conversation=conversation,
            prompt=data["prompt"],
            reply=texts.QUEUED if count == 1 else texts.group_content(Status.QUEUED, count, 0),
            reply_metadata=reply_metadata,
        )
        jobs = []
        for index, seed in enumerate(seeds):
            job = ImageJob.objects.create(
                owner=user,
                conversation=conversation,
                message=assistant,
                prompt=data["prompt"],
                negative_prompt=data["negative_prompt"],
                sequence=QueueTicket.objects.create().pk,
                image_index=index,
                image_count=count,
                **{**job_params, "seed": seed},
            )
            job.message = assistant
            jobs.append(job)
        ids = {"job_id": jobs[0].pk} if count == 1 else {"job_ids": [job.pk for job in jobs]}
        message_update(assistant.pk, metadata=ids)
        assistant.metadata.update(ids)
        for job in jobs:
            job.prompt_message = asked
            job.prompt_jobs = jobs
            _announce_queued(job)
        _queue_changed()
        transaction.on_commit(ring_worker, robust=True)
    return jobs[0]


# --- The worker's side: claim, progress, outcome ---------------------------------


def job_claim(*, worker: str, now: datetime | None = None) -> ImageJob | None:
    """Move the oldest runnable queued job to `processing` and return it (None: nothing to run)."""
    jobs = jobs_claim(worker=worker, now=now, max_batch=1)
    return jobs[0] if jobs else None


def jobs_claim(
    *, worker: str, now: datetime | None = None, max_batch: int = 1, window: int | None = None
) -> list[ImageJob]:
    """Claim the oldest runnable queued job and up to `max_batch - 1` more to share its pass.

    The head of the queue always comes first. The others are the oldest runnable
    jobs among the `window` behind it (IMAGEGEN_BATCH_WINDOW) that can share its
    pass (`ImageJob.pass_key`: same model, size, steps, guidance and scheduler), so a
    job moves ahead of at most `window` others and never of the head. Returns the
    jobs claimed in queue order, sharing one `batch` name; empty when nothing is
    runnable.

    The order is the job table's, whatever order the broker delivers doorbells in:
    a lost or doubled doorbell can neither lose nor double-run a job. On PostgreSQL
    `SKIP LOCKED` lets several workers (one per GPU) claim side by side; on SQLite
    the IMMEDIATE transaction already serialises claims. The compare-and-set is the
    final word either way. While the circuit breaker is open nothing is claimed;
    when its cool-down has passed, the claimed job alone is its half-open trial.
    """
    now = now or timezone.now()
    window = settings.IMAGEGEN_BATCH_WINDOW if window is None else window
    with transaction.atomic():
        # A closed breaker is only read: locking its row on every claim would make
        # every worker queue behind it. Only an open one is locked, to pick one trial.
        breaker = CircuitBreaker.current()
        if breaker is not None and breaker.state != CircuitBreaker.State.CLOSED:
            breaker = _breaker_locked()
            if not breaker.admits(now):
                return []
            max_batch = 1
        runnable = ImageJob.objects.filter(status=Status.QUEUED).filter(
            Q(not_before__isnull=True) | Q(not_before__lte=now)
        )
        if connection.features.has_select_for_update_skip_locked:
            runnable = runnable.select_for_update(skip_locked=True)
        fields = ("pk", "model", "width", "height", "steps", "guidance", "scheduler")
        candidates = list(runnable.order_by("sequence").only(*fields)[: 1 + max(window, 4) if max_batch > 1 else 5])
        batch = f"{timezone.now():%H%M%S}-{secrets.token_hex(3)}"
        claimed: list[ImageJob] = []
        head_at = 0  # the head's place among the candidates
        for index, candidate in enumerate(candidates):
            if claimed:
                if len(claimed) >= max_batch or index > head_at + window:
                    break
                if candidate.pass_key() != claimed[0].pass_key():
                    continue
            job = _transition(
                candidate.pk,
                "claim",
                fields={
                    "started_at": now,
                    "heartbeat_at": now,
                    "attempts": F("attempts") + 1,
                    "worker": worker,
                    "progress": 0,
                    "not_before": None,
                    "batch": batch,
                },
                metadata={"progress": 0, "queue_position": None, "started_at": now.isoformat()},
                content=texts.RUNNING,
            )
            if job is None:
                continue  # somebody else moved it first
            if not claimed:
                head_at = index
            claimed.append(job)
        if not claimed:
            return []
        ImageJob.objects.filter(pk__in=[job.pk for job in claimed]).update(batch_size=len(claimed))
        for job in claimed:
            job.batch_size = len(claimed)
            events.send_to_user(
                job.owner_id, "job.progress", job_id=job.pk, status=job.status, step=0, total=job.steps, progress=0
            )
        if breaker is not None and breaker.state == CircuitBreaker.State.OPEN:
            _breaker_set(breaker, state=CircuitBreaker.State.HALF_OPEN)
        return claimed


def job_progress(
    *, job: ImageJob, step: int, total: int, persist: bool, push: bool = True, now: datetime | None = None
) -> bool:
    """Record progress; returns False when the job is no longer processing (cancelled).

    With `persist` the row and the message are written (every 10 % and as a
    heartbeat); with `push` the live event goes out (after the commit, if any). The
    status check is the worker's way of noticing a cancel, so it runs either way.
    """
    progress = min(100, int(step * 100 / max(total, 1)))
    processing = ImageJob.objects.filter(pk=job.pk, status=Status.PROCESSING)
    with transaction.atomic() if persist else nullcontext():
        if persist:
            if connection.vendor == "postgresql":
                # Progress is re-derived by the next write; losing the last one in a
                # crash costs nothing, so its commit need not wait for the disk.
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit TO OFF")
            if not processing.update(progress=progress, heartbeat_at=now or timezone.now()):
                return False
            _message_update(job, metadata={"progress": progress})
        elif not processing.exists():
            return False
        if push:
            events.send_to_user(
                job.owner_id,
                "job.progress",
                job_id=job.pk,
                status=Status.PROCESSING,
                step=step,
                total=total,
                progress=progress,
            )
    return True


def jobs_downloading(*, jobs: list[ImageJob], downloading: bool) -> None:
    """The jobs' model is being downloaded (or is done): their cards say so, also after a reload."""
    with transaction.atomic():
        running = set(
            ImageJob.objects.filter(pk__in=[job.pk for job in jobs], status=Status.PROCESSING).values_list(
                "pk", flat=True
            )
        )
        for message_id in {job.message_id for job in jobs if job.pk in running}:
            message_update(message_id, metadata={"downloading": downloading})
        if downloading:
            for job in jobs:
                if job.pk in running:
                    events.send_to_user(job.owner_id, "job.downloading", job_id=job.pk, model=job.model)


def job_preview(*, job: ImageJob, step: int, image_data_url: str, now: datetime | None = None) -> None:
    """Keep the job's latest preview (for the A1111 API's progress) and push it live.

    One upsert: a reader that polls finds the newest picture without a channel.
    """
    JobPreview.objects.bulk_create(
        [JobPreview(job_id=job.pk, step=step, image=image_data_url, updated_at=now or timezone.now())],
        update_conflicts=True,
        unique_fields=["job"],
        update_fields=["step", "image", "updated_at"],
    )
    events.send_to_user(job.owner_id, "job.preview", job_id=job.pk, step=step, image=image_data_url)


def job_complete(*, job_id: int, png: bytes, now: datetime | None = None) -> ImageJob | None:
    """Store the image and finish the job; None if it was cancelled meanwhile.

    The PNG is written under a temporary name first and takes the job's own name in
    the transaction that completes the job (see generation.files).
    """
    now = now or timezone.now()
    incoming = files.write_incoming(job_id, png)
    try:
        with transaction.atomic():
            image_url = reverse("generation:job_image", args=[job_id])
            job = _transition(
                job_id,
                "complete",
                fields={
                    "image": files.final_name(job_id),
                    "progress": 100,
                    "finished_at": now,
                    "heartbeat_at": now,
                    "error": "",
                },
                metadata={"progress": 100, "image_url": image_url, "finished_at": now.isoformat(), "error": None},
                content=texts.READY,
            )
            if job is None:
                return None
            # Last, so a failure before it rolls the completion back; a crash between
            # this and the commit leaves the job's own name, which its rerun replaces.
            files.place(incoming, job_id)
            events.send_to_user(job.owner_id, "job.complete", job_id=job.pk, status=job.status, image_url=image_url)
        return job
    finally:
        files.discard(incoming)  # gone already once placed


def job_fail(*, job_id: int, error: str, detail: str = "", now: datetime | None = None) -> ImageJob | None:
    """Finish a queued or processing job with an error the user can read."""
    now = now or timezone.now()
    with transaction.atomic():
        job = _transition(
            job_id,
            "fail",
            fields={"error": error, "error_detail": detail, "finished_at": now},
            metadata={"error": error, "finished_at": now.isoformat(), "queue_position": None},
            content=texts.FAILED,
        )
        if job is not None:
            events.send_to_user(job.owner_id, "job.error", job_id=job.pk, status=job.status, error=error)
    return job


def jobs_record_failure(
    *,
    jobs: list[ImageJob],
    exc: BaseException,
    error: str | None = None,
    detail: str | None = None,
    now: datetime | None = None,
) -> None:
    """A failed pass: each of its jobs by the failure policy; the breaker counts it once."""
    now = now or timezone.now()
    for job in jobs:
        job_record_failure(
            job_id=job.pk, attempts=job.attempts, exc=exc, error=error, detail=detail, now=now, count=False
        )
    if not isinstance(exc, ModelUnavailable):  # not the backend failing: see job_record_failure
        breaker_record_failure(now=now)


def job_record_failure(
    *,
    job_id: int,
    attempts: int,
    exc: BaseException,
    error: str | None = None,
    detail: str | None = None,
    now: datetime | None = None,
    count: bool = True,
) -> ImageJob | None:
    """What a failed run of a job means; the failure policy, in one place.

    A transient error (out of memory, a busy device) with attempts left puts the job
    back in its place, runnable after 2, 4, 8... seconds; anything else ends it with
    `error`, or a message a person understands. Either way the failure counts once
    against the circuit breaker (unless `count` is False: a pass counts once).
    """
    now = now or timezone.now()
    detail = detail or f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModelUnavailable):
        # A model that is not here is the operator's to fix (the detail says how), not a
        # failing backend: other models' jobs must not be paused for it.
        job = job_fail(job_id=job_id, error=error or texts.MODEL_UNAVAILABLE, detail=detail, now=now)
        breaker_release_trial()
        return job
    transient = error is None and is_transient(exc)
    if transient and attempts < settings.IMAGEGEN_MAX_ATTEMPTS:
        delay = settings.IMAGEGEN_RETRY_BASE_SECONDS * 2 ** (attempts - 1)
        job = job_retry_later(job_id=job_id, delay=delay, detail=detail, now=now)
    else:
        error = error or (texts.TRANSIENT_ERROR if transient else texts.FAILED_ERROR)
        job = job_fail(job_id=job_id, error=error, detail=detail, now=now)
    if count:
        breaker_record_failure(now=now)
    return job


def job_retry_later(*, job_id: int, delay: float, detail: str, now: datetime | None = None) -> ImageJob | None:
    """Put a job that hit a transient error back in the queue, runnable after `delay`.

    It keeps its place in the FIFO order; others run while it waits.
    """
    now = now or timezone.now()
    with transaction.atomic():
        job = _transition(
            job_id,
            "retry_later",
            fields={"not_before": now + timedelta(seconds=delay), "error_detail": detail, "progress": 0},
            metadata={"progress": 0, "retrying": True},
            content=texts.RETRYING,
        )
        if job is not None:
            _announce_queued(job)
    return job


def job_cancel(*, job: ImageJob, now: datetime | None = None) -> ImageJob:
    """Cancel a queued job at once; a processing one stops at its next step.

    The worker notices the status at its next step and discards the partial image;
    its own compare-and-set to `complete` then finds nothing to change.
    """
    now = now or timezone.now()
    with transaction.atomic():
        cancelled = _transition(
            job.pk,
            "cancel",
            fields={"finished_at": now},
            metadata={"finished_at": now.isoformat(), "queue_position": None},
            content=texts.CANCELLED,
        )
        if cancelled is None:
            job.refresh_from_db(fields=["status"])
            raise JobError(texts.cannot_cancel(job.get_status_display().lower()))
        events.send_to_user(cancelled.owner_id, "job.cancelled", job_id=cancelled.pk, status=cancelled.status)
    return cancelled


def job_retry(*, job: ImageJob, now: datetime | None = None) -> ImageJob:
    """Give a failed or cancelled job a new attempt, at the back of the queue.

    The same job (and card) comes back to life with the same parameters and seed.
    """
    now = now or timezone.now()
    with transaction.atomic():
        refusal = _caps_refusal(job.owner_id, now=now, asked=None)
        if refusal:
            raise JobError(refusal)
        retried = _transition(
            job.pk,
            "retry",
            fields={
                "sequence": QueueTicket.objects.create().pk,
                "attempts": 0,
                "progress": 0,
                "error": "",
                "error_detail": "",
                "image": "",
                "not_before": None,
                "started_at": None,
                "heartbeat_at": None,
                "finished_at": None,
            },
            metadata={"progress": 0, "error": None, "finished_at": None, "started_at": None, "retrying": False},
            content=texts.QUEUED,
        )
        if retried is None:
            job.refresh_from_db(fields=["status"])
            raise JobError(texts.cannot_retry(job.get_status_display().lower()))
        _announce_queued(retried)
        transaction.on_commit(ring_worker, robust=True)
    return retried


def job_requeue_at_end(*, job: ImageJob) -> ImageJob:
    """Send a queued job to the back of the queue (a new ticket)."""
    with transaction.atomic():
        moved = _transition(
            job.pk,
            "move_to_end",
            fields={"sequence": QueueTicket.objects.create().pk},
        )
        if moved is None:
            raise JobError(texts.ONLY_QUEUED_MOVES)
    return moved


def job_mark_error(*, job: ImageJob, error: str = texts.ADMIN_STOPPED) -> ImageJob:
    """Fail a queued or processing job by hand; a running one stops at its next step."""
    failed = job_fail(job_id=job.pk, error=error, detail="Marked as error in admin")
    if failed is None:
        raise JobError(texts.ONLY_PENDING_FAILS)
    return failed


def jobs_delete(*, jobs: QuerySet[ImageJob]) -> None:
    """Delete jobs as deleting their conversation does: pending ones cancelled, files removed.

    Each job goes with its bot message (whose status would otherwise stay behind in the
    chat) once none of its prompt's other images is left; the user's own prompt stays.
    """
    with transaction.atomic():
        _cancel_pending(jobs)
        rows = dict(ImageJob.objects.filter(pk__in=jobs.values("pk")).values_list("pk", "image"))
        messages = set(ImageJob.objects.filter(pk__in=rows).values_list("message_id", flat=True))
        ImageJob.objects.filter(pk__in=rows).delete()
        # A message goes with its last job; one that still holds other images of its prompt stays.
        Message.objects.filter(pk__in=messages, image_jobs__isnull=True).delete()
        _delete_files_after_commit(rows)


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation with its messages, jobs and image files, in one transaction.

    Its pending jobs are cancelled first (a running one stops at its next step).
    """
    _delete_with_jobs(conversation.image_jobs.all(), conversation.delete)


def user_delete(*, user: AbstractBaseUser) -> None:
    """Delete a user with everything of theirs, as deleting each conversation does.

    Their pending jobs are cancelled first (a running one stops at its next step, and
    the worker moves on), and their image files are removed once the deletion commits.
    """
    _delete_with_jobs(ImageJob.objects.filter(owner_id=user.pk), user.delete)


def _delete_with_jobs(jobs: QuerySet[ImageJob], delete: Callable[[], Any]) -> None:
    """Cancel `jobs`' pending ones, run `delete` (which takes the jobs with it), and
    remove their files once it commits; one transaction."""
    with transaction.atomic():
        _cancel_pending(jobs)
        rows = dict(jobs.values_list("pk", "image"))
        delete()
        _delete_files_after_commit(rows)


def _cancel_pending(jobs: QuerySet[ImageJob]) -> None:
    for job in jobs.filter(status__in=ImageJob.PENDING):
        try:
            job_cancel(job=job)
        except JobError:
            pass  # it finished meanwhile


def _delete_files_after_commit(rows: dict[int, str]) -> None:
    # Every file of the jobs, also those a crash left under a job's name or half-written.
    if rows:
        transaction.on_commit(lambda: files.delete_job_files(job_ids=rows, names=rows.values()))


# --- Maintenance: nothing stuck, nothing lost ---------------------------------------


def job_hand_back(*, job_id: int) -> ImageJob | None:
    """A stopping worker gives its running job back: to its old place, the attempt not counted."""
    with transaction.atomic():
        job = _transition(
            job_id,
            "hand_back",
            fields={"progress": 0, "attempts": F("attempts") - 1, "started_at": None, "heartbeat_at": None},
            metadata={"progress": 0, "started_at": None},
            content=texts.HANDED_BACK,
        )
        if job is not None:
            _announce_queued(job)
            transaction.on_commit(ring_worker, robust=True)  # another worker may take it
    return job


def job_requeue_lost(*, job_id: int, detail: str) -> ImageJob | None:
    """Put a job whose worker died back in the queue, in its old place."""
    with transaction.atomic():
        job = _transition(
            job_id,
            "requeue_lost",
            fields={"error_detail": detail, "progress": 0, "not_before": None},
            metadata={"progress": 0, "retrying": True},
            content=texts.WORKER_RESTARTED,
        )
        if job is not None:
            _announce_queued(job)
            transaction.on_commit(ring_worker, robust=True)
    return job


def jobs_recover_orphans(*, host: str | None = None, now: datetime | None = None) -> dict[str, list[int]]:
    """Resolve processing jobs whose worker process on this host has died.

    Such a job is retried while attempts allow, else it fails with a clear message.
    """
    host = host or socket.gethostname()
    now = now or timezone.now()
    requeued: list[int] = []
    failed: list[int] = []
    for job in ImageJob.objects.filter(status=Status.PROCESSING).only("pk", "worker", "attempts"):
        if worker_is_gone(job.worker, host=host):
            detail = f"Worker {job.worker} died during attempt {job.attempts}"
            _resolve_lost(job.pk, job.attempts, detail=detail, now=now, requeued=requeued, failed=failed)
    return {"requeued": requeued, "failed": failed}


def jobs_requeue_from_dead_workers(*, now: datetime | None = None) -> dict[str, list[int]]:
    """Resolve processing jobs whose worker row stopped beating, on whatever host it ran.

    Such a job goes back to its old place in the queue while attempts allow, else it
    fails with a clear message.
    """
    now = now or timezone.now()
    dead = Worker.objects.filter(last_seen_at__lt=Worker.live_since(now))
    requeued: list[int] = []
    failed: list[int] = []
    jobs = ImageJob.objects.filter(status=Status.PROCESSING, worker__in=dead.values("name"))
    for job_id, worker, attempts in jobs.values_list("pk", "worker", "attempts"):
        detail = f"Worker {worker} stopped beating during attempt {attempts}"
        _resolve_lost(job_id, attempts, detail=detail, now=now, requeued=requeued, failed=failed)
    return {"requeued": requeued, "failed": failed}


def _resolve_lost(job_id: int, attempts: int, *, detail: str, now: datetime, requeued: list, failed: list) -> None:
    """A job whose worker is gone: back to its place while attempts allow, else failed."""
    if attempts < settings.IMAGEGEN_MAX_ATTEMPTS:
        if job_requeue_lost(job_id=job_id, detail=detail):
            requeued.append(job_id)
    elif job_fail(job_id=job_id, error=texts.WORKER_LOST, detail=detail, now=now):
        failed.append(job_id)


def jobs_expire_stuck(*, now: datetime | None = None) -> dict[str, Any]:
    """The stuck-job guard, run every minute by the maintenance cluster.

    - a processing job whose worker stopped beating goes back to the queue;
    - a processing job with no heartbeat for IMAGEGEN_STUCK_AFTER_SECONDS fails;
    - a processing job whose worker died on this host is retried or failed;
    - queued jobs with no worker at them get the worker rung again.
    """
    now = now or timezone.now()
    dead_workers = jobs_requeue_from_dead_workers(now=now)
    stale_before = now - timedelta(seconds=settings.IMAGEGEN_STUCK_AFTER_SECONDS)
    expired = []
    stale = ImageJob.objects.filter(status=Status.PROCESSING, heartbeat_at__lte=stale_before)
    for job_id, heartbeat in stale.values_list("pk", "heartbeat_at"):
        detail = f"No heartbeat since {heartbeat.isoformat()}"
        if job_fail(job_id=job_id, error=texts.STUCK, detail=detail, now=now):
            expired.append(job_id)
    orphans = jobs_recover_orphans(now=now)
    orphans = {key: dead_workers[key] + orphans[key] for key in orphans}
    idle = not ImageJob.objects.filter(status=Status.PROCESSING).exists()
    waiting = ImageJob.objects.filter(status=Status.QUEUED).exists()
    if idle and waiting:
        # The doorbell may have been lost, or the worker was down: ring again. A
        # spare doorbell finds nothing to do.
        ring_worker()
    if waiting:
        broadcasts.queue_broadcast_request(now=now)
    return {"expired": expired, **orphans, "rang": idle and waiting}


# --- Workers ----------------------------------------------------------------------


def worker_register(*, name: str, device: str, max_batch: int = 1, now: datetime | None = None) -> Worker:
    """Record a worker process as started (a restarted pid on the same host starts afresh)."""
    now = now or timezone.now()
    host, _, pid = name.rpartition(":")
    worker, _ = Worker.objects.update_or_create(
        name=name,
        defaults={
            "host": host,
            "pid": int(pid),
            "device": device,
            "max_batch": max_batch,
            "started_at": now,
            "last_seen_at": now,
            "stopping": False,
        },
    )
    return worker


def worker_beat(
    *,
    name: str,
    device: str,
    max_batch: int = 1,
    loading_job_ids: list[int] | None = None,
    stopping: bool = False,
    now: datetime | None = None,
) -> None:
    """A worker is alive (and maybe stopping); the jobs whose model it is loading are too."""
    now = now or timezone.now()
    changes = {"last_seen_at": now, "device": device, "max_batch": max_batch, "stopping": stopping}
    if not Worker.objects.filter(name=name).update(**changes):
        worker_register(name=name, device=device, max_batch=max_batch, now=now)  # its row was pruned meanwhile
    if loading_job_ids:
        ImageJob.objects.filter(pk__in=loading_job_ids, status=Status.PROCESSING, worker=name).update(heartbeat_at=now)


# --- Retention --------------------------------------------------------------------


def records_prune(*, now: datetime | None = None) -> dict[str, int]:
    """Delete what only grows: stray image files, old broker tasks, spent tickets, channel rows.

    Run by the maintenance cluster every 15 minutes. Each part is a set-based delete,
    so its cost follows what there is to delete, not the history.
    """
    from django_q.models import Task

    now = now or timezone.now()
    orphans = files.remove_orphans(older_than=now - timedelta(seconds=settings.IMAGEGEN_ORPHAN_FILE_AGE_SECONDS))
    task_cutoff = now - timedelta(hours=settings.IMAGEGEN_TASK_RETENTION_HOURS)
    tasks, _ = Task.objects.filter(stopped__lt=task_cutoff).delete()
    # A ticket's only use is its number, already copied into the job. The newest stays,
    # though neither PostgreSQL's sequence nor SQLite's AUTOINCREMENT would reuse it.
    newest = QueueTicket.objects.order_by("-pk").values_list("pk", flat=True).first()
    tickets = QueueTicket.objects.filter(pk__lt=newest).delete()[0] if newest else 0
    workers, _ = Worker.objects.filter(last_seen_at__lt=now - timedelta(days=1)).delete()
    previews, _ = JobPreview.objects.filter(job__status__in=ImageJob.FINAL).delete()
    api_requests, _ = ApiRequest.objects.filter(created_at__lt=now - timedelta(days=1)).delete()
    return {
        "files": len(orphans),
        "tasks": tasks,
        "tickets": tickets,
        "channel_rows": _channel_rows_prune(now=now),
        "workers": workers,
        "previews": previews,
        "api_requests": api_requests,
    }


def _channel_rows_prune(*, now: datetime) -> int:
    """channels-lite's expired and delivered events and expired group memberships (none on Redis)."""
    if "channels_lite" not in settings.INSTALLED_APPS:
        return 0  # channels-redis expires its own keys
    from channels_lite.models import Event, GroupMembership

    delivered_before = now - timedelta(minutes=1)
    events_deleted, _ = Event.objects.filter(
        Q(expires_at__lt=now) | Q(delivered=True, created_at__lt=delivered_before)
    ).delete()
    memberships, _ = GroupMembership.objects.filter(expires_at__lt=now).delete()
    return events_deleted + memberships


# --- Circuit breaker ----------------------------------------------------------------


def _breaker_locked() -> CircuitBreaker:
    CircuitBreaker.objects.get_or_create(name=CircuitBreaker.GENERATION)
    return CircuitBreaker.objects.select_for_update().get(name=CircuitBreaker.GENERATION)


def _breaker_set(breaker: CircuitBreaker, **changes: Any) -> None:
    before = breaker.state
    for field, value in changes.items():
        setattr(breaker, field, value)
    breaker.save()
    if breaker.state != before:
        logger.warning("Circuit breaker %s: %s -> %s", breaker.name, before, breaker.state)
        events.send_to_all("service.status", **selectors.service_status(breaker=breaker))


def breaker_record_success() -> None:
    state = CircuitBreaker.objects.filter(name=CircuitBreaker.GENERATION).values_list("state", "failures").first()
    if state is None or state == (CircuitBreaker.State.CLOSED, 0):
        return  # the usual case: nothing to change, so no lock to take
    with transaction.atomic():
        breaker = _breaker_locked()
        if breaker.state != CircuitBreaker.State.CLOSED or breaker.failures:
            _breaker_set(breaker, state=CircuitBreaker.State.CLOSED, failures=0, opened_at=None)


def breaker_record_failure(*, now: datetime | None = None) -> None:
    """Count a backend failure; open after the threshold, or when the trial fails."""
    now = now or timezone.now()
    with transaction.atomic():
        breaker = _breaker_locked()
        failures = breaker.failures + 1
        if breaker.state == CircuitBreaker.State.HALF_OPEN or failures >= settings.IMAGEGEN_BREAKER_THRESHOLD:
            _breaker_set(breaker, state=CircuitBreaker.State.OPEN, failures=failures, opened_at=now)
        else:
            _breaker_set(breaker, failures=failures)


def breaker_release_trial() -> None:
    """The trial job ended without a verdict (cancelled): let the next job be the trial."""
    with transaction.atomic():
        breaker = _breaker_locked()
        if breaker.state == CircuitBreaker.State.HALF_OPEN:
            _breaker_set(breaker, state=CircuitBreaker.State.OPEN, opened_at=None)
