"""Reads about jobs, the queue and the service."""

from __future__ import annotations

import heapq
from datetime import datetime
from itertools import islice
from statistics import median

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import F, Min, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.shortcuts import get_object_or_404

from generation import fairness, texts
from generation.models import CircuitBreaker, ImageJob, QueueBroadcast, Worker
from generation.outages import DATABASE, OUTAGES
from generation.request import TXT2IMG, denoise_steps

Status = ImageJob.Status


def job_get_for_user(*, user: AbstractBaseUser, job_id: int) -> ImageJob:
    """The user's own job; anybody else's answers 404."""
    return get_object_or_404(ImageJob.objects.select_related("message", "source_job"), pk=job_id, owner=user)


def queue_position(*, job: ImageJob) -> int | None:
    """1 + the number of queued jobs ahead of this one in the queue's order, or None if
    it is not queued (one count; `queue_eta` also places the jobs a pass takes along)."""
    if job.status != Status.QUEUED:
        return None
    return ImageJob.objects.filter(status=Status.QUEUED).filter(fairness.ahead_of(job)).count() + 1


def queue_version() -> int:
    """The version of the latest queue broadcast; positions read after it are at least as new."""
    return QueueBroadcast.objects.filter(pk=1).values_list("version", flat=True).first() or 0


def queue_positions() -> dict[int, int]:
    """job id -> position for every queued job: one query under `fifo`; under `fair`
    the positions of `queue_eta`, which places the jobs a pass takes along."""
    if fairness.policy() == fairness.FAIR:
        return {entry["job_id"]: entry["position"] for entry in queue_eta()}
    rows = (
        ImageJob.objects.filter(status=Status.QUEUED)
        .annotate(position=Window(RowNumber(), order_by=[F("priority").desc(), F("sequence").asc()]))
        .values_list("pk", "position")
    )
    return dict(rows)


def duration_estimator(*, history: int = 200):
    """A function (model, width, height, steps, batch=1, kind="txt2img") -> seconds a pass
    of `batch` images takes, from recently finished jobs.

    `steps` are the steps the pass runs (an edit's `ImageJob.work_steps`: its strength's
    share). Seconds per step of a pass are measured per model, kind, size and batch
    size (a job of a batched pass took as long as its pass). An edit with no history
    of its kind takes the new images' rate; a batch size with no history takes the
    size's seconds per image times the batch (no speed-up is promised before one is
    measured); a size with no history is scaled from the model's (or any model's)
    seconds per step per megapixel per image; with no history at all a configured
    default is used.
    """
    recent = (
        ImageJob.objects.filter(status=Status.COMPLETE, started_at__isnull=False, finished_at__isnull=False)
        .order_by("-finished_at")
        .values_list(
            "model", "kind", "width", "height", "steps", "strength", "batch_size", "started_at", "finished_at"
        )[:history]
    )
    per_pass: dict[tuple[str, str, int, int, int], list[float]] = {}
    per_size: dict[tuple[str, str, int, int], list[float]] = {}
    per_model: dict[str, list[float]] = {}
    overall: list[float] = []
    for model, kind, width, height, steps, strength, batch, started, finished in recent:
        ran = denoise_steps(steps, strength if kind != TXT2IMG else None)
        per_step = max((finished - started).total_seconds(), 0.0) / max(ran, 1)
        per_pass.setdefault((model, kind, width, height, batch), []).append(per_step)
        per_image = per_step / max(batch, 1)
        per_size.setdefault((model, kind, width, height), []).append(per_image)
        if kind == TXT2IMG:
            per_megapixel = per_image / (width * height / 1e6)
            per_model.setdefault(model, []).append(per_megapixel)
            overall.append(per_megapixel)
    default = settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP / (512 * 512 / 1e6)
    rates: dict[tuple[str, str, int, int, int], float] = {}  # a queue repeats a few sizes many times

    def per_step(model: str, kind: str, width: int, height: int, batch: int) -> float:
        measured = per_pass.get((model, kind, width, height, batch))
        if measured:
            return median(measured)
        if batch == 1 and (model, kind, width, height) in per_size:
            return median(per_size[(model, kind, width, height)])
        if batch > 1:
            return per_step(model, kind, width, height, 1) * batch
        if kind != TXT2IMG:
            return per_step(model, TXT2IMG, width, height, 1)
        scaled = per_model.get(model) or overall
        per_megapixel = median(scaled) if scaled else default
        return per_megapixel * (width * height / 1e6)

    def estimate(model: str, width: int, height: int, steps: int, batch: int = 1, kind: str = TXT2IMG) -> float:
        key = (model, kind, width, height, batch)
        if key not in rates:
            rates[key] = per_step(model, kind, width, height, batch)
        return rates[key] * steps

    return estimate


