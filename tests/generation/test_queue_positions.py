import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from chat.models import Message
from generation import selectors, services, workers
from generation.broadcasts import queue_broadcast_run
from generation.models import ImageJob, Worker
from tests.conftest import make_user
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


def _finish(job, *, seconds, progress=100, status="complete"):
    started = timezone.now() - timedelta(seconds=seconds)
    ImageJob.objects.filter(pk=job.pk).update(
        status=status, started_at=started, finished_at=started + timedelta(seconds=seconds), progress=progress
    )


def test_without_history_the_eta_uses_the_default_rate(settings, submit):
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 0.5
    submit("one", steps=20, width=512, height=512)
    submit("two", steps=10, width=512, height=512)
    eta = selectors.queue_eta()
    assert [(e["position"], e["estimated_start_seconds"], e["estimated_seconds"]) for e in eta] == [
        (1, 0, 10),
        (2, 10, 15),
    ]


def test_the_eta_comes_from_measured_durations_per_model_and_size(settings, submit):
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 99
    for seconds in (3, 4, 5):  # median 4 s for 20 steps: 0.2 s a step at 512x512
        _finish(submit("history", steps=20, width=512, height=512), seconds=seconds)
    submit("same size", steps=10, width=512, height=512)
    submit("a quarter of the pixels", steps=20, width=256, height=256)

    first, second = selectors.queue_eta()
    assert (first["estimated_start_seconds"], first["estimated_seconds"]) == (0, 2)
    assert (second["estimated_start_seconds"], second["estimated_seconds"]) == (2, 3)


def test_the_running_job_delays_the_queue_by_what_is_left_of_it(settings, submit):
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 1
    running = submit("running", steps=40, width=512, height=512)
    ImageJob.objects.filter(pk=running.pk).update(status="processing", progress=25)
    submit("waiting", steps=10, width=512, height=512)
    (entry,) = selectors.queue_eta()
    assert (entry["position"], entry["estimated_start_seconds"], entry["estimated_seconds"]) == (1, 30, 40)


def _workers(live: int, *, dead: int = 0, stopping: int = 0):
    now = timezone.now()
    for n in range(live + dead + stopping):
        workers.worker_register(name=f"gpu-{n}.example:{100 + n}", device=f"cuda:{n}", now=now)
    long_ago = now - timedelta(minutes=5)
    Worker.objects.filter(name__in=[f"gpu-{n}.example:{100 + n}" for n in range(live, live + dead)]).update(
        last_seen_at=long_ago
    )
    Worker.objects.filter(
        name__in=[f"gpu-{n}.example:{100 + n}" for n in range(live + dead, live + dead + stopping)]
    ).update(stopping=True)


def _starts_and_ends(eta):
    return [(e["position"], e["estimated_start_seconds"], e["estimated_seconds"]) for e in eta]


def test_with_three_live_workers_three_jobs_start_at_once_and_the_next_three_one_job_later(settings, submit):
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 1  # 10 s a job
    _workers(3, dead=2, stopping=1)  # the dead and the stopping ones take no job
    for n in range(6):
        submit(f"job {n}", steps=10, width=512, height=512)

    assert _starts_and_ends(selectors.queue_eta()) == [
        (1, 0, 10),
        (2, 0, 10),
        (3, 0, 10),
        (4, 10, 20),
        (5, 10, 20),
        (6, 10, 20),
    ]


def test_with_one_live_worker_the_eta_sums_everything_ahead(settings, submit):
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 1
    _workers(1, dead=2)
    for n in range(6):
        submit(f"job {n}", steps=10, width=512, height=512)

    assert _starts_and_ends(selectors.queue_eta()) == [(n + 1, 10 * n, 10 * n + 10) for n in range(6)]


def test_running_jobs_hold_their_workers_until_what_is_left_of_them_is_done(settings, submit):
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 1
    _workers(2)
    running = submit("running", steps=40, width=512, height=512)
    ImageJob.objects.filter(pk=running.pk).update(status="processing", progress=25)  # 30 s left
    for n in range(4):
        submit(f"job {n}", steps=10, width=512, height=512)

    # The idle worker takes the first three in turn; the busy one frees at 30 s.
    assert _starts_and_ends(selectors.queue_eta()) == [(1, 0, 10), (2, 10, 20), (3, 20, 30), (4, 30, 40)]


def test_a_broadcast_refreshes_the_position_copies_in_metadata(submit, runner_for):
    first, second, third = submit("1"), submit("2"), submit("3")
    run_pass(runner_for(FakeGenerator()))  # the first leaves the queue
    queue_broadcast_run()
    metadata = {m.pk: m.metadata for m in Message.objects.filter(pk__in=[second.message_id, third.message_id])}
    assert metadata[second.message_id]["queue_position"] == 1
    assert metadata[third.message_id]["queue_position"] == 2
    assert metadata[third.message_id]["estimated_seconds"] >= metadata[second.message_id]["estimated_seconds"]
    assert Message.objects.get(pk=first.message_id).metadata["queue_position"] is None


SUBMITTERS = 24


@pytest.mark.django_db(transaction=True)
def test_concurrent_submissions_get_unique_consecutive_positions(settings):
    """24 threads, each with its own connection, submit at the same moment."""
    settings.IMAGEGEN_MAX_PENDING_PER_USER = SUBMITTERS
    users = [make_user(name) for name in ("alice", "bob", "carol", "dave")]
    chats = {user.pk: services_conversation(user) for user in users}
    barrier = threading.Barrier(SUBMITTERS)
    failures: list[BaseException] = []

    def submit(n: int) -> None:
        user = users[n % len(users)]
        try:
            barrier.wait()
            services.job_submit(
                user=user, conversation=chats[user.pk], prompt=f"job {n}", steps=2, width=64, height=64
            ).jobs[0]
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not failures, failures
    jobs = list(ImageJob.objects.select_related("message").order_by("sequence"))
    assert len(jobs) == SUBMITTERS
    assert len({job.sequence for job in jobs}) == SUBMITTERS
    derived = selectors.queue_positions()
    assert [derived[job.pk] for job in jobs] == list(range(1, SUBMITTERS + 1))
    # After the coalesced broadcast, the copies a reload shows agree.
    queue_broadcast_run()
    jobs = list(ImageJob.objects.select_related("message").order_by("sequence"))
    assert [job.message.metadata["queue_position"] for job in jobs] == list(range(1, SUBMITTERS + 1))


def services_conversation(user):
    from chat.services import conversation_create

    return conversation_create(owner=user, title="burst")
