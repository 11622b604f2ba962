from django.core.management.base import BaseCommand

from generation.services import jobs_expire_stuck


class Command(BaseCommand):
    help = (
        "Run the stuck-job guard once: fail processing jobs with no heartbeat for "
        "IMAGEGEN_STUCK_AFTER_SECONDS, retry or fail jobs whose worker died, and ring the "
        "worker for queued jobs nobody is running. The maintenance cluster runs it every 60 s."
    )

    def handle(self, *args, **options):
        result = jobs_expire_stuck()
        self.stdout.write(
            f"Expired {len(result['expired'])} stuck job(s); requeued {len(result['requeued'])} and failed "
            f"{len(result['failed'])} job(s) of dead workers; "
            + ("rang the worker for queued jobs." if result["rang"] else "no idle queue to wake.")
        )
