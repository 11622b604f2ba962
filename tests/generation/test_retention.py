"""What only grows is pruned by the maintenance cluster: tasks, tickets, channel rows."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from django_q.models import Schedule, Task

from generation import retention, services
from generation.models import ImageJob, QueueTicket
from generation.selectors import duration_estimator
from tests.fakes import FakeGenerator
from tests.helpers import LAYER_DATABASES, run_pass

pytestmark = pytest.mark.django_db(databases=LAYER_DATABASES)


def _task(name: str, *, stopped, success: bool) -> None:
    Task.objects.create(
        id=name, name=name, func="generation.tasks.process_next_job", started=stopped, stopped=stopped, success=success
    )


def test_finished_broker_tasks_older_than_the_retention_are_deleted(settings):
    settings.IMAGEGEN_TASK_RETENTION_HOURS = 24
    now = timezone.now()
    _task("old-failure", stopped=now - timedelta(days=3), success=False)
    _task("old-success", stopped=now - timedelta(hours=25), success=True)
    _task("recent-failure", stopped=now - timedelta(hours=1), success=False)

    assert retention.records_prune(now=now)["tasks"] == 2
    assert list(Task.objects.values_list("id", flat=True)) == ["recent-failure"]


def test_spent_queue_tickets_are_deleted_and_the_order_goes_on(submit, runner_for):
    first, second = submit("one"), submit("two")
    services.job_requeue_at_end(job=first)
    assert QueueTicket.objects.count() == 3

    assert retention.records_prune()["tickets"] == 2
    assert QueueTicket.objects.count() == 1

    third = submit("three")
    assert third.sequence > max(first.sequence, second.sequence)
    runner = runner_for(FakeGenerator())
    assert [run_pass(runner).pk for _ in range(3)] == [second.pk, first.pk, third.pk]


def test_spent_channel_layer_rows_are_deleted(settings):
    if "channels_lite" not in settings.INSTALLED_APPS:
        # channels-redis expires its own keys: there is nothing to prune, and nothing breaks.
        assert retention.records_prune()["channel_rows"] == 0
        return
    from channels_lite.models import Event, GroupMembership

    now = timezone.now()
    Event.objects.create(channel_name="a", data=b"{}", expires_at=now - timedelta(seconds=1))
    soon = now + timedelta(seconds=30)
    delivered = Event.objects.create(channel_name="b", data=b"{}", expires_at=soon, delivered=True)
    Event.objects.filter(pk=delivered.pk).update(created_at=now - timedelta(minutes=5))
    waiting = Event.objects.create(channel_name="c", data=b"{}", expires_at=now + timedelta(seconds=30))
    GroupMembership.objects.create(group_name="g", channel_name="a", expires_at=now - timedelta(seconds=1))
    kept = GroupMembership.objects.create(group_name="g", channel_name="c", expires_at=now + timedelta(hours=1))

    assert retention.records_prune(now=now)["channel_rows"] == 3
    assert list(Event.objects.values_list("pk", flat=True)) == [waiting.pk]
    assert list(GroupMembership.objects.values_list("pk", flat=True)) == [kept.pk]


def test_the_prune_runs_on_a_schedule_in_the_maintenance_cluster():
    schedule = Schedule.objects.get(name="prune old records and files")
    assert (schedule.func, schedule.cluster, schedule.minutes, schedule.repeats) == (
        "generation.tasks.prune",
        "maintenance",
        15,
        -1,
    )


def test_the_eta_history_is_read_through_an_index(submit):
    submit("one")
    ImageJob.objects.update(status="complete", started_at=timezone.now(), finished_at=timezone.now())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")
        sql, params = (
            ImageJob.objects.filter(status="complete", started_at__isnull=False, finished_at__isnull=False)
            .order_by("-finished_at")
            .values_list("model", "width", "height", "steps", "started_at", "finished_at")[:200]
            .query.sql_with_params()
        )
        prefix = "EXPLAIN " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
        cursor.execute(prefix + sql, params)
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "job_status_finished" in plan, plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
    assert duration_estimator()("demo", 64, 64, 4) >= 0
