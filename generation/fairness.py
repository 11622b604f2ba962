"""The order the worker takes queued jobs in: first come, first served, or fair shares.

IMAGEGEN_QUEUE_POLICY picks it. Under `fifo` (the default) the queue is the order of
submission (`ImageJob.sequence`). Under `fair` each user gets GPU time in proportion
to their weight (`QueueWeight`, 1 by default) while they have jobs waiting. This is
start-time fair queuing, with jobs as packets and their estimated GPU seconds as
sizes:

- A job queued by a user starts its turn (its `fair_tag`) at the later of the queue's
  virtual time and the end of the turn of the user's latest job, waiting or run (one
  cancelled before it ran gives its turn back), and its turn lasts
  its estimated GPU seconds divided by the user's weight (`fair_cost`). A prompt's
  images take consecutive turns.
- The worker takes the lowest tag first (ties in submission order), and the queue's
  virtual time becomes the tag of the job it took in turn (`QueueClock`).
- So a user who was idle banks no credit, and a newcomer starts at the virtual time:
  behind at most one job of each user who is waiting, never ahead of everyone.
- A job put back in its place (a transient error, a lost or stopping worker) keeps
  its tag and goes first; Try again takes a new tag, as a new job would.

Both policies read one index (`job_queue_fifo`, `job_queue_fair`) in their order, so
a claim reads the head and its batching window, whatever the queue's depth. An admin's
"run next" (`priority`) goes ahead of both orders. Jobs queued under `fifo` have no
tag: switching to `fair` runs them first, in their order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from django.conf import settings
from django.db.models import F, Max, Q

from generation.models import ImageJob, QueueClock, QueueWeight

FIFO, FAIR = "fifo", "fair"
POLICIES = {FIFO: "first come, first served", FAIR: "fair shares of GPU time"}
# The shortest turn: a tag must grow with every job of a user.
MIN_COST = 1e-3

Row = TypeVar("Row")


def policy() -> str:
    return settings.IMAGEGEN_QUEUE_POLICY


def describe(name: str | None = None) -> str:
    """The policy in force, in words: 'fair (fair shares of GPU time)'."""
    name = name or policy()
    return f"{name} ({POLICIES[name]})"


def queue_order(name: str | None = None) -> tuple[str, ...]:
    """The `order_by` of queued jobs in the order the worker takes them."""
    if (name or policy()) == FAIR:
        return ("-priority", "fair_tag", "sequence")
    return ("-priority", "sequence")


def ahead_of(job: ImageJob, name: str | None = None) -> Q:
    """Jobs that come before `job` in the queue's order (to count them)."""
    same = Q(priority=job.priority)
    if (name or policy()) == FAIR:
        later = Q(fair_tag__lt=job.fair_tag) | Q(fair_tag=job.fair_tag, sequence__lt=job.sequence)
    else:
        later = Q(sequence__lt=job.sequence)
    return Q(priority__gt=job.priority) | (same & later)


def virtual_time() -> float:
    return QueueClock.objects.filter(pk=1).values_list("virtual_time", flat=True).first() or 0.0


def tags(owner_id: int, costs: Sequence[float]) -> list[tuple[float, float]]:
    """(fair_tag, fair_cost) for new jobs of a user costing `costs` GPU seconds, in order.

    The caller holds the user's row lock (`services._lock_user`), so one user's tags
    are handed out one submission at a time and never repeat.
    """
    share = QueueWeight.objects.filter(owner_id=owner_id).values_list("weight", "ran_until").first()
    weight, ran_until = share or (1.0, 0.0)
    pending = ImageJob.objects.filter(owner_id=owner_id, status__in=ImageJob.PENDING)
    last_end = pending.aggregate(end=Max(F("fair_tag") + F("fair_cost")))["end"]
    start = max(virtual_time(), ran_until, last_end or 0.0)
    found = []
    for cost in costs:
        turn = max(cost / weight, MIN_COST)
        found.append((start, turn))
        start += turn
    return found


def advance(tag: float) -> None:
    """The worker took a job with this tag in its turn: the virtual time moves up to it."""
    if not QueueClock.objects.filter(pk=1, virtual_time__lt=tag).update(virtual_time=tag):
        QueueClock.objects.get_or_create(pk=1, defaults={"virtual_time": tag})


def ran(job: ImageJob) -> None:
    """The worker took `job`: its owner's next turn starts after its turn, even once it
    has ended (a queued job cancelled before it ran gives its turn back)."""
    end = job.fair_tag + job.fair_cost
    if not QueueWeight.objects.filter(owner_id=job.owner_id, ran_until__lt=end).update(ran_until=end):
        QueueWeight.objects.get_or_create(owner_id=job.owner_id, defaults={"ran_until": end})


def back_of_queue() -> float:
    """A tag behind every queued job (a job moved to the end)."""
    found = ImageJob.objects.filter(status=ImageJob.Status.QUEUED).aggregate(last=Max("fair_tag"))["last"]
    return max(found or 0.0, virtual_time())


def pass_members(
    head: Row,
    behind: Sequence[Row],
    *,
    room: int,
    key: Callable[[Row], tuple],
    owner: Callable[[Row], int],
    name: str | None = None,
) -> list[Row]:
    """Which of the jobs `behind` the head (its window, in queue order) share its pass.

    Those that can (`key` equal to the head's), in queue order; under `fair`, other
    users' jobs before the head's owner's own, so a pass does not give one user the
    GPU time of several turns. At most `room`.
    """
    same = [row for row in behind if key(row) == key(head)]
    if (name or policy()) == FAIR:
        same = [row for row in same if owner(row) != owner(head)] + [row for row in same if owner(row) == owner(head)]
    return same[: max(room, 0)]


def gpu_shares(*, now: datetime, hours: float = 1.0) -> list[dict]:
    """Each user's GPU seconds over the last `hours` and their share of the total.

    A job's GPU time is its run (started to finished, or to now while running) inside
    the period, divided among the images of its pass. Largest share first.
    """
    since = now - timedelta(hours=hours)
    rows = (
        ImageJob.objects.filter(started_at__isnull=False)
        .filter(Q(finished_at__gte=since) | Q(status=ImageJob.Status.PROCESSING))
        .values_list("owner_id", "owner__username", "started_at", "finished_at", "batch_size")
    )
    seconds: dict[tuple[int, str], float] = {}
    for owner_id, username, started, finished, batch in rows:
        ran = ((finished or now) - max(started, since)).total_seconds()
        seconds[(owner_id, username)] = seconds.get((owner_id, username), 0.0) + max(ran, 0.0) / max(batch, 1)
    total = sum(seconds.values())
    weights = dict(
        QueueWeight.objects.filter(owner_id__in=[key[0] for key in seconds]).values_list("owner_id", "weight")
    )
    shares = [
        {
            "owner_id": owner_id,
            "username": username,
            "seconds": spent,
            "share": spent / total if total else 0.0,
            "weight": weights.get(owner_id, 1.0),
        }
        for (owner_id, username), spent in seconds.items()
    ]
    return sorted(shares, key=lambda entry: -entry["seconds"])
