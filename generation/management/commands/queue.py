from django.core.management.base import BaseCommand
from django.utils import timezone

from generation import fairness, selectors
from generation.models import ImageJob
from generation.templatetags.jobs import duration


class Command(BaseCommand):
    help = "Print what is running and the queue, in the order the worker will take it, with positions and ETAs."

    def handle(self, *args, **options):
        service = selectors.service_status()
        if service["message"]:
            self.stdout.write(self.style.WARNING(service["message"]))
        live = list(selectors.workers_live())
        self.stdout.write(f"Live workers: {len(live)}")
        for worker in live:
            state = "stopping" if worker.stopping else "running"
            holds = f"holds {worker.loaded_model}" if worker.loaded_model else "no model loaded"
            if worker.gpu_memory is not None:
                holds += f", {worker.gpu_memory / 2**30:.1f} GiB of GPU memory"
            self.stdout.write(
                f"  {worker.name} on {worker.device}, up to {worker.max_batch} per pass, {state}, "
                f"since {worker.started_at:%Y-%m-%d %H:%M:%S}; {holds}"
            )
        running = ImageJob.objects.filter(status=ImageJob.Status.PROCESSING).select_related("owner")
        for job in running:
            together = f", pass {job.batch} of {job.batch_size}" if job.batch_size > 1 else ""
            self.stdout.write(f"Running: job {job.pk} for {job.owner}, {job.progress}% ({job.worker}{together})")
        for batch, job_ids in selectors.recent_passes():
            self.stdout.write(f"Ran together: jobs {', '.join(map(str, job_ids))} (pass {batch})")
        shares = fairness.gpu_shares(now=timezone.now())
        if shares:
            spent = ", ".join(
                f"{share['username']} {share['share']:.0%} ({share['seconds']:.0f} s, weight {share['weight']:g})"
                for share in shares
            )
            self.stdout.write(f"GPU time over the last hour: {spent}")
        self.stdout.write(f"Queue policy: {fairness.describe()}")
        entries = selectors.queue_eta()
        if not entries:
            self.stdout.write("The queue is empty.")
            return
        jobs = ImageJob.objects.select_related("owner").in_bulk([entry["job_id"] for entry in entries])
        rows = [("POS", "JOB", "USER", "MODEL", "SIZE", "STEPS", "STARTS IN", "READY IN", "PROMPT")]
        for entry in entries:
            job = jobs[entry["job_id"]]
            rows.append(
                (
                    str(entry["position"]),
                    str(job.pk),
                    job.owner.get_username(),
                    job.model,
                    f"{job.width}x{job.height}",
                    str(job.steps),
                    duration(entry["estimated_start_seconds"]),
                    duration(entry["estimated_seconds"]),
                    job.prompt[:40].replace("\n", " "),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
