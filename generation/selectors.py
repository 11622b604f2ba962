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
from django.utils import timezone

from generation import fairness, texts
from generation.estimates import Estimator, Sample, Speed, time_left
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


def duration_estimator(*, history: int = 200) -> Estimator:
    """How long passes take (`generation.estimates.Estimator`), from recently finished jobs.

    Called as a function (model, width, height, steps, batch=1, kind="txt2img") it
    answers the seconds from a pass's start until its images are stored; `.busy(...)`
    how long the pass holds the device. `steps` are the steps the pass runs (an edit's
    `ImageJob.work_steps`). Each pass of the history is one sample (a job of a batched
    pass took as long as its pass); what a pass held the device for is read from the
    start of the same worker's next pass, where that one started before this one's
    images were stored. A model with no history starts from what its worker measured
    at start-up (`Worker.warmup`), else from any model's history, else from
    IMAGEGEN_DEFAULT_SECONDS_PER_STEP. `.start_latency` is how long a job sent to an
    idle worker took to start (the median of those in the history that were). Two
    queries, whatever the history holds.
    """
    recent = (
        ImageJob.objects.filter(
            status=Status.COMPLETE,
            started_at__isnull=False,
            finished_at__isnull=False,
            stopped_at_step__isnull=True,  # an interrupted job ran fewer steps than it says
        )
        .order_by("-finished_at")
        .values_list(
            "pk",
            "model",
            "kind",
            "width",
            "height",
            "steps",
            "strength",
            "batch_size",
            "batch",
            "worker",
            "created_at",
            "started_at",
            "finished_at",
        )[:history]
    )
    passes: dict[tuple[str, str | int], dict] = {}
    for pk, model, kind, width, height, steps, strength, images, name, worker, created, started, finished in recent:
        shape = (
            model,
            kind,
            width,
            height,
            max(images, 1),
            denoise_steps(steps, strength if kind != TXT2IMG else None),
        )
        one = passes.setdefault((worker, name or pk), {"shape": shape, "created": created, "started": started})
        one["finished"] = max(one.get("finished", finished), finished)
        one["created"] = min(one["created"], created)
    samples: dict[tuple, list[Sample]] = {}
    idle_starts = []
    ordered = sorted(passes.items(), key=lambda item: (item[0][0], item[1]["started"]))
    for index, ((worker, _), one) in enumerate(ordered):
        seconds = max((one["finished"] - one["started"]).total_seconds(), 0.0)
        busy = None
        after = ordered[index + 1] if index + 1 < len(ordered) and worker else None
        if after is not None and after[0][0] == worker:
            # The worker's next pass started while this one's images were being stored:
            # the device was free from then on.
            held = (after[1]["started"] - one["started"]).total_seconds()
            if seconds / 2 <= held < seconds:
                busy = held
            # Submitted to an idle worker: how long it took to start (the doorbell, the claim).
            if after[1]["created"] >= one["finished"]:
                idle_starts.append(max((after[1]["started"] - after[1]["created"]).total_seconds(), 0.0))
        model, kind, width, height, images, steps = one["shape"]
        samples.setdefault(one["shape"], []).append(Sample(width * height * images / 1e6, steps, seconds, busy))
    priors = {}
    for measured in Worker.objects.order_by("-started_at").values_list("warmup", flat=True):
        for model, speed in (measured or {}).items():
            if model not in priors and (known := Speed.from_warm_up(speed)) is not None:
                priors[model] = known
    default = Speed.per_step(settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP, megapixels=512 * 512 / 1e6)
    start = median(idle_starts) if idle_starts else 0.0
    return Estimator(samples=samples, priors=priors, default=default, start_latency=start)


def pass_seconds(estimate, job: dict | ImageJob, batch: int) -> float:
    """What `estimate` says a pass of `batch` jobs like `job` (a row or a job) takes,
    from its start until its images are stored."""
    return estimate(*_pass_shape(job), batch, _get(job, "kind"))


def pass_busy_seconds(estimate: Estimator, job: dict | ImageJob, batch: int) -> float:
    """How long a pass of `batch` jobs like `job` holds the device (what the jobs behind it wait for)."""
    return estimate.busy(*_pass_shape(job), batch, _get(job, "kind"))


def _get(job: dict | ImageJob, field: str):
    return job[field] if isinstance(job, dict) else getattr(job, field)


def _pass_shape(job: dict | ImageJob) -> tuple[str, int, int, int]:
    kind = _get(job, "kind")
    steps = denoise_steps(_get(job, "steps"), _get(job, "strength") if kind != TXT2IMG else None)
    return _get(job, "model"), _get(job, "width"), _get(job, "height"), steps


