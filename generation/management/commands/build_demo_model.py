from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from generation.demo_model import DEMO, RANDOM_SHAPES, TINY_FAMILIES, build_random_lora, random_pipeline_path
from generation.loras import NAME


class Command(BaseCommand):
    help = (
        "Build a random-weight model offline: the demo model ahead of the first job, or with "
        "--shape sd15 one with Stable Diffusion 1.5's layer sizes, for benchmarks on a GPU; "
        "tiny-sdxl, tiny-sd3 and tiny-flux: tiny models of those families' shapes, for trying them on a CPU."
    )

    def add_arguments(self, parser):
        parser.add_argument("--shape", choices=sorted([*RANDOM_SHAPES, *TINY_FAMILIES]), default=DEMO)
        parser.add_argument(
            "--lora",
            metavar="NAME",
            help="also write a random LoRA for that model into IMAGEGEN_LORA_DIR as NAME.safetensors, to try LoRAs",
        )
        parser.add_argument("--seed", type=int, default=0, help="the LoRA's random seed (another seed, another look)")

    def handle(self, *args, **options):
        path = random_pipeline_path(settings.IMAGEGEN_MODEL_CACHE, options["shape"])
        self.stdout.write(self.style.SUCCESS(f"{options['shape']} model ready in {path}"))
        if options["lora"]:
            name = options["lora"]
            if not NAME.match(name):
                raise CommandError(f"LoRA name {name!r}: letters, digits, '.', '_' and '-' only.")
            target = settings.IMAGEGEN_LORA_DIR / f"{name}.safetensors"
            build_random_lora(target, path, seed=options["seed"])
            self.stdout.write(self.style.SUCCESS(f"LoRA {name} ready in {target}; it is offered with this model now."))
        if options["shape"] != DEMO:
            self.stdout.write(f"Register it with IMAGEGEN_MODELS={options['shape']}={path}")
