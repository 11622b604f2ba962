"""What a load balancer and Prometheus ask: health checks and metrics, read from the database.

Metrics are read at scrape time from the job table (and the breaker and worker rows),
so every web process reports the same numbers for every worker on every machine,
with no per-process state to merge.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.db.models import Count
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily

from generation import selectors
from generation.models import CircuitBreaker, ImageJob

logger = logging.getLogger(__name__)

Status = ImageJob.Status
LAYER_TIMEOUT = 3.0  # seconds
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
    layer = get_channel_layer()

    async def round_trip():
        channel = await layer.new_channel("healthz.")
        await layer.send(channel, {"type": "healthz.probe"})
        await asyncio.wait_for(layer.receive(channel), timeout=LAYER_TIMEOUT)

    async_to_sync(round_trip)()
    return {}


def _workers() -> dict:
    live = selectors.workers_live().count()
    if not live:
        raise RuntimeError("no gpu worker has beaten recently")
    return {"live": live}


CHECKS = {"database": _database, "broker": _broker, "channel_layer": _channel_layer, "workers": _workers}


def health_checks() -> tuple[bool, dict]:
    """Run every check; (all passed, what each found). Errors name their kind, never a secret."""
    results = {}
    for name, check in CHECKS.items():
        try:
            results[name] = {"ok": True, **check()}
        except Exception as exc:
            logger.warning("Health check %s failed: %s", name, exc)
            reason = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__} (see the server log)"
            results[name] = {"ok": False, "error": reason}
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
        workers = GaugeMetricFamily("imagegen_workers_live", "GPU worker processes beating now.")
        workers.add_metric([], selectors.workers_live(now=now).count())
        yield workers
