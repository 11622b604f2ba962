"""The process-wide model registry and generator, built from settings on first use."""

from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from generation.pipeline import ImageGenerator, ModelRegistry


@cache
def get_registry() -> ModelRegistry:
    return ModelRegistry(settings.IMAGEGEN_MODELS)


@cache
def get_generator() -> ImageGenerator:
    # One per worker process: the pipeline stays loaded between jobs.
    cls = import_string(settings.IMAGEGEN_GENERATOR) if settings.IMAGEGEN_GENERATOR else ImageGenerator
    return cls(get_registry(), cache_dir=settings.IMAGEGEN_MODEL_CACHE, device=settings.IMAGEGEN_DEVICE)
