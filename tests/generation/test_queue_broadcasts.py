"""Queue broadcasts: requested in constant time, coalesced, versioned, one event per user."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_q.brokers import get_broker

from chat.models import Message
from generation import events, selectors
from generation.broadcasts import STALE_REQUEST, queue_broadcast_request, queue_broadcast_run
from generation.models import ImageJob, QueueBroadcast
from tests.conftest import make_user
from tests.fakes import FakeGenerator
from tests.helpers import drain, listen, run_pass


def _pending_broadcasts() -> int:
    return get_broker("maintenance").queue_size()


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_submissions_asks_for_one_broadcast(settings, submit):
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 100
    before = _pending_broadcasts()
    for n in range(12):
        submit(f"burst {n}")
    assert _pending_broadcasts() - before == 1, "one task for the whole burst"

    queue_broadcast_run()
    submit("after the broadcast")
    assert _pending_broadcasts() - before == 2, "a change after a broadcast asks for the next one"


@pytest.mark.django_db(transaction=True)
def test_a_request_whose_task_was_lost_is_made_again(submit):
    submit("waiting")
    QueueBroadcast.objects.filter(pk=1).update(requested_at=timezone.now() - STALE_REQUEST - timedelta(seconds=1))
    assert queue_broadcast_request() is True
    assert queue_broadcast_request() is False


@pytest.mark.django_db(transaction=True)
def test_each_user_gets_one_event_with_all_of_their_queued_jobs(submit, bob_chat, alice):
    a1 = submit("alice 1")
    b1 = submit("bob 1", conversation=bob_chat)
    a2 = submit("alice 2")
    alice_events, bob_events = listen(events.user_group(alice.pk)), listen(events.user_group(bob_chat.owner_id))

    version = queue_broadcast_run()

    (for_alice,) = [e for e in drain(*alice_events) if e["type"] == "queue.positions"]
    (for_bob,) = [e for e in drain(*bob_events) if e["type"] == "queue.positions"]
    assert for_alice["version"] == for_bob["version"] == version
    assert [(j["job_id"], j["position"]) for j in for_alice["jobs"]] == [(a1.pk, 1), (a2.pk, 3)]
    assert [(j["job_id"], j["position"]) for j in for_bob["jobs"]] == [(b1.pk, 2)]
    assert for_alice["jobs"][1]["estimated_start_seconds"] >= for_bob["jobs"][0]["estimated_seconds"]


def test_versions_only_grow(submit):
    submit("one")
    first = queue_broadcast_run()
    second = queue_broadcast_run()
    assert second > first
    assert selectors.queue_version() == second


def test_broadcasts_are_at_least_the_interval_apart(settings, submit, fake_clock):
    settings.IMAGEGEN_BROADCAST_INTERVAL_SECONDS = 0.25
    submit("one")
    queue_broadcast_run(sleep=fake_clock.sleep, now=fake_clock.now)
    queue_broadcast_run(sleep=fake_clock.sleep, now=fake_clock.now)
    assert fake_clock.sleeps == [0.25], "the second waited out the interval"


def test_the_copies_a_reload_shows_are_refreshed_in_one_statement(submit, runner_for):
    jobs = [submit(f"job {n}") for n in range(6)]
    run_pass(runner_for(FakeGenerator()))  # the first leaves the queue

    with CaptureQueriesContext(connection) as queries:
        queue_broadcast_run()

    message_writes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('UPDATE "chat_message"')]
    message_writes += [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE chat_message")]
    assert len(message_writes) == 1
    copies = {m.pk: m.metadata for m in Message.objects.filter(pk__in=[job.message_id for job in jobs])}
    assert [copies[job.message_id].get("queue_position") for job in jobs] == [None, 1, 2, 3, 4, 5]
    assert copies[jobs[0].message_id]["status"] == "complete"


def test_a_copy_is_never_written_onto_a_job_that_moved_on(submit, runner_for):
    """The metadata copy is guarded by the message's own status, checked as the row is written."""
    first, second = submit("first"), submit("second")
    queue_broadcast_run()
    run_pass(runner_for(FakeGenerator()))
    # The broadcast's read saw both queued; the first completed before its write.
    entries = [{**e, "position": e["position"] + 10} for e in selectors.queue_eta()]
    entries.insert(0, {"job_id": first.pk, "message_id": first.message_id, "position": 99, "estimated_seconds": 1})
    from chat.services import message_update_many

    changed = message_update_many(
        updates={
            e["message_id"]: {"queue_position": e["position"], "estimated_seconds": e["estimated_seconds"]}
            for e in entries
        },
        only_if={"status": "queued"},
    )
    assert changed == 1
    assert Message.objects.get(pk=first.message_id).metadata["queue_position"] is None
    assert Message.objects.get(pk=second.message_id).metadata["queue_position"] == 11


