from django.core.management.base import BaseCommand, CommandError

from generation.loading import hub_snapshot, single_file_config
from generation.registry import get_registry
from generation.sources import ModelUnavailable


class Command(BaseCommand):
    help = (
        "Download a registered model (IMAGEGEN_MODELS) into the Hugging Face cache ahead of its first job, "
        "with a progress bar: a Hub id's pipeline, or the configs a single-file checkpoint is read with."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="the model's name in IMAGEGEN_MODELS")

    def handle(self, *args, name, **options):
        registry = get_registry()
        if name not in registry:
            raise CommandError(f"Unknown model {name!r}; known: {', '.join(registry.names())}")
        info = registry.get(name)
        kind = info.spec.kind
        try:
            if kind == "hub":
                self.stdout.write(f"Downloading {info.spec.source} (model {name!r}) into the Hugging Face cache…")
                path = hub_snapshot(info, progress=True)
            elif kind == "file":
                path = single_file_config(info, download=True)
                self.stdout.write(f"The configs for {info.source} are in {path}")
            else:
                self.stdout.write(f"Model {name!r} is local ({kind}); there is nothing to download.")
                return
        except ModelUnavailable as exc:
            raise CommandError(str(exc)) from None
        family = registry.get(name).family
        self.stdout.write(self.style.SUCCESS(f"Model {name!r} ({family.label}) is ready in {path}"))
