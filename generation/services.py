"""Every change of a job's state, and of the circuit breaker, happens here.

Each transition is a compare-and-set on the job row (`filter(pk=..., status=EXPECTED)
.update(...)`, then check the row count) plus a deep merge of the assistant message's
metadata, in one transaction. Events go out after commit, from `generation.events`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
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
from PIL import Image

from chat.models import Conversation, Message
from chat.services import exchange_post, message_update
from generation import broadcasts, doorbells, events, fairness, files, selectors, texts
from generation.forms import SEED_MAX, JobForm
from generation.loras import LoraUnavailable
from generation.models import ApiRequest, CircuitBreaker, ImageJob, JobPreview, QueueTicket
from generation.outages import OUTAGES
from generation.pipeline import is_transient
from generation.registry import get_registry, model_limits
from generation.request import IMG2IMG, INPAINT, TXT2IMG, UPSCALE
from generation.sources import ModelUnavailable
from generation.uploads import png_bytes

logger = logging.getLogger(__name__)

Status = ImageJob.Status


class JobError(Exception):
    """A request about a job that cannot be carried out (wrong state, limits)."""


def ring_worker() -> bool:
    """Tell the GPU cluster there is work. The job table, not the message, is the queue.

    After a commit it runs as a robust hook: a lost doorbell is rung again by an idle
    worker's beat or the stuck-job guard, and must never fail the change that rang it.
    Returns False when the broker is away (and the ring lost).
    """
    try:
        doorbells.enqueue("generation.tasks.process_next_job", cluster="gpu", name="process next image job")
    except Exception as exc:
        # The broker is away: the worker's beat rings again once it answers.
        if OUTAGES.failed(exc, doing="ringing the gpu worker") is None:
            raise
        return False
    return True


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
    """Merge a job's state into its message, in the one shape every reply has.

    The image's own state goes under `images.<job id>`; the top level is the prompt's
    state, derived from all of its images' under the message's row lock (so two
    images changing at once both count): see `_prompt_state`. `content` is what this
    change says of an image (the reply's text when the prompt asked for one image).
    """
    count = job.image_count

    def derive(merged: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        return _prompt_state(merged.get("images", {}), count=count, said=content)

    message_update(job.message_id, metadata={"images": {str(job.pk): metadata}}, derive=derive)


def _prompt_state(images: dict[str, dict], *, count: int, said: str | None) -> tuple[dict[str, Any], str]:
    """The prompt's state from its images' (keyed by job id): what the top level of its reply holds.

    Running while any image runs, queued while any waits, then complete if any image
    was made, else failed, else cancelled. Its progress is the images' mean, its image
    the first one made, its error the first one's when none was made, and it started
    with the first image and finished with the last.
    """
    entries = [images[key] for key in sorted(images, key=int)]
    statuses = [entry.get("status") for entry in entries]
    status = next(
        (state for state in (Status.PROCESSING, Status.QUEUED, Status.COMPLETE, Status.ERROR) if state in statuses),
        Status.CANCELLED,
    )
    made = [
        entry["image_url"] for entry in entries if entry.get("status") == Status.COMPLETE and entry.get("image_url")
    ]
    errors = [entry["error"] for entry in entries if entry.get("status") == Status.ERROR and entry.get("error")]
    started = [entry["started_at"] for entry in entries if entry.get("started_at")]
    finished = [entry["finished_at"] for entry in entries if entry.get("finished_at")]
    state = {
        "status": status,
        "progress": round(sum(entry.get("progress") or 0 for entry in entries) / max(count, 1)),
        "image_url": made[0] if made else None,
        "error": errors[0] if status == Status.ERROR and errors else None,
        "started_at": min(started) if started else None,
        "finished_at": max(finished) if status in ImageJob.FINAL and finished else None,
        "retrying": any(entry.get("retrying") for entry in entries),
    }
    if status != Status.QUEUED:
        state["queue_position"] = None
    return state, texts.prompt_content(status, count, statuses.count(Status.COMPLETE), said)


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


@dataclass(frozen=True)
class Refusal:
    """Why a cap refused a request, and when asking again should succeed (seconds)."""

    message: str
    retry_after: int
    unavailable: bool = False  # the service cannot take it (a full disk), not the user's caps


class JobRefused(JobError):
    """A cap (pending images, prompts a minute) refused a submission or a retry."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass(frozen=True)
class Submission:
    """What `job_submit` made (or found, for a retried API request: `attached`)."""

    jobs: list[ImageJob]  # one per image, in queue order
    reply: Message  # the assistant's message the jobs share
    conversation: Conversation  # with its title as it is now
    prompt_message: Message | None = None  # the user's message; None when attached
    attached: bool = False


# A retry attaches to the jobs of its first try while one is pending, or finished this
# recently (the answer was lost on the way, the image is there).
ATTACH_FINISHED_WITHIN = timedelta(minutes=10)
RETRY_AFTER_MAX = 120
DISK_FULL_RETRY_AFTER = 60


def _lock_user(owner_id: int) -> None:
    """One user's submissions and retries queue behind each other on their user row."""
    list(get_user_model().objects.select_for_update().filter(pk=owner_id).values_list("pk"))


def _caps_refusal(owner_id: int, *, now: datetime, asked: int | None) -> Refusal | None:
    """The user's caps, checked under their row lock (taken by the caller); None when they allow.

    The lock makes the caps hold even when several tabs or scripts ask at the same
    moment. The counts are a statement of their own: one that starts after the lock
    is granted sees every job committed by the one that held it (a single statement
    would count from its own, older snapshot on PostgreSQL). The pending cap counts
    images, so `asked` more must fit under it; a new submission (`asked` images) also
    counts, as one prompt, against the per-minute rate. A retry (`asked` None) brings
    back one job, so only the pending cap applies to it. Before the caps: a disk too
    full to store an image refuses everybody.
    """
    if files.disk_nearly_full():
        return Refusal(texts.DISK_FULL, DISK_FULL_RETRY_AFTER, unavailable=True)
    counts = ImageJob.objects.filter(owner_id=owner_id).aggregate(
        pending=Count("pk", filter=Q(status__in=ImageJob.PENDING)),
        recent=Count("message_id", filter=Q(created_at__gte=now - timedelta(minutes=1)), distinct=True),
    )
    limit = settings.IMAGEGEN_MAX_PENDING_PER_USER
    wanted = 1 if asked is None else asked
    if counts["pending"] >= limit:
        message = texts.pending_cap(counts["pending"])
    elif counts["pending"] + wanted > limit:
        message = texts.too_many_asked(counts["pending"], wanted, limit)
    elif asked is not None and counts["recent"] >= settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE:
        message = texts.TOO_FAST
    else:
        return None
    return Refusal(message, _retry_after(owner_id, asked=wanted, now=now, rated=asked is not None))


def _retry_after(owner_id: int, *, asked: int, now: datetime, rated: bool) -> int:
    """Seconds until the user's caps let a request for `asked` images in (1-120).

    For the pending cap: until enough of the user's pending jobs should have ended
    (their ETAs); for the rate: until the oldest prompt of the last minute leaves it.
    """
    pending = list(ImageJob.objects.filter(owner_id=owner_id, status__in=ImageJob.PENDING))
    waits = []
    over = len(pending) + asked - settings.IMAGEGEN_MAX_PENDING_PER_USER
    if over > 0 and pending:
        etas = sorted(state["estimated_seconds"] or 0 for state in selectors.job_live_states(jobs=pending).values())
        waits.append(etas[min(over, len(etas)) - 1])
    recent = ImageJob.objects.filter(owner_id=owner_id, created_at__gte=now - timedelta(minutes=1))
    if rated and recent.values("message_id").distinct().count() >= settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE:
        oldest = recent.order_by("created_at").values_list("created_at", flat=True).first()
        waits.append(60 - (now - oldest).total_seconds())
    return max(1, min(RETRY_AFTER_MAX, round(max(waits, default=1))))


def _attached(owner_id: int, *, key: str, now: datetime) -> Submission | None:
    """The jobs an earlier request with this idempotency key queued, if a retry should get them."""
    requests = ApiRequest.objects.select_related("job__message", "job__conversation")
    previous = requests.filter(owner_id=owner_id, key=key).first()
    if previous is None:
        return None
    jobs = list(ImageJob.objects.filter(message_id=previous.job.message_id).order_by("sequence"))
    pending = any(job.status in ImageJob.PENDING for job in jobs)
    recent = any(
        job.status == Status.COMPLETE and job.finished_at and job.finished_at >= now - ATTACH_FINISHED_WITHIN
        for job in jobs
    )
    if not (pending or recent):
        return None
    return Submission(jobs=jobs, reply=previous.job.message, conversation=previous.job.conversation, attached=True)


def job_submit(
    *,
    user: AbstractBaseUser,
    conversation: Conversation,
    prompt: str,
    count: Any = 1,
    idempotency_key: str = "",
    attach: bool = True,
    source: Image.Image | None = None,
    mask: Image.Image | None = None,
    source_job: Any = None,
    **params: Any,
) -> Submission:
    """Validate, then create the user's message, the assistant's message and the jobs.

    An edit continues from an image: `source` (one the user brought) or `source_job`
    (the id of one of their finished images), with `mask` (L, 255 = repaint, the
    source's size) for inpainting; see `_edit_params` for its defaults. Each of its
    jobs keeps its own copy of the source and mask.

    `count` images (1-10) of one prompt are `count` jobs that share the assistant's
    message, with seeds seed, seed+1, ... (as AUTOMATIC1111 numbers a batch), next to
    each other in the queue. With `idempotency_key` (an API request's digest) the
    request is remembered, and when `attach` a retry of it gets the jobs its first
    try queued (while they are pending or just finished) instead of new ones. The
    user's row lock orders everything one user asks, so idempotency and the caps are
    decided once. Raises ValidationError with field errors when any input is bad, or
    JobRefused (with a Retry-After) when a cap refuses; nothing is created then. The
    worker is rung after commit.
    """
    if conversation.owner_id != user.pk:
        raise ValidationError({"conversation": texts.NOT_YOURS})
    parent = None
    if source_job not in (None, ""):
        parent = _source_job(user, source_job)
        source = files.open_image(parent.image.name)
        prompt = prompt or parent.prompt
    params = _edit_params(params, source=source, mask=mask)
    form = JobForm(data={"prompt": prompt, "count": count, **params})
    if not form.is_valid():
        raise ValidationError(form.errors.as_data())
    data = form.cleaned_data
    count = data["count"]
    if (
        data["kind"] == UPSCALE
        and source is not None
        and data["width"] * data["height"] <= source.width * source.height
    ):
        raise ValidationError({"kind": texts.upscale_too_large(source.width, source.height)})
    with transaction.atomic():
        now = timezone.now()
        _lock_user(user.pk)
        if idempotency_key and attach:
            attached = _attached(user.pk, key=idempotency_key, now=now)
            if attached is not None:
                return attached
        refusal = _caps_refusal(user.pk, now=now, asked=count)
        if refusal:
            raise JobRefused(refusal)
        # What its pass shares with others (ImageJob.PASS_FIELDS), and its seed.
        job_params = {key: data[key] for key in (*ImageJob.PASS_FIELDS, "seed")}
        seeds = [(data["seed"] + index) % (SEED_MAX + 1) for index in range(count)]
        turns = _fair_turns(user.pk, job_params, count)
        asked, assistant = exchange_post(
            conversation=conversation,
            prompt=data["prompt"],
            reply=texts.prompt_content(Status.QUEUED, count, 0),
            reply_metadata={
                "status": Status.QUEUED,
                "progress": 0,
                "prompt": data["prompt"],
                "params": {
                    **job_params,
                    "negative_prompt": data["negative_prompt"],
                    **({"mask_blur": data["mask_blur"], "source_job": parent.pk if parent else None} if source else {}),
                },
                "count": count,
                "seeds": seeds,
                "created_at": now.isoformat(),
            },
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
                fair_tag=turns[index][0],
                fair_cost=turns[index][1],
                image_index=index,
                image_count=count,
                mask_blur=data["mask_blur"],
                source_job=parent,
                **{**job_params, "seed": seed},
            )
            if source is not None:
                _store_edit_inputs(job, source=source, mask=mask)
            job.message = assistant
            jobs.append(job)
        ids = {
            "job_id": jobs[0].pk,  # the first image's, as the specification names it
            "job_ids": [job.pk for job in jobs],
            "images": {str(job.pk): {"status": Status.QUEUED, "progress": 0, "seed": job.seed} for job in jobs},
        }
        message_update(assistant.pk, metadata=ids)
        assistant.metadata.update(ids)
        if idempotency_key:
            ApiRequest.objects.update_or_create(
                owner=user, key=idempotency_key, defaults={"job": jobs[0], "created_at": now}
            )
        for job in jobs:
            _announce_queued(job)
        _queue_changed()
        transaction.on_commit(ring_worker, robust=True)
    return Submission(jobs=jobs, reply=assistant, conversation=conversation, prompt_message=asked)


def _fair_turns(owner_id: int, params: dict[str, Any] | ImageJob, count: int) -> list[tuple[float, float]]:
    """(fair_tag, fair_cost) of each of `count` new jobs with these parameters (or a job's).

    Only the fair policy orders by them; under `fifo` they stay 0 and cost nothing.
    The caller holds the user's row lock.
    """
    if fairness.policy() != fairness.FAIR:
        return [(0.0, 0.0)] * count
    seconds = selectors.pass_seconds(selectors.duration_estimator(), params, 1)
    return fairness.tags(owner_id, [seconds] * count)


def _source_job(user: AbstractBaseUser, job_id: Any) -> ImageJob:
    """One of the user's finished images, to continue from; anybody else's is not found."""
    try:
        job_id = int(job_id)
    except (TypeError, ValueError):
        raise ValidationError({"source_job": texts.SOURCE_NOT_FOUND}) from None
    job = ImageJob.objects.filter(pk=job_id, owner_id=user.pk, status=Status.COMPLETE).exclude(image="").first()
    if job is None:
        raise ValidationError({"source_job": texts.SOURCE_NOT_FOUND})
    return job


def _edit_params(params: dict[str, Any], *, source: Image.Image | None, mask: Image.Image | None) -> dict[str, Any]:
    """An edit's kind and size where the request leaves them out.

    With a source the kind is image-to-image (inpainting with a mask); the size is the
    source's (twice it for an upscale), fitted into the chosen model's bounds.
    """
    params = dict(params)
    kind = params.get("kind") or (INPAINT if mask is not None else IMG2IMG if source is not None else TXT2IMG)
    params["kind"] = kind
    if kind == TXT2IMG:
        if source is not None or mask is not None:
            raise ValidationError({"kind": texts.EDIT_KIND_NEEDED})
        return params
    if source is None:
        raise ValidationError({"image": texts.EDIT_NEEDS_SOURCE})
    if kind == INPAINT and mask is None:
        raise ValidationError({"mask": texts.INPAINT_NEEDS_MASK})
    if mask is not None and mask.size != source.size:
        raise ValidationError({"mask": texts.mask_size(source.width, source.height)})
    model = params.get("model") or settings.IMAGEGEN_DEFAULT_MODEL
    if model in get_registry() and params.get("width") in (None, "") and params.get("height") in (None, ""):
        scale = 2.0 if kind == UPSCALE else 1.0
        params["width"], params["height"] = model_limits(model).fit(source.width, source.height, scale=scale)
    return params


def _store_edit_inputs(job: ImageJob, *, source: Image.Image, mask: Image.Image | None) -> None:
    """The job's own copies of its source and mask, named after it."""
    job.source_image.name = files.write_part(job.pk, "source", png_bytes(source.convert("RGB")))
    fields = ["source_image"]
    if mask is not None:
        job.mask_image.name = files.write_part(job.pk, "mask", png_bytes(mask.convert("L")))
        fields.append("mask_image")
    job.save(update_fields=fields)


# --- The worker's side: claim, progress, outcome ---------------------------------


def job_claim(*, worker: str, now: datetime | None = None) -> ImageJob | None:
    """Move the oldest runnable queued job to `processing` and return it (None: nothing to run)."""
    jobs = jobs_claim(worker=worker, now=now, max_batch=1)
    return jobs[0] if jobs else None


def jobs_claim(
    *, worker: str, now: datetime | None = None, max_batch: int = 1, window: int | None = None
) -> list[ImageJob]:
    """Claim the first runnable queued job and up to `max_batch - 1` more to share its pass.

    The queue's order is the policy's (generation/fairness.py: first come, first
    served, or fair shares). The head of the queue always comes first. The others are
    runnable jobs among the `window` behind it (IMAGEGEN_BATCH_WINDOW) that can share
    its pass (`ImageJob.pass_key`: same model, size, steps, guidance, scheduler, kind
    and strength), in queue order (under the fair policy other users' before the
    head's owner's), so a job moves ahead of at most `window` others and never of the
    head. Returns the head, then the others, sharing one `batch` name; empty when
    nothing is runnable.

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
        order = fairness.policy()
        candidates = list(
            runnable.order_by(*fairness.queue_order(order)).only(
                "pk", "owner_id", "priority", "fair_tag", "fair_cost", *ImageJob.PASS_FIELDS
            )[: 1 + max(window, 4) if max_batch > 1 else 5]
        )
        batch = f"{timezone.now():%H%M%S}-{secrets.token_hex(3)}"
        claimed: list[ImageJob] = []
        for index, candidate in enumerate(candidates):
            head = _claim_one(candidate, worker=worker, now=now, batch=batch)
            if head is None:
                continue  # somebody else moved it first
            claimed.append(head)
            if candidate.priority == 0:
                fairness.advance(candidate.fair_tag)  # its turn has come
            behind = candidates[index + 1 : index + 1 + window]
            members = fairness.pass_members(
                candidate,
                behind,
                room=len(behind),
                key=ImageJob.pass_key,
                owner=lambda job: job.owner_id,
                name=order,
            )
            for member in members:
                if len(claimed) >= max_batch:
                    break
                job = _claim_one(member, worker=worker, now=now, batch=batch)
                if job is not None:
                    claimed.append(job)
            break
        if not claimed:
            return []
        if order == fairness.FAIR:
            for job in claimed:
                fairness.ran(job)
        ImageJob.objects.filter(pk__in=[job.pk for job in claimed]).update(batch_size=len(claimed))
        for job in claimed:
            job.batch_size = len(claimed)
            events.send_to_user(
                job.owner_id, "job.progress", job_id=job.pk, status=job.status, step=0, total=job.steps, progress=0
            )
        if breaker is not None and breaker.state == CircuitBreaker.State.OPEN:
            _breaker_set(breaker, state=CircuitBreaker.State.HALF_OPEN)
        return claimed


def _claim_one(job: ImageJob, *, worker: str, now: datetime, batch: str) -> ImageJob | None:
    """Move one queued job to `processing` for `worker`'s pass `batch` (None: it moved first)."""
    return _transition(
        job.pk,
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


# What `job_progress` finds: the job runs on, was interrupted (an A1111 client asked it
# to stop and keep its image), or is no longer processing (cancelled): None.
RUNNING, INTERRUPTED = "running", "interrupted"


def job_progress(
    *, job: ImageJob, step: int, total: int, persist: bool, push: bool = True, now: datetime | None = None
) -> str | None:
    """Record progress; returns RUNNING, INTERRUPTED, or None when the job is no longer
    processing (cancelled).

    With `persist` the row and the message are written (every 10 % and as a
    heartbeat); with `push` the live event goes out (after the commit, if any). The
    status check is the worker's way of noticing a cancel or an interrupt, so it runs
    either way; an interrupted job's progress is not written (it stops at this step).
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
            running = processing.filter(interrupt_requested=False)
            if not running.update(progress=progress, heartbeat_at=now or timezone.now()):
                return INTERRUPTED if processing.exists() else None
            _message_update(job, metadata={"progress": progress})
        else:
            interrupted = processing.values_list("interrupt_requested", flat=True).first()
            if interrupted is None:
                return None
            if interrupted:
                return INTERRUPTED
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
    return RUNNING


def jobs_preparing(*, jobs: list[ImageJob], state: str, on: bool) -> None:
    """The jobs' model is being downloaded or loaded (`state`), or that is done: their
    cards say so, also after a reload (the message's metadata holds it)."""
    with transaction.atomic():
        running = set(
            ImageJob.objects.filter(pk__in=[job.pk for job in jobs], status=Status.PROCESSING).values_list(
                "pk", flat=True
            )
        )
        for message_id in {job.message_id for job in jobs if job.pk in running}:
            message_update(message_id, metadata={state: on})
        if on:
            for job in jobs:
                if job.pk in running:
                    events.send_to_user(job.owner_id, f"job.{state}", job_id=job.pk, model=job.model)


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


def job_complete(
    *, job_id: int, png: bytes, now: datetime | None = None, stopped_at: tuple[int, int] | None = None
) -> ImageJob | None:
    """Store the image and finish the job; None if it was cancelled meanwhile.

    `stopped_at` (step, of steps): the job was interrupted and its image is the one of
    that step; it is complete all the same, and its reply says where it stopped.
    The PNG is written under a temporary name first and takes the job's own name in
    the transaction that completes the job (see generation.files).
    """
    now = now or timezone.now()
    incoming = files.write_incoming(job_id, png)
    step = stopped_at[0] if stopped_at else None
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
                    "stopped_at_step": step,
                },
                metadata={
                    "progress": 100,
                    "image_url": image_url,
                    "finished_at": now.isoformat(),
                    "error": None,
                    "stopped_at_step": step,
                },
                content=texts.interrupted(*stopped_at) if stopped_at else texts.READY,
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
        shown = str(exc) if isinstance(exc, LoraUnavailable) else texts.MODEL_UNAVAILABLE
        job = job_fail(job_id=job_id, error=error or shown, detail=detail, now=now)
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
            fields={
                "not_before": now + timedelta(seconds=delay),
                "error_detail": detail,
                "progress": 0,
                "interrupt_requested": False,  # an interrupt was for the run that ended
            },
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


def job_interrupt(*, job: ImageJob) -> bool:
    """Ask a running job to stop at its next step and end with the image of that step
    (A1111's interrupt); False when it is not running (any more).

    Not a change of status: the worker notices it from its next progress write (as it
    notices a cancel) and completes the job with the latents it has then.
    """
    return bool(ImageJob.objects.filter(pk=job.pk, status=Status.PROCESSING).update(interrupt_requested=True))


def job_retry(*, job: ImageJob, now: datetime | None = None) -> ImageJob:
    """Give a failed or cancelled job a new attempt, at the back of the queue.

    The same job (and card) comes back to life with the same parameters and seed.
    """
    now = now or timezone.now()
    with transaction.atomic():
        _lock_user(job.owner_id)
        refusal = _caps_refusal(job.owner_id, now=now, asked=None)
        if refusal:
            raise JobRefused(refusal)
        [(tag, turn)] = _fair_turns(job.owner_id, job, 1)
        retried = _transition(
            job.pk,
            "retry",
            fields={
                "sequence": QueueTicket.objects.create().pk,
                "fair_tag": tag,
                "fair_cost": turn,
                "priority": 0,
                "attempts": 0,
                "progress": 0,
                "error": "",
                "error_detail": "",
                "image": "",
                "not_before": None,
                "started_at": None,
                "heartbeat_at": None,
                "finished_at": None,
                "interrupt_requested": False,
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
    """Send a queued job to the back of the queue (a new ticket, and under the fair
    policy a tag behind every queued job's)."""
    with transaction.atomic():
        moved = _transition(
            job.pk,
            "move_to_end",
            fields={"sequence": QueueTicket.objects.create().pk, "fair_tag": fairness.back_of_queue(), "priority": 0},
        )
        if moved is None:
            raise JobError(texts.ONLY_QUEUED_MOVES)
    return moved


def job_run_next(*, job: ImageJob) -> ImageJob:
    """Put a queued job ahead of every other (an admin's choice), under either policy.

    Jobs asked to run next keep their own order among themselves. The queue's virtual
    time does not move for them: nobody's turn is spent.
    """
    with transaction.atomic():
        moved = _transition(job.pk, "run_next", fields={"priority": 1})
        if moved is None:
            raise JobError(texts.ONLY_QUEUED_RUNS_NEXT)
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
    ids = list(jobs.values_list("pk", flat=True))

    def delete() -> None:
        messages = set(ImageJob.objects.filter(pk__in=ids).values_list("message_id", flat=True))
        ImageJob.objects.filter(pk__in=ids).delete()
        # A message goes with its last job; one that still holds other images of its prompt stays.
        Message.objects.filter(pk__in=messages, image_jobs__isnull=True).delete()

    _delete_with_jobs(ImageJob.objects.filter(pk__in=ids), delete)


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
            fields={
                "progress": 0,
                "attempts": F("attempts") - 1,
                "started_at": None,
                "heartbeat_at": None,
                "interrupt_requested": False,  # an interrupt was for the run that ended
            },
            metadata={"progress": 0, "started_at": None},
            content=texts.HANDED_BACK,
        )
        if job is not None:
            _announce_queued(job)
            transaction.on_commit(ring_worker, robust=True)  # another worker may take it
    return job


def jobs_hand_back_orphans(*, worker: str) -> list[int]:
    """Jobs `processing` under `worker` that it is not running go back to their places.

    Asked by a live worker about itself while it runs nothing, so such a job is one it
    lost track of: a claim whose answer an outage cut off, or a job left when the
    database went away. The attempt is not counted.
    """
    orphans = list(ImageJob.objects.filter(status=Status.PROCESSING, worker=worker).values_list("pk", flat=True))
    handed = [job_id for job_id in orphans if job_hand_back(job_id=job_id)]
    if handed:
        logger.warning("Worker %s was not running jobs %s: they go back to their places", worker, handed)
    return handed


def job_requeue_lost(*, job_id: int, detail: str) -> ImageJob | None:
    """Put a job whose worker died back in the queue, in its old place."""
    with transaction.atomic():
        job = _transition(
            job_id,
            "requeue_lost",
            fields={"error_detail": detail, "progress": 0, "not_before": None, "interrupt_requested": False},
            metadata={"progress": 0, "retrying": True},
            content=texts.WORKER_RESTARTED,
        )
        if job is not None:
            _announce_queued(job)
            transaction.on_commit(ring_worker, robust=True)
    return job


def jobs_requeue_from_dead_workers(*, now: datetime | None = None) -> dict[str, list[int]]:
    """Resolve processing jobs whose worker is dead (`selectors.workers_dead`), wherever it ran.

    Such a job goes back to its old place in the queue while attempts allow, else it
    fails with a clear message. The one way a lost worker's job comes back: the
    stuck-job guard and every live worker's beat run it.
    """
    now = now or timezone.now()
    dead = selectors.workers_dead(now=now)
    requeued: list[int] = []
    failed: list[int] = []
    if not dead:
        return {"requeued": requeued, "failed": failed}
    jobs = ImageJob.objects.filter(status=Status.PROCESSING, worker__in=dead)
    for job_id, worker, attempts in jobs.values_list("pk", "worker", "attempts"):
        detail = f"Worker {worker} {dead[worker]} during attempt {attempts}"
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

    - a processing job whose worker is dead goes back to the queue (or fails, out of attempts);
    - a processing job with no heartbeat for IMAGEGEN_STUCK_AFTER_SECONDS fails (not
      just after the database was away, when nobody could write a heartbeat);
    - queued jobs with no worker at them get the worker rung again.
    """
    now = now or timezone.now()
    lost = jobs_requeue_from_dead_workers(now=now)
    stale_before = now - timedelta(seconds=settings.IMAGEGEN_STUCK_AFTER_SECONDS)
    expired = []
    stale = list(
        ImageJob.objects.filter(status=Status.PROCESSING, heartbeat_at__lte=stale_before).values_list(
            "pk", "heartbeat_at"
        )
    )
    if stale and not selectors.silence_means_dead():
        stale = []  # the database was away: their workers write heartbeats again first
    for job_id, heartbeat in stale:
        detail = f"No heartbeat since {heartbeat.isoformat()}"
        if job_fail(job_id=job_id, error=texts.STUCK, detail=detail, now=now):
            expired.append(job_id)
    idle = not ImageJob.objects.filter(status=Status.PROCESSING).exists()
    waiting = ImageJob.objects.filter(status=Status.QUEUED).exists()
    if idle and waiting:
        # The doorbell may have been lost, or the worker was down: ring again. A
        # spare doorbell finds nothing to do.
        ring_worker()
    if waiting:
        broadcasts.queue_broadcast_request(now=now)
    return {"expired": expired, **lost, "rang": idle and waiting}


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