def test_the_page_and_the_copies_show_the_ranks_of_the_job_table(client, alice, submit, bob_chat, runner_for):
    jobs = [submit(f"alice {n}") if n % 2 else submit(f"bob {n}", conversation=bob_chat) for n in range(8)]
    runner = runner_for(FakeGenerator())
    run_pass(runner)
    run_pass(runner)
    from generation.services import job_cancel

    job_cancel(job=jobs[4])
    queue_broadcast_run()

    ranks = selectors.queue_positions()
    client.force_login(alice)
    page = client.get(reverse("chat:conversation", args=[jobs[1].conversation_id])).content.decode()
    for job in ImageJob.objects.filter(owner=alice, status="queued"):
        assert f"Position: {ranks[job.pk]}<" in page
        assert Message.objects.get(pk=job.message_id).metadata["queue_position"] == ranks[job.pk]


@pytest.mark.django_db(transaction=True)
def test_concurrent_broadcasts_and_submissions_leave_exact_copies(settings):
    """Threads submit while others broadcast: after a last broadcast every copy is exact."""
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 100
    from chat.services import conversation_create
    from generation.services import job_submit

    users = [make_user(name) for name in ("ann", "ben", "cid")]
    chats = {user.pk: conversation_create(owner=user, title="race") for user in users}
    failures: list[BaseException] = []
    barrier = threading.Barrier(5)

    def submitter(user):
        try:
            barrier.wait()
            for n in range(8):
                job_submit(user=user, conversation=chats[user.pk], prompt=f"{n}", steps=2, width=64, height=64).jobs[0]
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    def broadcaster():
        try:
            barrier.wait()
            for _ in range(6):
                queue_broadcast_run()
        except BaseException as exc:
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submitter, args=(user,)) for user in users]
    threads += [threading.Thread(target=broadcaster) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not failures, failures
    queue_broadcast_run()
    ranks = selectors.queue_positions()
    copies = dict(ImageJob.objects.values_list("pk", "message__metadata__queue_position"))
    assert len(ranks) == 24
    assert copies == ranks


@pytest.mark.django_db(transaction=True)
def test_a_long_queue_refreshes_the_messages_copy_at_a_bounded_rate_and_never_leaves_it_stale(
    monkeypatch, submit, alice
):
    from generation import broadcasts, services

    # Scaled down: beyond 2 jobs the copy is written at most 1 row a second.
    monkeypatch.setattr(broadcasts, "COPY_EVERY_BROADCAST", 2)
    monkeypatch.setattr(broadcasts, "COPY_ROWS_PER_SECOND", 1)
    monkeypatch.setattr(broadcasts, "_copied_at", None)
    jobs = [submit(f"waiting {n}") for n in range(4)]
    start = timezone.now()

    def broadcast_at(seconds):
        return queue_broadcast_run(now=lambda: start + timedelta(seconds=seconds), sleep=lambda _: None)

    def copied_position(job):
        return Message.objects.get(pk=job.message_id).metadata["queue_position"]

    broadcast_at(0)
    assert [copied_position(job) for job in jobs] == [1, 2, 3, 4]

    services.job_cancel(job=jobs[0])
    alice_events = listen(events.user_group(alice.pk))
    broadcast_at(0.5)  # 3 waiting: a copy is due 1 s after the last one
    (live,) = [e for e in drain(*alice_events) if e["type"] == "queue.positions"]
    assert [j["position"] for j in live["jobs"]] == [1, 2, 3], "the live positions never wait"
    assert copied_position(jobs[1]) == 2, "the copy waits"
    assert QueueBroadcast.objects.get(pk=1).requested_at is not None, "and a later broadcast is owed"

    broadcast_at(1.5)
    assert [copied_position(job) for job in jobs[1:]] == [1, 2, 3]
