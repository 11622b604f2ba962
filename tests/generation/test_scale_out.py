"""Three `gpu` clusters, as on three machines, share one queue on PostgreSQL + Redis."""

import os
import signal

import pytest
from django.conf import settings
from django.db import connection, transaction

from chat.models import Message
from chat.services import conversation_create
from generation import selectors, services
from generation.broadcasts import queue_broadcast_run
from generation.models import ImageJob, Worker
from tests.conftest import make_user
from tests.helpers import start_cluster, stop, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql" or not settings.REDIS_URL,
        reason="several clusters share a queue on PostgreSQL + Redis; SQLite has one writer and one cluster per file",
    ),
]

MACHINES = ("a", "b", "c")
USERS = ("alice", "bob", "carol", "dave", "erin")
JOBS_PER_USER = 18


def _cluster(tmp_path, machine):
    # The same device name on every machine: only a lock dir of its own lets each one run.
    return start_cluster(
        "gpu",
        tmp_path,
        tmp_path / f"gpu-{machine}.log",
        IMAGEGEN_DEVICE="cuda:0",
        IMAGEGEN_LOCK_DIR=str(tmp_path / f"machine-{machine}" / "locks"),
        IMAGEGEN_GENERATOR="bench.zero_cost.ZeroCostGenerator",
        IMAGEGEN_BENCH_GPU_MS="300",  # a busy device, a free CPU
        IMAGEGEN_WORKER_BEAT_SECONDS="0.5",
        LOG_LEVEL="WARNING",
    )


def _queue_snapshot():
    """Positions and the table's queued order, read from one snapshot of the database."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        positions = selectors.queue_positions()
        order = list(ImageJob.objects.filter(status="queued").order_by("sequence").values_list("pk", flat=True))
        copies = dict(
            Message.objects.filter(image_jobs__status="queued").values_list(
                "image_jobs__pk", "metadata__queue_position"
            )
        )
    return positions, order, copies


def _log_on_failure(tmp_path):
    for log in sorted(tmp_path.glob("*.log")):
        print(f"--- {log.name}\n{log.read_text()[-3000:]}")


def test_three_clusters_run_every_job_once_with_global_positions_and_lose_nothing_when_one_dies(settings, tmp_path):
    settings.IMAGEGEN_MAX_PENDING_PER_USER = JOBS_PER_USER
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = JOBS_PER_USER
    settings.IMAGEGEN_WORKER_DEAD_AFTER_SECONDS = 2  # the guard below runs in this process
    chats = [conversation_create(owner=make_user(name), title="pictures") for name in USERS]
    clusters = {machine: _cluster(tmp_path, machine) for machine in MACHINES}
    try:
        wait_for(lambda: selectors.workers_live().count() == 3, timeout=30, message="three workers registered")
        # Which cluster each worker process belongs to (its process group).
        machine_of = {
            w.name: next(m for m, c in clusters.items() if os.getpgid(w.pid) == c.pid) for w in Worker.objects.all()
        }
        jobs = [
            services.job_submit(user=chat.owner, conversation=chat, prompt=f"{chat.owner} {n}", steps=2).jobs[0]
            for n in range(JOBS_PER_USER)
            for chat in chats
        ]
        assert [j.sequence for j in jobs] == sorted(j.sequence for j in jobs)

        # While the three run: one global queue, positions 1..n in the table's order.
        wait_for(lambda: ImageJob.objects.filter(status="complete").count() >= 6, timeout=30, message="six done")
        positions, order, _ = _queue_snapshot()
        assert 20 < len(order) < len(jobs)
        assert positions == {pk: n + 1 for n, pk in enumerate(order)}
        # A broadcast's copies in the messages are global too: consecutive, in queue order.
        queue_broadcast_run()
        positions, order, copies = _queue_snapshot()
        assert positions == {pk: n + 1 for n, pk in enumerate(order)}
        shown = [copies[pk] for pk in order if copies[pk] is not None]
        first = shown[0]
        assert shown == list(range(first, first + len(shown))) and len(shown) > 10

        # Machine b loses power in the middle of a job, with some of its work done.
        on_b = [name for name, machine in machine_of.items() if machine == "b"]
        on_b_jobs = ImageJob.objects.filter(worker__in=on_b)
        victim = wait_for(
            lambda: on_b_jobs.filter(status="complete").count() >= 3 and on_b_jobs.filter(status="processing").first(),
            timeout=20,
            interval=0.05,
            message="machine b running a job after three",
        )
        stop(clusters["b"], sig=signal.SIGKILL)
        assert ImageJob.objects.filter(status="queued").exists(), "the kill came after the queue emptied"
        # The live workers' beats see at once that b's process is gone (same host) and put
        # its jobs back; the guard, which the maintenance cluster runs every minute, finds
        # what they left, if anything, and fails nothing.
        result = services.jobs_expire_stuck()
        assert not result["failed"]
        wait_for(
            lambda: ImageJob.objects.filter(status="complete").count() == len(jobs),
            timeout=40,
            message="every job complete",
        )
    except AssertionError:
        _log_on_failure(tmp_path)
        raise
    finally:
        for cluster in clusters.values():
            stop(cluster, sig=signal.SIGKILL)

    done = list(ImageJob.objects.all())
    assert len(done) == len(jobs) and all(job.status == "complete" and job.image for job in done)
    # Exactly once: only the jobs the killed worker was running ran twice, once there and
    # once elsewhere.
    left_on_b = {job.pk for job in done if job.attempts > 1}
    assert victim.pk in left_on_b
    assert all(
        job.attempts == 2 and f"Worker {victim.worker} died" in job.error_detail for job in done if job.pk in left_on_b
    )
    # Each records the worker that finished it; the work was spread over the machines.
    assert all(job.worker in machine_of for job in done)
    assert {machine_of[job.worker] for job in done} == {"a", "b", "c"}
    assert all(machine_of[job.worker] != "b" for job in done if job.pk in left_on_b)