def eta_seconds(seconds: float) -> float:
    """An ETA as the pages and events carry it: tenths of a second, so a pass under a
    second is not promised in 0 s."""
    return round(seconds, 1) if seconds <= 0 or seconds >= 0.05 else 0.1


def _pass_key(row: dict) -> tuple:
    """`ImageJob.pass_key` of a row read with `.values(*ImageJob.PASS_FIELDS)`."""
    return tuple(row[field] for field in ImageJob.PASS_FIELDS)


def queue_eta(*, now: datetime | None = None, estimate: Estimator | None = None) -> list[dict]:
    """Every queued job with its position and ETA, in the order the worker will take them.

    The live workers are parallel lanes (at least one): each running pass occupies the
    lane that is free soonest for what is left of it, then the queue is cut into
    passes as the workers will claim them (the head and up to the workers' batch size
    less one of the jobs that can share its pass, within IMAGEGEN_BATCH_WINDOW places
    behind it); each pass, in order, starts when the first lane frees and keeps that
    lane for as long as it holds the device (`pass_busy_seconds`: its images are
    stored while the next pass runs). With one worker and no batching that is the sum
    of everything ahead. `estimated_start_seconds` is when a job should start,
    `estimated_seconds` adds its pass's duration until its images are stored (seconds
    until done, in tenths: `eta_seconds`). A running pass holds its lane for what is
    left of it by its start time and its progress (`estimates.time_left`). A worker told
    to stop claims nothing more, so it is no lane. A pass of a model that its lane does
    not hold (none loaded yet, one unloaded when idle, or another) waits for that
    model's load, as long as its last load took.

    The queue's order is the policy's (generation/fairness.py). Positions are ranks in
    it under `fifo`; under `fair` they are the order in which the worker will take the
    jobs, passes included (a job a pass takes along is placed with its head), so they
    are 1..n and equal to the order the jobs start in when nothing new arrives.
    """
    now = now or timezone.now()
    estimate = estimate or duration_estimator()
    fields = ("model", "width", "height", "steps", "kind", "strength")
    live = list(workers_live(now=now).filter(stopping=False).values("max_batch", "loaded_model", "load_seconds"))
    max_batch = max((worker["max_batch"] for worker in live), default=1) or 1
    loads = load_seconds(live)
    # A heap of (the time at which a lane frees, the lane); the smallest is the next to
    # take a pass. A lane holds a model: a pass of another model waits for its load.
    # An idle lane takes its first pass once the doorbell has woken it (`start_latency`).
    lanes = [(estimate.start_latency, lane) for lane in range(max(1, len(live)))]
    lane_model = [worker["loaded_model"] for worker in live] or [""]
    loaded = set(lane_model)
    running: dict[str, dict] = {}
    busy: set[int] = set()  # lanes that hold a running pass
    for job in ImageJob.objects.filter(status=Status.PROCESSING).values(
        "pk", "progress", "batch", "batch_size", "started_at", *fields
    ):
        running.setdefault(job["batch"] or f"job-{job['pk']}", job)  # a pass's jobs move together
    for job in running.values():
        left = time_left(
            pass_busy_seconds(estimate, job, job["batch_size"]),
            elapsed=_elapsed(job["started_at"], now),
            progress=job["progress"],
        )
        if job["model"] not in loaded:
            left += loads.get(job["model"], 0.0)  # its worker is loading it now
        free_at, lane = lanes[0]
        lane_model[lane] = job["model"]
        heapq.heapreplace(lanes, ((free_at if lane in busy else 0.0) + left, lane))
        busy.add(lane)
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
        heapq.heapreplace(lanes, (start + pass_busy_seconds(estimate, head, len(batch)), lane))
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
            "estimated_start_seconds": eta_seconds(timing[row["pk"]][0]),
            "estimated_seconds": eta_seconds(timing[row["pk"]][1]),
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


def job_remaining_seconds(*, job: ImageJob, estimate: Estimator | None = None, now: datetime | None = None) -> float:
    """Seconds until a running job's image is stored, by its start time and its progress."""
    estimate = estimate or duration_estimator()
    total = pass_seconds(estimate, job, job.batch_size)
    return eta_seconds(time_left(total, elapsed=_elapsed(job.started_at, now or timezone.now()), progress=job.progress))


def _elapsed(started_at: datetime | None, now: datetime) -> float | None:
    return None if started_at is None else max((now - started_at).total_seconds(), 0.0)


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
    queued = any(job.status == Status.QUEUED for job in pending)
    queue = {entry["job_id"]: entry for entry in queue_eta(estimate=estimate)} if queued else {}
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
                eta = eta_seconds(eta + loads.get(job.model, 0.0))  # its model is loading
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
    now = now or timezone.now()
    return Worker.objects.filter(last_seen_at__gte=Worker.live_since(now))
