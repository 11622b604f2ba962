"""The WebSocket a logged-in user's pages connect to, for their own job events."""

import json
import time

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from generation import events, selectors
from generation.outages import DATABASE, OUTAGES

MAX_MESSAGE_BYTES = 1024
SYNC = "sync"
# A snapshot costs several queries: a connection gets SYNC_BURST at once, then one
# more every SYNC_REFILL_SECONDS. The page sends none (it gets one on each connect).
SYNC_BURST = 3
SYNC_REFILL_SECONDS = 1.0
SYNC_TOO_OFTEN = f"Too many sync requests: at most one every {SYNC_REFILL_SECONDS:g} s after the first {SYNC_BURST}."
# The close code when the snapshot cannot be read (the database is away): the page
# reconnects with backoff and gets its snapshot then.
CLOSE_TRY_AGAIN = 4503


class SyncBudget:
    """A token bucket per connection; asking costs no query."""

    def __init__(self, *, clock=time.monotonic):
        self.clock = clock
        self.tokens = float(SYNC_BURST)
        self.checked_at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(SYNC_BURST, self.tokens + (now - self.checked_at) / SYNC_REFILL_SECONDS)
        self.checked_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def parse_client_message(text_data: str | None, bytes_data: bytes | None) -> dict | str:
    """Check what a browser sent: SYNC for a valid request, else an error event to answer."""
    if bytes_data is not None or text_data is None:
        return events.build_event("error", message="Send text, not binary frames.")
    if len(text_data.encode("utf-8", errors="replace")) > MAX_MESSAGE_BYTES:
        return events.build_event("error", message=f"Messages are at most {MAX_MESSAGE_BYTES} bytes.")
    try:
        content = json.loads(text_data)
    except ValueError:
        return events.build_event("error", message="Messages must be JSON.")
    if isinstance(content, dict) and content.get("type") == SYNC:
        return SYNC
    return events.build_event("error", message='Unknown message; send {"type": "sync"}.')


class JobEventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.sync_budget = SyncBudget()
        self.groups_joined = [events.user_group(user.pk), events.SERVICE_GROUP]
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_snapshot()

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        parsed = parse_client_message(text_data, bytes_data)
        if parsed == SYNC and not self.sync_budget.take():
            await self.send_json(events.build_event("error", message=SYNC_TOO_OFTEN))
        elif parsed == SYNC:
            await self.send_snapshot()
        else:
            await self.send_json(parsed)

    async def send_snapshot(self):
        user = self.scope["user"]
        try:
            # The version is read first: the positions read after it are at least as new.
            version = await sync_to_async(selectors.queue_version)()
            jobs = await sync_to_async(selectors.user_active_jobs)(user=user)
            service = await sync_to_async(selectors.service_status)()
        except Exception as exc:
            if OUTAGES.failed(exc, doing="reading a page's snapshot") is None:
                raise
            # One line per outage rather than a traceback per page (re)connecting.
            await self.close(code=CLOSE_TRY_AGAIN)
            return
        OUTAGES.answered(DATABASE)
        await self.send_json(events.build_event("snapshot", jobs=jobs, service=service, version=version))

    async def event_forward(self, message):
        await self.send_json(message["event"])
