"""The only place job events are sent from.

Every event is a JSON object with a `type` and a fixed set of fields, sent to the
owner's group after the surrounding transaction commits, so a browser never hears
of a state the database does not hold (the same idea as Zulip's
`send_event_on_commit`).
"""

import asyncio
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.db import transaction
from redis.exceptions import TimeoutError as RedisTimeoutError

from generation.outages import OUTAGES, REDIS

logger = logging.getLogger(__name__)

# type -> the fields every event of that type carries (besides `type`).
SCHEMA: dict[str, tuple[str, ...]] = {
    "job.queued": ("job_id", "message_id", "conversation_id", "status"),
    # One per user with queued jobs, all of them: {job_id, position, estimated_start_seconds,
    # estimated_seconds} each. A page ignores one older than the last version it applied.
    "queue.positions": ("version", "jobs"),
    "job.progress": ("job_id", "status", "step", "total", "progress"),
    "job.preview": ("job_id", "step", "image"),
    # The job's model is being downloaded before it can start.
    "job.downloading": ("job_id", "model"),
    # The job's model is being loaded (compiled too, in the speed mode) before it can start.
    "job.loading": ("job_id", "model"),
    "job.complete": ("job_id", "status", "image_url"),
    "job.error": ("job_id", "status", "error"),
    "job.cancelled": ("job_id", "status"),
    "service.status": ("state", "message"),
    "snapshot": ("jobs", "service", "version"),
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


SEND_TIMEOUT = 10  # seconds a sender waits for the channel layer before giving up


class LayerTimeout(RedisTimeoutError, TimeoutError):
    """Redis did not answer a send in time: an outage of Redis (generation.outages)."""


class _SenderLoop:
    """One event loop per process, on a thread of its own, for sends to Redis from sync code.

    `async_to_sync` outside a running loop builds a new loop per call, and
    channels-redis a new connection pool per loop: about 2 ms a send. A worker sends
    an event every few steps, so it keeps one loop and one pool instead (about 0.3 ms).
    Only for channels-redis, whose sends are pure asyncio: the embedded layer's hop to
    a database thread could wait on the very thread that is waiting here.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # Also in a forked child: the parent's loop thread does not exist there.
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, make: Callable[[], Awaitable[None]]) -> None:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="event-sender", daemon=True).start()
            loop = self._loop
        future = asyncio.run_coroutine_threadsafe(make(), loop)
        try:
            future.result(timeout=SEND_TIMEOUT)
        except TimeoutError as exc:
            # Given up: cancelled, so a late send cannot overtake the next ones.
            future.cancel()
            raise LayerTimeout(f"the channel layer did not answer within {SEND_TIMEOUT} s") from exc


_sender = _SenderLoop()
os.register_at_fork(after_in_child=_sender.reset)


def _send_many(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Send (group, event) pairs in order, in one trip into an event loop."""
    layer = get_channel_layer()
    if layer is None or not messages:
        return

    sent = []

    async def send_all() -> None:
        for group, event in messages:
            try:
                await layer.group_send(group, {"type": "event.forward", "event": event})
            except Exception as exc:
                # A lost push is repaired by the snapshot on the next (re)connect; the
                # job itself must never fail because a browser could not be told.
                _not_sent(exc, f"Could not send {event['type']} to {group}")
            else:
                sent.append(True)

    try:
        if isinstance(layer, RedisChannelLayer):
            _sender.run(send_all)
            if sent:
                OUTAGES.answered(REDIS)
        else:
            async_to_sync(send_all)()
    except Exception as exc:
        _not_sent(exc, f"Could not send {len(messages)} event(s)")


def _not_sent(exc: Exception, what: str) -> None:
    """An outage of the layer is logged once (generation.outages); anything else each time."""
    if OUTAGES.failed(exc, doing="sending events") is None:
        logger.error("%s", what, exc_info=exc)


def send_to_user(user_id: int, event_type: str, **fields: Any) -> None:
    event = build_event(event_type, **fields)
    transaction.on_commit(lambda: _send_many([(user_group(user_id), event)]), robust=True)


def send_to_users(events: list[tuple[int, str, dict[str, Any]]]) -> None:
    """Several (user id, type, fields) events, sent together after commit (a broadcast)."""
    messages = [(user_group(user_id), build_event(event_type, **fields)) for user_id, event_type, fields in events]
    transaction.on_commit(lambda: _send_many(messages), robust=True)


def send_to_all(event_type: str, **fields: Any) -> None:
    event = build_event(event_type, **fields)
    transaction.on_commit(lambda: _send_many([(SERVICE_GROUP, event)]), robust=True)
