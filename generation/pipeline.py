"""Diffusers pipelines: running a pass of requests, previews and the PNG's infotext.

This module imports nothing from Django, so it can be benchmarked and reused on its
own. The Django side hands it plain values and a per-step callback. Loading a model
is `loading.py`'s; what differs between SD 1.x, SDXL, SD3 and Flux is data in
`families.py`: this module asks the model's family for its call arguments, its
preview and its infotext.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFilter

from generation.families import DEFAULT_FAMILY, DISCRETE_SCHEDULERS, SAMPLER_NAMES, Family, family_for_pipeline
from generation.loading import ModelRegistry, load_pipeline, resolve_device
from generation.request import INPAINT, TXT2IMG, UPSCALE, GenerationRequest, StepCallback, TransientGenerationError
from generation.sources import ModelUnavailable, hub_cached_file
from generation.speed import WARM_UP_STEPS, SpeedReport, compiled_graphs, fast_pass, make_fast, warm_up

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# scheduler key -> (diffusers class name, AUTOMATIC1111 sampler name, extra config), as SD
# 1.x and SDXL run them. Which class a key means for a model is its family's
# (`Family.schedulers`): "euler" is Euler on the flow for SD3 and Flux, their only one.
SCHEDULERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    key: (class_name, SAMPLER_NAMES[key], extra) for key, (class_name, extra) in DISCRETE_SCHEDULERS.items()
}


def is_out_of_memory(exc: BaseException) -> bool:
    """The device (or the host) ran out of memory: a smaller pass may fit."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return isinstance(exc, MemoryError) or (oom is not None and isinstance(exc, oom))


def is_transient(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, ModelUnavailable):
        return False  # only an operator can fix it
    transient: tuple[type[BaseException], ...] = (TransientGenerationError, MemoryError, ConnectionError)
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None:
        transient += (oom,)
    return isinstance(exc, transient)


def set_scheduler(pipe, name: str, family: Family = DEFAULT_FAMILY) -> None:
    import diffusers

    class_name, extra = family.schedulers[name]
    if type(pipe.scheduler).__name__ != class_name:
        pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **extra)


def default_max_batch(configured: int, device: str) -> int:
    """How many images a pass may make: IMAGEGEN_MAX_BATCH, else 4 on CUDA and 1 on a CPU."""
    return configured or (4 if device.startswith("cuda") else 1)


