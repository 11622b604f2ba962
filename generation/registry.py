"""The process-wide model registry and generator, built from settings on first use."""

from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from generation.families import DEFAULT_FAMILY, Family, ModelLimits
from generation.loading import ModelRegistry
from generation.loras import LoraRegistry
from generation.pipeline import DiffusersGenerator
from generation.request import ImageGenerator


@cache
def get_registry() -> ModelRegistry:
    return ModelRegistry(settings.IMAGEGEN_MODELS)


@cache
def get_loras() -> LoraRegistry:
    return LoraRegistry(settings.IMAGEGEN_LORA_DIR, settings.IMAGEGEN_LORAS)


@cache
def get_generator() -> ImageGenerator:
    # One per worker process: the pipeline stays loaded between jobs.
    cls = import_string(settings.IMAGEGEN_GENERATOR) if settings.IMAGEGEN_GENERATOR else DiffusersGenerator
    lora_aware = isinstance(cls, type) and issubclass(cls, DiffusersGenerator)
    return cls(
        get_registry(),
        cache_dir=settings.IMAGEGEN_MODEL_CACHE,
        device=settings.IMAGEGEN_DEVICE,
        max_batch=settings.IMAGEGEN_MAX_BATCH,
        # Other generators (IMAGEGEN_GENERATOR) keep the four-argument constructor.
        **({"loras": get_loras(), "lora_cache": settings.IMAGEGEN_LORA_CACHE} if lora_aware else {}),
    )


def model_limits(name: str) -> ModelLimits:
    """The family of model `name` and what a request for it may ask (KeyError when unknown).

    The form, the admin and the APIs take their bounds and defaults from here.
    """
    return get_registry().limits(name)


def model_family(name: str) -> Family:
    """The family of model `name`; SD 1.x for a name no longer registered (an old job's)."""
    registry = get_registry()
    return registry.get(name).family if name in registry else DEFAULT_FAMILY