def pass_seconds(estimate, job: dict | ImageJob, batch: int) -> float:
    """What `estimate` says a pass of `batch` jobs like `job` (a row or a job) takes."""
    get = job.get if isinstance(job, dict) else lambda field: getattr(job, field)
    kind = get("kind")
    steps = denoise_steps(get("steps"), get("strength") if kind != TXT2IMG else None)
    return estimate(get("model"), get("width"), get("height"), steps, batch, kind)


def _pass_key(row: dict) -> tuple:
    """`ImageJob.pass_key` of a row read with `.values(*ImageJob.PASS_FIELDS)`."""
    return tuple(row[field] for field in ImageJob.PASS_FIELDS)


def queue_eta(*, now: datetime | None = None) -> list[dict]:
    """Every queued job with its position and ETA, in the order the worker will take them.

    The live workers are parallel lanes (at least one): each running pass occupies the
    lane that is free soonest for what is left of it, then the queue is cut into
    passes as the workers will claim them (the head and up to the workers' batch size
    less one of the jobs that can share its pass, within IMAGEGEN_BATCH_WINDOW places
    behind it); each pass, in order, starts when the first lane frees and keeps that
    lane for its own duration. With one worker and no batching that is the sum of
    everything ahead. `estimated_start_seconds` is when a job should start,
    `estimated_seconds` adds its pass's duration (seconds until done). A worker told
    to stop claims nothing more, so it is no lane. A pass of a model that its lane does
    not hold (none loaded yet, one unloaded when idle, or another) waits for that
    model's load, as long as its last load took.

    The queue's order is the policy's (generation/fairness.py). Positions are ranks in
    it under `fifo`; under `fair` they are the order in which the worker will take the
    jobs, passes included (a job a pass takes along is placed with its head), so they
    are 1..n and equal to the order the jobs start in when nothing new arrives.
    """
    estimate = duration_estimator()
    fields = ("model", "width", "height", "steps", "kind", "strength")
    live = list(workers_live(now=now).filter(stopping=False).values("max_batch", "loaded_model", "load_seconds"))
    max_batch = max((worker["max_batch"] for worker in live), default=1) or 1
    loads = load_seconds(live)
    # A heap of (the time at which a lane frees, the lane); the smallest is the next to
    # take a pass. A lane holds a model: a pass of another model waits for its load.
    lanes = [(0.0, lane) for lane in range(max(1, len(live)))]
    lane_model = [worker["loaded_model"] for worker in live] or [""]
    loaded = set(lane_model)
    running: dict[str, dict] = {}
    for job in ImageJob.objects.filter(status=Status.PROCESSING).values(
        "pk", "progress", "batch", "batch_size", *fields
    ):
        running.setdefault(job["batch"] or f"job-{job['pk']}", job)  # a pass's jobs move together
    for job in running.values():
        left = pass_seconds(estimate, job, job["batch_size"]) * (100 - job["progress"]) / 100
        if job["model"] not in loaded:
            left += loads.get(job["model"], 0.0)  # its worker is loading it now
        free_at, lane = lanes[0]
        lane_model[lane] = job["model"]
        heapq.heapreplace(lanes, (free_at + left, lane))
    order = fairness.policy()
    rows = list(
        ImageJob.objects.filter(status=Status.QUEUED)
        .order_by(*fairness.queue_order(order))
        .values("pk", "owner_id", "message_id", *ImageJob.PASS_FIELDS)
    )
    window = settings.IMAGEGEN_BATCH_WINDOW
    timing: dict[int, tuple[float, float]] = {}
    taken: list[dict] = []  # the rows in the order the worker will take them
    waiting = 0  # the first row not yet in a pass
    while waiting < len(rows):
        head = rows[waiting]
        batch = [head]
        if max_batch > 1:
            untimed = (rows[index] for index in range(waiting + 1, len(rows)) if rows[index]["pk"] not in timing)
            behind = list(islice(untimed, window))
            batch += fairness.pass_members(
                head, behind, room=max_batch - 1, key=_pass_key, owner=lambda row: row["owner_id"], name=order
            )
        taken += batch
        start, lane = lanes[0]
        if lane_model[lane] != head["model"]:
            start += loads.get(head["model"], 0.0)
            lane_model[lane] = head["model"]
        done = start + pass_seconds(estimate, head, len(batch))
        for row in batch:
            timing[row["pk"]] = (start, done)
        heapq.heapreplace(lanes, (done, lane))
        while waiting < len(rows) and rows[waiting]["pk"] in timing:
            waiting += 1
    if order == fairness.FIFO:
        taken = rows  # positions stay the FIFO ranks
    return [
        {
            "job_id": row["pk"],
            "owner_id": row["owner_id"],
            "message_id": row["message_id"],
            "position": position,
            "estimated_start_seconds": round(timing[row["pk"]][0]),
            "estimated_seconds": round(timing[row["pk"]][1]),
        }
        for position, row in enumerate(taken, start=1)
    ]


