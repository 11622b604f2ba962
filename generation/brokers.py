"""django-q2's brokers, waiting out an outage of what holds the queue of tasks.

django-q2's pusher (the process that takes tasks off the broker for a cluster's
worker) dies on the first failed read and is started again by the cluster's sentinel
after a 10 s pause, logging a traceback each time. These brokers instead wait, with
bounded backoff, for Redis or the database to answer again, for up to
`DEQUEUE_PATIENCE` seconds; the pusher then reads the next doorbell within a couple
of seconds of the outage's end.
"""

from __future__ import annotations

import time

from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis

from generation.outages import DATABASE, REDIS, retry_while_down

DEQUEUE_PATIENCE = 60.0  # seconds; then the pusher fails as django-q2's would, and is restarted


def _patiently(dequeue, *, kind: str):
    started = time.monotonic()
    return retry_while_down(
        dequeue,
        kind=kind,
        doing="waiting for tasks",
        give_up=lambda: time.monotonic() - started > DEQUEUE_PATIENCE,
    )


class PatientRedis(Redis):
    def dequeue(self):
        return _patiently(super().dequeue, kind=REDIS)


class PatientORM(ORM):
    def dequeue(self):
        return _patiently(super().dequeue, kind=DATABASE)
