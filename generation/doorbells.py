"""Enqueue django-q2 tasks through one broker per process and cluster.

`async_task` builds a broker per call, and for Redis that is a new client and a new
connection per task; a doorbell on every submission and every queue change would
pay that each time.
"""

import os

from django_q.brokers import Broker, get_broker
from django_q.tasks import async_task

_brokers: dict[tuple[int, str], Broker] = {}


def enqueue(func: str, *, cluster: str, name: str) -> None:
    key = (os.getpid(), cluster)  # a forked worker makes its own
    broker = _brokers.get(key)
    if broker is None:
        broker = _brokers[key] = get_broker(cluster)
    async_task(func, cluster=cluster, task_name=name, broker=broker)
