import json

import pytest
from django.db import transaction

from generation import events
from tests.helpers import drain as _drain
from tests.helpers import listen as _listen

SAMPLES = {
    "job.queued": dict(job_id=1, message_id=2, conversation_id=3, status="queued"),
    "queue.positions": dict(
        version=3, jobs=[{"job_id": 1, "position": 2, "estimated_start_seconds": 30, "estimated_seconds": 45}]
    ),
    "job.progress": dict(job_id=1, status="processing", step=5, total=20, progress=25),
    "job.preview": dict(job_id=1, step=5, image="data:image/jpeg;base64,AAAA"),
    "job.downloading": dict(job_id=1, model="flux"),
    "job.loading": dict(job_id=1, model="flux"),
    "job.complete": dict(job_id=1, status="complete", image_url="/jobs/1/image.png"),
    "job.error": dict(job_id=1, status="error", error="Image generation timed out after 180 s. Please try again."),
    "job.cancelled": dict(job_id=1, status="cancelled"),
    "service.status": dict(state="open", message="Image generation is paused."),
    "snapshot": dict(jobs=[{"job_id": 1, "position": 1}], service={"state": "closed", "message": ""}, version=3),
    "error": dict(message="Messages must be small JSON text."),
}


def test_every_event_type_has_a_sample():
    assert set(SAMPLES) == set(events.SCHEMA)


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_every_event_round_trips_through_json_with_its_type(event_type):
    event = events.build_event(event_type, **SAMPLES[event_type])
    assert event["type"] == event_type
    assert json.loads(json.dumps(event)) == event
    assert set(event) == {"type", *events.SCHEMA[event_type]}


def test_a_payload_that_is_not_json_fails_loudly():
    with pytest.raises(TypeError):
        events.build_event("job.cancelled", job_id=object(), status="cancelled")
    with pytest.raises(ValueError):
        events.build_event("job.progress", job_id=1, status="processing", step=1, total=2, progress=float("nan"))


def test_missing_extra_or_unknown_fields_fail_loudly():
    with pytest.raises(ValueError, match="missing"):
        events.build_event("job.cancelled", job_id=1)
    with pytest.raises(ValueError, match="unexpected"):
        events.build_event("job.cancelled", job_id=1, status="cancelled", secret="x")
    with pytest.raises(ValueError, match="Unknown event type"):
        events.build_event("job.exploded", job_id=1)


@pytest.mark.django_db(transaction=True)
def test_events_are_sent_only_after_the_transaction_commits():
    layer, channel = _listen(events.user_group(7))

    with transaction.atomic():
        events.send_to_user(7, "job.cancelled", job_id=1, status="cancelled")
        assert _drain(layer, channel) == []
    assert _drain(layer, channel) == [{"type": "job.cancelled", "job_id": 1, "status": "cancelled"}]


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_sends_nothing():
    layer, channel = _listen(events.user_group(7))
    with pytest.raises(RuntimeError), transaction.atomic():
        events.send_to_user(7, "job.cancelled", job_id=1, status="cancelled")
        raise RuntimeError("rolled back")
    assert _drain(layer, channel) == []


@pytest.mark.django_db(transaction=True)
def test_a_broadcast_reaches_each_user_in_order_after_commit_and_only_theirs():
    seven, eight = _listen(events.user_group(7)), _listen(events.user_group(8))
    with transaction.atomic():
        events.send_to_users(
            [
                (7, "queue.positions", {"version": 1, "jobs": [{"job_id": 1}]}),
                (8, "queue.positions", {"version": 1, "jobs": [{"job_id": 2}]}),
                (7, "queue.positions", {"version": 2, "jobs": [{"job_id": 3}]}),
            ]
        )
        assert _drain(*seven) == []
    assert [(e["version"], e["jobs"][0]["job_id"]) for e in _drain(*seven)] == [(1, 1), (2, 3)]
    assert [(e["version"], e["jobs"][0]["job_id"]) for e in _drain(*eight)] == [(1, 2)]


@pytest.mark.django_db(transaction=True)
def test_one_failed_push_in_a_broadcast_does_not_stop_the_others(monkeypatch):
    layer, channel = _listen(events.user_group(8))
    real_send = layer.group_send
    failed = []

    async def flaky(group, message):
        if group == events.user_group(7):
            failed.append(group)
            raise ConnectionError("layer hiccup")
        await real_send(group, message)

    monkeypatch.setattr(layer, "group_send", flaky)
    positions = SAMPLES["queue.positions"]
    events.send_to_users([(7, "queue.positions", positions), (8, "queue.positions", positions)])
    assert failed == ["user.7"]
    assert [e["type"] for e in _drain(layer, channel)] == ["queue.positions"]


def test_a_send_that_times_out_is_cancelled_so_it_cannot_arrive_late(monkeypatch):
    import asyncio
    import threading

    monkeypatch.setattr(events, "SEND_TIMEOUT", 0.1)
    cancelled = threading.Event()

    async def slow_layer():
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sender = events._SenderLoop()
    with pytest.raises(TimeoutError):
        sender.run(slow_layer)
    assert cancelled.wait(2), "the late send is still running"

    arrived = []

    async def quick():
        arrived.append("next")

    sender.run(quick)
    assert arrived == ["next"]
