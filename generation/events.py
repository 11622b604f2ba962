"""The only place job events are sent from.

Every event is a JSON object with a `type` and a fixed set of fields, sent to the
owner's group after the surrounding transaction commits, so a browser never hears
of a state the database does not hold (the same idea as Zulip's
`send_event_on_commit`).
"""

import json
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

# type -> the fields every event of that type carries (besides `type`).
SCHEMA: dict[str, tuple[str, ...]] = {
    "job.queued": ("job_id", "message_id", "conversation_id", "status", "position"),
    "job.position": ("job_id", "position", "estimated_start_seconds", "estimated_seconds"),
    "job.progress": ("job_id", "status", "step", "total", "progress"),
    "job.preview": ("job_id", "step", "image"),
    "job.complete": ("job_id", "status", "image_url"),
    "job.error": ("job_id", "status", "error"),
    "job.cancelled": ("job_id", "status"),
    "service.status": ("state", "message"),
    "snapshot": ("jobs", "service"),
    "error": ("message",),
}

SERVICE_GROUP = "service"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def build_event(event_type: str, **fields: Any) -> dict[str, Any]:
    """An event dict, checked against the schema and round-tripped through JSON."""
    expected = SCHEMA.get(event_type)
    if expected is None:
        raise ValueError(f"Unknown event type {event_type!r}")
    missing = set(expected) - set(fields)
    extra = set(fields) - set(expected)
    if missing or extra:
        raise ValueError(f"{event_type}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    return json.loads(json.dumps({"type": event_type, **fields}, allow_nan=False))


def _send_many(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Send (group, event) pairs in order, in one trip into the event loop."""
    layer = get_channel_layer()
    if layer is None or not messages:
        return

    async def send_all() -> None:
        for group, event in messages:
            try:
                await layer.group_send(group, {"type": "event.forward", "event": event})
            except Exception:
                # A lost push is repaired by the snapshot on the next (re)connect; the
                # job itself must never fail because a browser could not be told.
                logger.exception("Could not send %s to %s", event["type"], group)

    async_to_sync(send_all)()


def send_to_user(user_id: int, event_type: str, **fields: Any) -> None:
    event = build_event(event_type, **fields)
    transaction.on_commit(lambda: _send_many([(user_group(user_id), event)]))


def send_to_users(events: list[tuple[int, str, dict[str, Any]]]) -> None:
    """Several (user id, type, fields) events, sent together after commit (a broadcast)."""
    messages = [(user_group(user_id), build_event(event_type, **fields)) for user_id, event_type, fields in events]
    transaction.on_commit(lambda: _send_many(messages))


def send_to_all(event_type: str, **fields: Any) -> None:
    event = build_event(event_type, **fields)
    transaction.on_commit(lambda: _send_many([(SERVICE_GROUP, event)]))