def load_seconds(workers) -> dict[str, float]:
    """Model -> how long loading it takes, as the workers (rows as dicts) last measured it."""
    found: dict[str, float] = {}
    for worker in workers:
        for model, seconds in (worker.get("load_seconds") or {}).items():
            found[model] = max(found.get(model, 0.0), float(seconds))
    return found


def job_remaining_seconds(*, job: ImageJob, estimate=None) -> int:
    estimate = estimate or duration_estimator()
    return round(pass_seconds(estimate, job, job.batch_size) * (100 - job.progress) / 100)


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


def job_live_states(*, jobs: list[ImageJob], etas: bool = True) -> dict[int, dict]:
    """Position and ETA of each pending job in `jobs`, keyed by job id (a few queries in all).

    What every card is rendered with: the page, a card fetched again, a new prompt's
    cards. Without `etas` only the positions are read (a count for each queued job,
    for a reply that must not read the whole queue); its ETAs come with the next
    queue broadcast.
    """
    pending = [job for job in jobs if job.status in ImageJob.PENDING]
    if not pending:
        return {}
    if not etas:
        return {
            job.pk: {"position": queue_position(job=job), "estimated_start_seconds": None, "estimated_seconds": None}
            for job in pending
        }
    estimate = duration_estimator()
    queue = {entry["job_id"]: entry for entry in queue_eta()} if any(j.status == Status.QUEUED for j in pending) else {}
    running_on = {}
    if any(job.status == Status.PROCESSING for job in pending):
        rows = Worker.objects.values("name", "loaded_model", "load_seconds")
        running_on = {worker["name"]: worker for worker in rows}
    loads = load_seconds(running_on.values())
    states = {}
    for job in pending:
        entry = queue.get(job.pk, {})
        if job.status == Status.QUEUED:
            eta = entry.get("estimated_seconds")
        else:
            eta = job_remaining_seconds(job=job, estimate=estimate)
            worker = running_on.get(job.worker)
            if worker is not None and worker["loaded_model"] != job.model:
                eta += round(loads.get(job.model, 0.0))  # its model is loading
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


def recent_passes(*, limit: int = 5) -> list[tuple[str, list[int]]]:
    """The latest finished passes that made several images: (batch name, job ids), newest first."""
    recent = (
        ImageJob.objects.filter(batch_size__gt=1, finished_at__isnull=False)
        .order_by("-finished_at")
        .values_list("batch", flat=True)[: limit * 8]
    )
    names = list(dict.fromkeys(recent))[:limit]
    members: dict[str, list[int]] = {name: [] for name in names}
    for batch, job_id in ImageJob.objects.filter(batch__in=names).order_by("sequence").values_list("batch", "pk"):
        members[batch].append(job_id)
    return list(members.items())


def workers_dead(*, now: datetime | None = None) -> dict[str, str]:
    """Worker name -> why it is dead, for every worker row that is: silent for
    IMAGEGEN_WORKER_DEAD_AFTER_SECONDS wherever it ran, or on this machine with its
    process gone. One query for the silent ones and one for this host's few rows."""
    import socket

    from django.utils import timezone

    from generation.workers import process_is_gone

    now = now or timezone.now()
    silent = list(Worker.objects.filter(last_seen_at__lt=Worker.live_since(now)).values_list("name", flat=True))
    dead = {name: "stopped beating" for name in silent} if silent and silence_means_dead() else {}
    here = Worker.objects.filter(host=socket.gethostname(), last_seen_at__gte=Worker.live_since(now))
    for name, host, pid in here.values_list("name", "host", "pid"):
        if process_is_gone(host, pid):
            dead[name] = "died"
    return dead


def silence_means_dead() -> bool:
    """Whether a stale beat or heartbeat can be trusted to mean a dead worker or a stuck job.

    While the database is away nobody can beat or write a heartbeat. For
    IMAGEGEN_WORKER_DEAD_AFTER_SECONDS plus a beat after it answers again (to this
    process, and on PostgreSQL since the server started), silence proves nothing:
    a worker that is alive beats again within that time.
    """
    window = settings.IMAGEGEN_WORKER_DEAD_AFTER_SECONDS + settings.IMAGEGEN_WORKER_BEAT_SECONDS
    if not OUTAGES.settled(DATABASE, seconds=window):
        return False
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")
            return float(cursor.fetchone()[0]) >= window
    return True


def workers_live(*, now: datetime | None = None) -> QuerySet[Worker]:
    """Worker processes that beat within IMAGEGEN_WORKER_DEAD_AFTER_SECONDS."""
    from django.utils import timezone

    now = now or timezone.now()
    return Worker.objects.filter(last_seen_at__gte=Worker.live_since(now))
