from django.conf import settings
from django.core.management.base import BaseCommand

from generation.pipeline import demo_pipeline_path


class Command(BaseCommand):
    help = "Build the offline demo model (random weights) ahead of the first job."

    def handle(self, *args, **options):
        path = demo_pipeline_path(settings.IMAGEGEN_MODEL_CACHE)
        self.stdout.write(self.style.SUCCESS(f"Demo model ready in {path}"))
