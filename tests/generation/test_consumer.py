import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chat.services import conversation_create
from generation import services
from generation.broadcasts import queue_broadcast_run
from generation.models import ImageJob
from imagegen_site.asgi import application
from tests.conftest import make_user
from tests.fakes import FakeGenerator
from tests.helpers import LAYER_DATABASES, run_pass

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.configured_layer,
    pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES),
]

ORIGIN = (b"origin", b"http://localhost")


@sync_to_async
def _user_with_chat(name):
    user = make_user(name)
    return user, conversation_create(owner=user, title=f"{name}'s")


@sync_to_async
def _session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@sync_to_async
def _submit(user, conversation, prompt):
    return services.job_submit(user=user, conversation=conversation, prompt=prompt, steps=3, width=64, height=64).jobs[
        0
    ]


async def _connect(user=None, origin=ORIGIN):
    headers = [origin]
    if user is not None:
        headers.append((b"cookie", await _session_cookie(user)))
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


async def _events_until(communicator, predicate, timeout=10.0):
    """Collect events until one matches `predicate`; fail if none does in time."""
    seen = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"no matching event; got {seen}")
        try:
            event = await communicator.receive_json_from(timeout=remaining)
        except TimeoutError:
            raise AssertionError(f"no matching event; got {seen}") from None
        seen.append(event)
        if predicate(event):
            return seen


async def test_anonymous_connections_are_refused():
    communicator, connected = await _connect(None)
    assert not connected
    await communicator.disconnect()


async def test_connections_from_another_origin_are_refused():
    alice, _ = await _user_with_chat("alice")
    communicator, connected = await _connect(alice, origin=(b"origin", b"http://evil.example"))
    assert not connected
    await communicator.disconnect()


async def test_a_snapshot_of_the_users_active_jobs_arrives_on_connect_and_on_reconnect():
    alice, alice_chat = await _user_with_chat("alice")
    bob, bob_chat = await _user_with_chat("bob")
    await _submit(bob, bob_chat, "bob first")
    a1 = await _submit(alice, alice_chat, "alice one")
    a2 = await _submit(alice, alice_chat, "alice two")

    for _ in range(2):  # connect, then reconnect: the same fresh state each time
        communicator, connected = await _connect(alice)
        assert connected
        snapshot = await communicator.receive_json_from(timeout=5)
        assert snapshot["type"] == "snapshot"
        assert [(job["job_id"], job["status"], job["position"]) for job in snapshot["jobs"]] == [
            (a1.pk, "queued", 2),
            (a2.pk, "queued", 3),
        ]
        assert all(job["estimated_seconds"] >= job["estimated_start_seconds"] >= 0 for job in snapshot["jobs"])
        assert snapshot["service"] == {"state": "closed", "message": ""}
        await communicator.disconnect()


async def test_a_user_receives_only_their_own_job_events():
    alice, alice_chat = await _user_with_chat("alice")
    bob, bob_chat = await _user_with_chat("bob")
    alice_ws, _ = await _connect(alice)
    bob_ws, _ = await _connect(bob)
    await alice_ws.receive_json_from(timeout=5)
    await bob_ws.receive_json_from(timeout=5)

    job = await _submit(alice, alice_chat, "for alice only")

    seen = await _events_until(alice_ws, lambda e: e["type"] == "job.queued")
    assert seen[-1]["job_id"] == job.pk
    assert await bob_ws.receive_nothing(timeout=0.5)
    await alice_ws.disconnect()
    await bob_ws.disconnect()


