from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from generation.models import ImageJob
from generation.services import JobError, job_retry


class Command(BaseCommand):
    help = "Give failed jobs of the last N minutes a new attempt (after an outage, say)."

    def add_arguments(self, parser):
        parser.add_argument("--minutes", type=int, default=60, help="How far back to look (default 60).")
        parser.add_argument("--dry-run", action="store_true", help="Only list what would be retried.")

    def handle(self, *args, **options):
        if options["minutes"] < 1:
            raise CommandError("--minutes must be at least 1.")
        since = timezone.now() - timedelta(minutes=options["minutes"])
        failed = ImageJob.objects.filter(status=ImageJob.Status.ERROR, finished_at__gte=since).order_by("sequence")
        retried = skipped = 0
        for job in failed:
            if options["dry_run"]:
                self.stdout.write(f"Would retry job {job.pk}: {job.error}")
                continue
            try:
                job_retry(job=job)
                retried += 1
            except JobError as exc:
                skipped += 1
                self.stdout.write(f"Skipped job {job.pk}: {exc}")
        if not options["dry_run"]:
            self.stdout.write(
                f"Retried {retried} failed job(s) from the last {options['minutes']} min; skipped {skipped}."
            )
