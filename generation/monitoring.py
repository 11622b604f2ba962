"""What a load balancer and Prometheus ask: health checks and metrics, read from the database.

Metrics are read at scrape time from the job table (and the breaker and worker rows),
so every web process reports the same numbers for every worker on every machine,
with no per-process state to merge.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Count
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily

from generation import selectors
from generation.models import CircuitBreaker, ImageJob
from generation.outages import DATABASE, OUTAGES, REDIS, kind_of

logger = logging.getLogger(__name__)

Status = ImageJob.Status
# Seconds. A round trip through the channel layer gives up after CHECK_SECONDS (a
# Redis connection gives up connecting after as long: settings.py). /healthz does not
# wait longer than ANSWER_SECONDS for the checks that connect afresh: PostgreSQL's
# client waits at least 2 s for a server that does not answer.
CHECK_SECONDS = 1.0
ANSWER_SECONDS = 1.25
# Seconds; the wait and run times of jobs finished in the last METRICS_WINDOW.
BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
METRICS_WINDOW = timedelta(minutes=15)


def _database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {}


def _broker() -> dict:
    from django_q.brokers import get_broker

    return {"gpu_queue": get_broker("gpu").queue_size()}


def _channel_layer() -> dict:
    """A message sent through the layer comes back within CHECK_SECONDS.

    On a plain channel (a name without the "!" of new_channel()'s): receiving on it
    starts nothing that outlives the check (channels-lite starts a poll loop per "!"
    prefix, on the web server's event loop) and does not queue behind channels-redis'
    receive lock, which a page's WebSocket holds while it waits for its own events.
    """
    layer = get_channel_layer()
    channel = f"healthz.{uuid.uuid4().hex}"

    async def round_trip():
        await layer.send(channel, {"type": "healthz.probe"})
        await layer.receive(channel)

    try:
        async_to_sync(asyncio.wait_for)(round_trip(), CHECK_SECONDS)
    except TimeoutError:
        raise RuntimeError(f"no message came back through the channel layer within {CHECK_SECONDS:g} s") from None
    return {}


def _workers() -> dict:
    live = selectors.workers_live().count()
    if not live:
        raise RuntimeError("no gpu worker has beaten recently")
    return {"live": live}


CHECKS = {"database": _database, "broker": _broker, "channel_layer": _channel_layer, "workers": _workers}
# What a check found, and the error it failed with.
Finding = tuple[dict, BaseException | None]


def _depends_on(name: str) -> str:
    """What a passing check shows answers: Redis for the broker and the layer when they use it."""
    if name in ("broker", "channel_layer") and settings.REDIS_URL:
        return REDIS
    return DATABASE


@contextmanager
def _connections_of_its_own():
    """This thread's database connections, for a check: outside any pool, closed after.

    The web process borrows connections from a pool, which waits DATABASE_POOL_TIMEOUT
    for one while the database is away; a check connects afresh instead and gives up
    at once when refused, after libpq's shortest connect timeout when unreachable.
    """
    shared = connections[DEFAULT_DB_ALIAS]
    options = {key: value for key, value in shared.settings_dict["OPTIONS"].items() if key != "pool"}
    if shared.vendor == "postgresql":
        options["connect_timeout"] = 2  # seconds, libpq's least
    connections[DEFAULT_DB_ALIAS] = type(shared)({**shared.settings_dict, "OPTIONS": options}, DEFAULT_DB_ALIAS)
    try:
        yield
    finally:
        connections.close_all()
        del connections[DEFAULT_DB_ALIAS]


def _check(name: str) -> Finding:
    """Run one check. An outage is noted here, so one that fails after the answer went out counts too."""
    try:
        return {"ok": True, **CHECKS[name]()}, None
    except Exception as exc:
        if OUTAGES.failed(exc, doing="checking health") is None and not isinstance(exc, RuntimeError):
            logger.warning("Health check %s failed: %s", name, exc)
        reason = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__} (see the server log)"
        return {"ok": False, "error": reason}, exc


def _check_apart(name: str) -> Finding:
    with _connections_of_its_own():
        return _check(name)


def health_checks() -> tuple[bool, dict]:
    """Run every check; (all passed, what each found), in about ANSWER_SECONDS at most.

    Errors name their kind, never a secret. An outage is logged once when it starts and
    once when it ends (generation.outages), however often a load balancer asks.
    """
    deadline = time.monotonic() + ANSWER_SECONDS
    found: dict[str, Finding] = {}
    unanswered: set[str] = set()
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="healthz")
    try:
        # 1. The database and the broker, reached afresh, each on a thread of its own.
        apart = {name: pool.submit(_check_apart, name) for name in ("database", "broker")}
        # 2. Meanwhile the channel layer, on this thread and (in the web server) its event
        # loop: through the connections the pages' WebSockets use.
        found["channel_layer"] = _check("channel_layer")
        for name, future in apart.items():
            try:
                found[name] = future.result(timeout=max(deadline - time.monotonic(), 0))
            except FutureTimeout:
                found[name] = {"ok": False, "error": f"no answer within {ANSWER_SECONDS:g} s"}, None
                unanswered.add(_depends_on(name))
    finally:
        # A thread still connecting is not waited for: it ends within its own timeouts.
        pool.shutdown(wait=False, cancel_futures=True)
    # 3. The workers, read on the request's connection once the database answered:
    # during an outage it would only wait for the same database again.
    if found["database"][0]["ok"]:
        found["workers"] = _check("workers")
    else:
        found["workers"] = {"ok": False, "error": "not run: the database check failed"}, None

    results = {name: found[name][0] for name in CHECKS}
    # An outage ends when a check that needs what was away passes and none failed on it.
    failing = unanswered | {kind_of(error) for _, error in found.values() if error is not None}
    for kind in {_depends_on(name) for name, result in results.items() if result["ok"]} - failing:
        OUTAGES.answered(kind)
    return all(result["ok"] for result in results.values()), results


def _histogram(name: str, documentation: str, seconds: list[float]) -> GaugeHistogramMetricFamily:
    buckets, total = [], 0
    for bound in BUCKETS:
        buckets.append((str(bound), sum(1 for value in seconds if value <= bound)))
    buckets.append(("+Inf", len(seconds)))
    total = sum(seconds)
    return GaugeHistogramMetricFamily(name, documentation, buckets=buckets, gsum_value=total)


class JobMetrics:
    """A prometheus_client collector: a handful of indexed queries per scrape."""

    def collect(self):
        now = timezone.now()
        by_status = dict(ImageJob.objects.order_by().values_list("status").annotate(n=Count("pk")))
        depth = GaugeMetricFamily("imagegen_queue_depth", "Jobs waiting in the queue.")
        depth.add_metric([], by_status.get(Status.QUEUED, 0))
        yield depth
        running = GaugeMetricFamily("imagegen_jobs_processing", "Jobs being generated now.")
        running.add_metric([], by_status.get(Status.PROCESSING, 0))
        yield running
        outcomes = CounterMetricFamily("imagegen_jobs", "Finished jobs by outcome.", labels=["outcome"])
        for status in ImageJob.FINAL:
            outcomes.add_metric([status], by_status.get(status, 0))
        yield outcomes

        recent = ImageJob.objects.filter(
            status__in=ImageJob.FINAL, finished_at__gte=now - METRICS_WINDOW, started_at__isnull=False
        ).values_list("created_at", "started_at", "finished_at")
        waits, runs = [], []
        for created, started, finished in recent:
            waits.append(max((started - created).total_seconds(), 0.0))
            runs.append(max((finished - started).total_seconds(), 0.0))
        window = f"jobs finished in the last {int(METRICS_WINDOW.total_seconds() // 60)} minutes"
        yield _histogram("imagegen_job_wait_seconds", f"Time from submit to start, {window}.", waits)
        yield _histogram("imagegen_job_run_seconds", f"Time from start to finish, {window}.", runs)

        state = selectors.service_status()["state"]
        breaker = GaugeMetricFamily("imagegen_breaker_state", "Circuit breaker state (1 = current).", labels=["state"])
        for choice in CircuitBreaker.State.values:
            breaker.add_metric([choice], 1 if choice == state else 0)
        yield breaker
        live = list(selectors.workers_live(now=now).values("name", "device", "loaded_model", "gpu_memory"))
        workers = GaugeMetricFamily("imagegen_workers_live", "GPU worker processes beating now.")
        workers.add_metric([], len(live))
        yield workers
        loaded = GaugeMetricFamily(
            "imagegen_worker_model_loaded", "1 for the model each live worker holds loaded.", labels=["worker", "model"]
        )
        memory = GaugeMetricFamily(
            "imagegen_worker_gpu_memory_bytes",
            "GPU memory each live worker's process holds (reserved by PyTorch).",
            labels=["worker", "device"],
        )
        for worker in live:
            if worker["loaded_model"]:
                loaded.add_metric([worker["name"], worker["loaded_model"]], 1)
            if worker["gpu_memory"] is not None:
                memory.add_metric([worker["name"], worker["device"]], worker["gpu_memory"])
        yield loaded
        yield memory
