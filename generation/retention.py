"""Retention: deleting what only grows, run by the maintenance cluster every 15 minutes."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from generation import files
from generation.models import ApiRequest, ImageJob, JobPreview, QueueTicket, Worker


def records_prune(*, now: datetime | None = None) -> dict[str, int]:
    """Delete what only grows: stray image files, old broker tasks, spent tickets, channel rows.

    Run by the maintenance cluster every 15 minutes. Each part is a set-based delete,
    so its cost follows what there is to delete, not the history.
    """
    from django_q.models import Task

    now = now or timezone.now()
    orphans = files.remove_orphans(older_than=now - timedelta(seconds=settings.IMAGEGEN_ORPHAN_FILE_AGE_SECONDS))
    task_cutoff = now - timedelta(hours=settings.IMAGEGEN_TASK_RETENTION_HOURS)
    tasks, _ = Task.objects.filter(stopped__lt=task_cutoff).delete()
    # A ticket's only use is its number, already copied into the job. The newest stays,
    # though neither PostgreSQL's sequence nor SQLite's AUTOINCREMENT would reuse it.
    newest = QueueTicket.objects.order_by("-pk").values_list("pk", flat=True).first()
    tickets = QueueTicket.objects.filter(pk__lt=newest).delete()[0] if newest else 0
    workers, _ = Worker.objects.filter(last_seen_at__lt=now - timedelta(days=1)).delete()
    previews, _ = JobPreview.objects.filter(job__status__in=ImageJob.FINAL).delete()
    api_requests, _ = ApiRequest.objects.filter(created_at__lt=now - timedelta(days=1)).delete()
    return {
        "files": len(orphans),
        "tasks": tasks,
        "tickets": tickets,
        "channel_rows": _channel_rows_prune(now=now),
        "workers": workers,
        "previews": previews,
        "api_requests": api_requests,
    }


def _channel_rows_prune(*, now: datetime) -> int:
    """channels-lite's expired and delivered events and expired group memberships (none on Redis)."""
    if "channels_lite" not in settings.INSTALLED_APPS:
        return 0  # channels-redis expires its own keys
    from channels_lite.models import Event, GroupMembership

    delivered_before = now - timedelta(minutes=1)
    events_deleted, _ = Event.objects.filter(
        Q(expires_at__lt=now) | Q(delivered=True, created_at__lt=delivered_before)
    ).delete()
    memberships, _ = GroupMembership.objects.filter(expires_at__lt=now).delete()
    return events_deleted + memberships