class DiffusersGenerator:
    """Keeps one pipeline loaded between jobs; a job for another model swaps it.

    A model in the speed mode (`speed.py`) is compiled and warmed up while it loads, for
    one image a pass and for the most a pass makes, at its default size (or the sizes
    its `speed=` option names).
    """

    def __init__(self, registry: ModelRegistry, *, cache_dir: Path, device: str = "auto", max_batch: int = 0):
        self.registry = registry
        self.cache_dir = Path(cache_dir)
        self._device_preference = device
        self._device: str | None = None
        self._max_batch = max_batch
        self._loaded_name: str | None = None
        self._pipe = None
        self._family: Family = DEFAULT_FAMILY
        self._edit_pipes: dict[str, Any] = {}  # class name -> a pipeline sharing the loaded one's parts
        # Held while a model loads, unloads or runs a pass. Reentrant: a pass loads its model.
        self._lock = threading.RLock()
        self.loads = 0
        self.unloads = 0
        self.load_seconds: dict[str, float] = {}  # model -> how long its last load took (compiling included)
        self.speed: SpeedReport | None = None  # the loaded model's speed mode, when it has one
        self.compiled_in_passes = 0  # graphs compiled while running jobs: 0 is the promise
        self.fast_passes = 0  # passes that ran the code compiled at load time

    @property
    def device(self) -> str:
        # Resolved lazily: CUDA must not be touched before the worker process forks.
        if self._device is None:
            self._device = resolve_device(self._device_preference)
        return self._device

    @property
    def max_batch(self) -> int:
        return default_max_batch(self._max_batch, self.device)

    @property
    def loaded_model(self) -> str | None:
        return self._loaded_name

    def load(self, name: str, *, on_download: Callable[[], None] | None = None):
        """The pipeline of model `name`, loading it (in place of the one loaded) if needed.

        `on_download` is called if its files must be downloaded first. In the speed mode
        the model is compiled and warmed up here, before any job of it runs.
        """
        with self._lock:
            if self._loaded_name != name:
                info = self.registry.get(name)
                self._drop()
                started = time.perf_counter()
                pipe = load_pipeline(info, cache_dir=self.cache_dir, device=self.device, on_download=on_download)
                self._pipe = pipe
                self._family = family_for_pipeline(type(pipe).__name__) or info.family
                if info.speed(self.device):
                    self._make_fast(info)
                self._loaded_name = name
                self.load_seconds[name] = time.perf_counter() - started
                self.loads += 1
            return self._pipe

    def _make_fast(self, info) -> None:
        import torch

        torch._dynamo.reset()  # code compiled for an earlier model only fills the caches
        report = SpeedReport(steps=make_fast(self._pipe, device=self.device, vae_upcasts=self._family.vae_upcasts))
        limits = info.limits()
        sizes = info.spec.speed_sizes or ((limits.default_size, limits.default_size),)
        shapes = sorted({(batch, width, height) for batch in (1, self.max_batch) for width, height in sizes})

        def run_pass(batch: int, width: int, height: int) -> None:
            requests = [
                GenerationRequest(
                    prompt="warm-up",
                    negative_prompt="",
                    seed=n,
                    steps=WARM_UP_STEPS,
                    width=width,
                    height=height,
                    guidance=limits.default_guidance,
                    model=info.name,
                    scheduler=self._family.default_scheduler,
                )
                for n in range(batch)
            ]
            self._run_pass(requests, None)

        self.speed = report
        warm_up(run_pass, shapes=shapes, report=report)
        logger.info(
            "Model %s in the speed mode (%s): %d graphs compiled in %.1f s for passes of %s",
            info.name,
            ", ".join(report.steps),
            report.graphs,
            report.compile_seconds,
            sorted(report.shapes),
        )

    def _drop(self) -> None:
        if self._pipe is None:
            return
        compiled = self.speed is not None
        self._pipe = None
        self._edit_pipes = {}
        self._loaded_name = None
        self.speed = None
        import gc

        import torch

        if compiled:
            torch._dynamo.reset()  # the compiled code holds the model's weights
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def unload(self) -> str | None:
        """Free the loaded model and its memory (the next job loads it again); its name, or None."""
        with self._lock:
            name = self._loaded_name
            if name is None:
                return None
            self._drop()
            self.unloads += 1
            return name

    def memory(self) -> dict[str, int]:
        """The device memory this process holds, in bytes (empty on a CPU)."""
        if not self.device.startswith("cuda"):
            return {}
        import torch

        return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}

    def pipeline_for(self, kind: str):
        """The loaded model's pipeline for `kind`: the text-to-image one, or an edit
        pipeline made from its components (no second copy of the weights)."""
        if kind == TXT2IMG:
            return self._pipe
        class_name = self._family.edit_pipelines.get(kind)
        if class_name is None:
            raise ValueError(f"{self._family.label} models cannot {kind}")
        if type(self._pipe).__name__ == class_name:
            return self._pipe  # the model is itself such a checkpoint
        if class_name not in self._edit_pipes:
            import diffusers

            self._edit_pipes[class_name] = getattr(diffusers, class_name).from_pipe(self._pipe)
        return self._edit_pipes[class_name]

    def needs_download(self, name: str) -> bool:
        """Whether loading model `name` would download it first (a Hub model not in the cache)."""
        if name == self._loaded_name or name not in self.registry:
            return False
        info = self.registry.get(name)
        return (
            info.spec.kind == "hub"
            and hub_cached_file(info.spec.repo_id, "model_index.json", info.spec.revision) is None
        )

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> Image.Image:
        """Run one request; `on_step` may raise to abort (cancel, timeout)."""
        return self.generate_batch([request], on_step)[0]

    def generate_batch(
        self, requests: list[GenerationRequest], on_step: StepCallback | None = None
    ) -> list[Image.Image]:
        """Make the images of several requests in one pass of the pipeline.

        The requests share a pass key (model, size, steps, guidance, scheduler); each
        keeps its own prompt, negative prompt and seed, with a `torch.Generator` of its
        own, so each image is the one its request would get alone. `on_step` gets the
        whole batch's latents, one row per request, and may raise to abort the pass.
        """
        with self._lock:
            self.load(requests[0].model)
            if self.speed is None:
                return self._run_pass(requests, on_step)
            first = requests[0]
            warmed = (len(requests), first.width, first.height) in self.speed.shapes
            before = compiled_graphs()
            try:
                with fast_pass(warmed):
                    return self._run_pass(requests, on_step)
            finally:
                self.compiled_in_passes += compiled_graphs() - before
                self.fast_passes += warmed

    def _run_pass(self, requests: list[GenerationRequest], on_step: StepCallback | None) -> list[Image.Image]:
        import torch

        first = requests[0]
        family = self._family
        pipe = self.pipeline_for(first.kind)
        set_scheduler(pipe, first.scheduler, family)
        generators = [torch.Generator(device="cpu").manual_seed(request.seed) for request in requests]

        def step_end(pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
            if on_step is not None:
                on_step(step_index + 1, pipeline.num_timesteps, callback_kwargs["latents"])
            return callback_kwargs

        edits = _edit_inputs(requests) if first.kind != TXT2IMG else {}
        with torch.inference_mode(), _vae_tiled(pipe, first, family):
            kwargs = family.call_kwargs(requests)
            if edits:
                kwargs = _without_size(pipe, {**kwargs, **edits})
            if family.zeros_for_no_negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
                kwargs = _zeros_for_no_negative(pipe, requests, kwargs)
            result = pipe(
                **kwargs,
                generator=generators,
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                output_type="pil",
            )
        images = list(result.images)
        if first.kind == INPAINT:
            pasted = zip(images, edits["image"], edits["mask_image"], requests, strict=True)
            images = [keep_unmasked(image, source, mask, request.mask_blur) for image, source, mask, request in pasted]
        return images


# --- Edits: image-to-image, inpainting, upscaling --------------------------------------


def source_for(request: GenerationRequest) -> Image.Image:
    """An edit's source at the request's size (an upscale's is enlarged to it here)."""
    image = request.image.convert("RGB")
    if image.size != (request.width, request.height):
        image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
    return image


def mask_for(request: GenerationRequest) -> Image.Image:
    mask = request.mask.convert("L")
    if mask.size != (request.width, request.height):
        mask = mask.resize((request.width, request.height), Image.Resampling.NEAREST)
    return mask


def _edit_inputs(requests: list[GenerationRequest]) -> dict[str, Any]:
    """The source images (and masks) of a pass of edits, as the edit pipeline takes them."""
    inputs: dict[str, Any] = {"image": [source_for(request) for request in requests]}
    if requests[0].kind == INPAINT:
        inputs["mask_image"] = [mask_for(request) for request in requests]
    return inputs


def _without_size(pipe, kwargs: dict[str, Any]) -> dict[str, Any]:
    """SD 1.x's and SDXL's image-to-image pipelines take their size from the image alone."""
    import inspect

    if "width" in inspect.signature(pipe.__call__).parameters:
        return kwargs
    return {key: value for key, value in kwargs.items() if key not in ("width", "height")}


def keep_unmasked(image: Image.Image, source: Image.Image, mask: Image.Image, blur: int) -> Image.Image:
    """The inpainted image over its source (both at the job's size): outside the mask (and
    its blurred edge) the source's own pixels, as AUTOMATIC1111 pastes them back."""
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return Image.composite(image.convert("RGB"), source, mask)


class _vae_tiled:
    """An upscale larger than the family's native size decodes in tiles (bounded memory)."""

    def __init__(self, pipe, request: GenerationRequest, family: Family):
        vae = getattr(pipe, "vae", None)
        large = max(request.width, request.height) > family.default_size
        self.vae = vae if request.kind == UPSCALE and large and hasattr(vae, "enable_tiling") else None

    def __enter__(self):
        if self.vae is not None:
            self.vae.enable_tiling()

    def __exit__(self, *exc_info):
        if self.vae is not None:
            self.vae.disable_tiling()


def _zeros_for_no_negative(pipe, requests: list[GenerationRequest], kwargs: dict) -> dict:
    """SDXL's text embeddings for a pass mixing requests with and without a negative prompt.

    Alone, a request without one is guided by zeros; in a pass where another request has
    one, the pipeline would encode the empty text for it instead, and its image would
    differ from the one it gets alone. So the pass's text is encoded here and the rows
    without a negative prompt are zeroed, as the pipeline does for a request alone.
    """
    missing = [not request.negative_prompt for request in requests]
    if all(missing) or not any(missing):
        return kwargs
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=kwargs["prompt"],
        device=pipe._execution_device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=[request.negative_prompt for request in requests],
    )
    for row, none in enumerate(missing):
        if none:
            negative[row] = 0
            negative_pooled[row] = 0
    rest = {key: value for key, value in kwargs.items() if key not in ("prompt", "negative_prompt")}
    return {
        **rest,
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


# --- Output -------------------------------------------------------------------------


def infotext(request: GenerationRequest, family: Family = DEFAULT_FAMILY) -> str:
    """Parameters in AUTOMATIC1111's format, which other tools read from a PNG."""
    lines = [request.prompt]
    if request.negative_prompt and family.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    fields = [*family.infotext_fields(request), ("Model", request.model)]
    lines.append(", ".join(f"{key}: {value}" for key, value in fields))
    return "\n".join(lines)


def latents_preview(
    latents: torch.Tensor,
    *,
    family: Family = DEFAULT_FAMILY,
    width: int | None = None,
    height: int | None = None,
    max_size: int = 128,
) -> Image.Image:
    """A small RGB picture from a batch-of-one of `family`'s latents, without a VAE decode."""
    return family.preview(latents, width=width, height=height, max_size=max_size)