async def test_positions_move_up_live_when_the_queue_advances(runner_for):
    alice, alice_chat = await _user_with_chat("alice")
    bob, bob_chat = await _user_with_chat("bob")
    first = await _submit(bob, bob_chat, "bob first")
    a1 = await _submit(alice, alice_chat, "alice one")
    a2 = await _submit(alice, alice_chat, "alice two")
    alice_ws, _ = await _connect(alice)
    await alice_ws.receive_json_from(timeout=5)

    runner = runner_for(FakeGenerator())
    assert await sync_to_async(run_pass)(runner) == first
    first_version = await sync_to_async(queue_broadcast_run)()

    seen = await _events_until(alice_ws, lambda e: e["type"] == "queue.positions")
    (broadcast,) = [e for e in seen if e["type"] == "queue.positions"]
    assert broadcast["version"] == first_version
    assert [(job["job_id"], job["position"]) for job in broadcast["jobs"]] == [(a1.pk, 1), (a2.pk, 2)]
    assert not any(e.get("job_id") == first.pk for e in seen), "bob's job is not alice's business"

    assert await sync_to_async(run_pass)(runner) == a1
    seen = await _events_until(alice_ws, lambda e: e["type"] == "job.complete" and e["job_id"] == a1.pk)
    assert {"job.progress"} <= {e["type"] for e in seen}
    second_version = await sync_to_async(queue_broadcast_run)()
    seen = await _events_until(alice_ws, lambda e: e["type"] == "queue.positions")
    assert seen[-1]["version"] > first_version and seen[-1]["version"] == second_version
    assert [(job["job_id"], job["position"]) for job in seen[-1]["jobs"]] == [(a2.pk, 1)]
    metadata = (await ImageJob.objects.select_related("message").aget(pk=a2.pk)).message.metadata
    assert metadata["queue_position"] == 1, "a reload shows the fresh position too"
    await alice_ws.disconnect()


async def test_progress_events_carry_step_total_and_percent_and_end_with_the_completion(runner_for):
    alice, alice_chat = await _user_with_chat("alice")
    submission = await sync_to_async(services.job_submit)(
        user=alice, conversation=alice_chat, prompt="ten steps", steps=10, width=64, height=64
    )
    job = submission.jobs[0]
    alice_ws, _ = await _connect(alice)
    await alice_ws.receive_json_from(timeout=5)

    await sync_to_async(run_pass)(runner_for(FakeGenerator()))

    seen = await _events_until(alice_ws, lambda e: e["type"] == "job.complete")
    progress = [e for e in seen if e["type"] == "job.progress" and e["job_id"] == job.pk]
    # The last step's progress may give way to the completion, which says more.
    assert progress and seen[-1]["type"] == "job.complete"
    for event in progress:
        assert set(event) == {"type", "job_id", "status", "step", "total", "progress"}
        assert (event["status"], event["total"]) == ("processing", 10)
        assert event["progress"] == event["step"] * 100 // 10
    assert [e["progress"] for e in progress] == sorted(e["progress"] for e in progress)
    await alice_ws.disconnect()


async def test_the_socket_answers_sync_with_a_snapshot_and_rejects_bad_messages():
    alice, _ = await _user_with_chat("alice")
    alice_ws, _ = await _connect(alice)
    await alice_ws.receive_json_from(timeout=5)

    await alice_ws.send_json_to({"type": "sync"})
    assert (await alice_ws.receive_json_from(timeout=5))["type"] == "snapshot"

    for bad in ("not json", '{"type": "drop tables"}', "[1, 2]", "x" * 5000):
        await alice_ws.send_to(text_data=bad)
        reply = await alice_ws.receive_json_from(timeout=5)
        assert reply["type"] == "error" and reply["message"]
    await alice_ws.send_to(bytes_data=b"\x00\x01")
    assert (await alice_ws.receive_json_from(timeout=5))["type"] == "error"
    await alice_ws.disconnect()


async def test_a_burst_of_sync_requests_gets_a_few_snapshots_and_a_clear_error_for_the_rest():
    from generation.consumers import SYNC_BURST, SYNC_TOO_OFTEN

    alice, _ = await _user_with_chat("alice")
    communicator, connected = await _connect(alice)
    assert connected
    assert (await communicator.receive_json_from(timeout=5))["type"] == "snapshot"
    for _ in range(30):
        await communicator.send_json_to({"type": "sync"})
    answers = [await communicator.receive_json_from(timeout=5) for _ in range(30)]
    snapshots = [answer for answer in answers if answer["type"] == "snapshot"]
    refused = [answer for answer in answers if answer["type"] == "error"]
    assert SYNC_BURST <= len(snapshots) <= SYNC_BURST + 1  # one more may refill meanwhile
    assert len(refused) == 30 - len(snapshots)
    assert {answer["message"] for answer in refused} == {SYNC_TOO_OFTEN}
    await communicator.disconnect()


def test_the_sync_budget_refills_with_time():
    from generation.consumers import SYNC_BURST, SYNC_REFILL_SECONDS, SyncBudget

    clock = [0.0]
    budget = SyncBudget(clock=lambda: clock[0])
    assert [budget.take() for _ in range(SYNC_BURST + 1)] == [True] * SYNC_BURST + [False]
    clock[0] += SYNC_REFILL_SECONDS
    assert budget.take() and not budget.take()
