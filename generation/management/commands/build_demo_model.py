from django.conf import settings
from django.core.management.base import BaseCommand

from generation.demo_model import DEMO, RANDOM_SHAPES, TINY_FAMILIES, random_pipeline_path


class Command(BaseCommand):
    help = (
        "Build a random-weight model offline: the demo model ahead of the first job, or with "
        "--shape sd15 one with Stable Diffusion 1.5's layer sizes, for benchmarks on a GPU; "
        "tiny-sdxl, tiny-sd3 and tiny-flux: tiny models of those families' shapes, for trying them on a CPU."
    )

    def add_arguments(self, parser):
        parser.add_argument("--shape", choices=sorted([*RANDOM_SHAPES, *TINY_FAMILIES]), default=DEMO)

    def handle(self, *args, **options):
        path = random_pipeline_path(settings.IMAGEGEN_MODEL_CACHE, options["shape"])
        self.stdout.write(self.style.SUCCESS(f"{options['shape']} model ready in {path}"))
        if options["shape"] != DEMO:
            self.stdout.write(f"Register it with IMAGEGEN_MODELS={options['shape']}={path}")
