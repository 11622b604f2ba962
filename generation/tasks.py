"""django-q2 task entry points. They take ids (or nothing), never objects."""

from generation.models import ImageJob
from generation.services import jobs_expire_stuck, ring_worker
from generation.worker import JobRunner


def process_next_job() -> int | None:
    """A doorbell: run the oldest runnable job, if any. Returns its id."""
    runner = JobRunner()
    job = runner.run_next()
    if (job is not None or runner.device_busy) and ImageJob.objects.filter(status=ImageJob.Status.QUEUED).exists():
        # Keep the queue moving even if a doorbell was lost, or the device was busy
        # this time; a spare doorbell finds nothing and stops.
        ring_worker()
    return job.pk if job is not None else None


def expire_stuck_jobs() -> dict:
    """The maintenance cluster's guard, every 60 s."""
    return jobs_expire_stuck()
