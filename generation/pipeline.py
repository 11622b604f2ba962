"""Diffusers pipelines: running a pass of requests, previews and the PNG's infotext.

This module imports nothing from Django, so it can be benchmarked and reused on its
own. The Django side hands it plain values and a per-step callback. Loading a model
is `loading.py`'s; what differs between SD 1.x, SDXL, SD3 and Flux is data in
`families.py`: this module asks the model's family for its call arguments, its
preview and its infotext.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFilter

from generation.families import DEFAULT_FAMILY, Family, family_for_pipeline
from generation.loading import ModelRegistry, load_pipeline, resolve_device
from generation.loras import LoraRegistry, LoraUnavailable, infotext_hashes, prompt_tags
from generation.request import (
    DEFAULT_SCHEDULE,
    INPAINT,
    TXT2IMG,
    UPSCALE,
    GenerationRequest,
    StepCallback,
    TransientGenerationError,
)
from generation.sources import ModelUnavailable, hub_cached_file
from generation.speed import WARM_UP_STEPS, SpeedReport, compiled_graphs, fast_pass, make_fast, warm_up

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


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


# scheduler -> (the model's own scheduler config, the sampler and options it was built
# with): a sampler or schedule that differs from the last pass's rebuilds it, always
# from the model's own config, so no option of an earlier one lingers.
_BUILT_SCHEDULERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def set_scheduler(
    pipe,
    name: str,
    family: Family = DEFAULT_FAMILY,
    schedule: str = DEFAULT_SCHEDULE,
    *,
    seeds: list[int] | None = None,
) -> None:
    """Give `pipe` sampler `name` with noise schedule `schedule`, as `family` runs them.

    A scheduler is rebuilt only when the sampler or its options change (building some,
    KDPM2's, takes a quarter of a second). `seeds`: the pass's, one per image, for a
    sampler whose noise comes from a Brownian tree.
    """
    import diffusers

    current = pipe.scheduler
    own, built = _BUILT_SCHEDULERS.get(current, (dict(current.config), None))
    class_name, options = family.scheduler_config(name, schedule)
    scheduler_class = getattr(diffusers, class_name)
    accepted = _accepted_options(scheduler_class)
    options = {key: value for key, value in options.items() if key in accepted}
    recipe = (class_name, sorted(options.items()))
    if built is None and type(current).__name__ == class_name:
        # The model's own scheduler: kept if it already is the one asked for.
        if all(current.config.get(key) == value for key, value in options.items()):
            built = recipe
            _BUILT_SCHEDULERS[current] = (own, recipe)
    if built != recipe:
        current = scheduler_class.from_config(own, **options)
        _BUILT_SCHEDULERS[current] = (own, recipe)
        pipe.scheduler = current
    if family.schedulers[name].brownian and seeds is not None:
        current.noise_sampler_seed = list(seeds)


@functools.cache
def _accepted_options(scheduler_class) -> frozenset[str]:
    """The config options a scheduler class takes (read once per class, not every pass)."""
    import inspect

    return frozenset(inspect.signature(scheduler_class.__init__).parameters)


def default_max_batch(configured: int, device: str) -> int:
    """How many images a pass may make: IMAGEGEN_MAX_BATCH, else 4 on CUDA and 1 on a CPU."""
    return configured or (4 if device.startswith("cuda") else 1)


class DiffusersGenerator:
    """Keeps one pipeline loaded between jobs; a job for another model swaps it.

    A model in the speed mode (`speed.py`) is compiled and warmed up while it loads, for
    one image a pass and for the most a pass makes, at its default size (or the sizes
    its `speed=` option names).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        cache_dir: Path,
        device: str = "auto",
        max_batch: int = 0,
        loras: LoraRegistry | None = None,
        lora_cache: int = 8,
    ):
        self.registry = registry
        self.lora_registry = loras or LoraRegistry()
        self.lora_cache = max(1, lora_cache)
        # LoRAs loaded into the model as adapters, least recently used first: name -> adapter.
        self._adapters: OrderedDict[str, str] = OrderedDict()
        self._active_loras: tuple = ()
        self.lora_loads = 0  # LoRA files loaded (each once while it stays in the cache)
        self.lora_switches = 0  # passes that changed the set of active LoRAs
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
        self._adapters.clear()
        self._active_loras = ()
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

    def _use_loras(self, loras: tuple[tuple[str, float], ...]) -> None:
        """Make `loras` (name, weight pairs) the loaded model's active adapters, loading
        those not loaded yet and dropping the least recently used beyond the cache;
        the model itself is not reloaded. The edit pipelines share its modules, so they
        get the same adapters."""
        if loras == self._active_loras:
            return
        pipe = self._pipe
        for name, _ in loras:
            if name in self._adapters:
                self._adapters.move_to_end(name)
                continue
            try:
                info = self.lora_registry.get(name)
            except KeyError:
                raise LoraUnavailable(f"LoRA {name} is no longer installed.") from None
            adapter = f"lora_{len(self._adapters)}_{self.lora_loads}"
            try:
                pipe.load_lora_weights(str(info.path), adapter_name=adapter)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise LoraUnavailable(f"LoRA {name} does not fit model {self._loaded_name}: {exc}") from exc
            self._adapters[name] = adapter
            self.lora_loads += 1
        wanted = {name for name, _ in loras}
        while len(self._adapters) > max(self.lora_cache, len(wanted)):
            old = next(name for name in self._adapters if name not in wanted)
            pipe.delete_adapters(self._adapters.pop(old))
        if loras:
            pipe.set_adapters([self._adapters[name] for name, _ in loras], [weight for _, weight in loras])
        elif self._adapters:
            pipe.disable_lora()
        self._active_loras = loras
        self.lora_switches += 1

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
        whole batch's latents, one row per request, and may raise to abort the pass;
        the rows it returns stop at that step (see `StepCallback`).
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
        self._use_loras(first.loras)
        set_scheduler(pipe, first.scheduler, family, first.schedule, seeds=[request.seed for request in requests])
        generators = [torch.Generator(device="cpu").manual_seed(request.seed) for request in requests]
        stopped: dict[int, Any] = {}  # row -> its latents at the step it stopped at

        def step_end(pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
            latents = callback_kwargs["latents"]
            if on_step is not None:
                for row in on_step(step_index + 1, pipeline.num_timesteps, latents) or ():
                    if row not in stopped:
                        stopped[row] = latents[row].clone()
            if stopped:
                # A stopped row keeps its latents of that step while the others go on;
                # once every row has stopped, the pipeline skips the steps left and
                # decodes them (diffusers' own early stop).
                for row, kept in stopped.items():
                    latents[row] = kept
                if len(stopped) == len(requests):
                    pipeline._interrupt = True
            return callback_kwargs

        edits = _edit_inputs(requests) if first.kind != TXT2IMG else {}
        with torch.inference_mode(), _vae_tiled(pipe, first, family), _noise_seed_delta(pipe, generators, requests):
            kwargs = family.call_kwargs(requests)
            if family.clip_skip and first.clip_skip > 1:
                kwargs = _clip_skipped(pipe, kwargs, first.clip_skip)
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


def _clip_skipped(pipe, kwargs: dict[str, Any], clip_skip: int) -> dict[str, Any]:
    """The pass's prompts and negative prompts encoded as A1111 does with clip skip
    `clip_skip`: the text encoder's hidden state that many layers from its end, through
    its final layer norm; handed to the pipeline as embeddings.

    diffusers' own `clip_skip` argument reaches for `text_encoder.text_model`, which
    transformers 5's CLIPTextModel no longer has, and skips for the prompt only.
    """
    encoder = pipe.text_encoder
    final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
    # A text encoder shallower than A1111's twelve layers (the demo model's) keeps its first.
    back = min(clip_skip, encoder.config.num_hidden_layers)

    def encode(texts: list[str]):
        tokens = pipe.tokenizer(
            texts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = encoder(tokens.input_ids.to(pipe._execution_device), output_hidden_states=True).hidden_states
        return final_norm(hidden[-back])

    prompts = kwargs["prompt"]
    negatives = kwargs.get("negative_prompt") or [""] * len(prompts)  # "" is what the pipeline uses for none
    rest = {key: value for key, value in kwargs.items() if key not in ("prompt", "negative_prompt")}
    return {**rest, "prompt_embeds": encode(prompts), "negative_prompt_embeds": encode(negatives)}


class _noise_seed_delta:
    """A1111's eta noise seed delta: the initial noise comes from each request's seed;
    once the pipeline has drawn it (in its `prepare_latents`), the request's generator
    is seeded with seed + delta, so the sampler's own noise (ancestral samplers) comes
    from that. Without a delta the pipeline runs as it is."""

    def __init__(self, pipe, generators: list, requests: list[GenerationRequest]):
        self.pipe = pipe if requests[0].noise_seed_delta else None
        self.generators = generators
        self.requests = requests

    def __enter__(self):
        if self.pipe is None:
            return
        prepare = self.pipe.prepare_latents

        def prepare_then_reseed(*args, **kwargs):
            latents = prepare(*args, **kwargs)
            for generator, request in zip(self.generators, self.requests, strict=True):
                generator.manual_seed(request.seed + request.noise_seed_delta)
            return latents

        self.pipe.prepare_latents = prepare_then_reseed  # this pass only: see __exit__

    def __exit__(self, *exc_info):
        if self.pipe is not None:
            del self.pipe.prepare_latents  # the pipeline's own method again


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


def infotext(
    request: GenerationRequest,
    family: Family = DEFAULT_FAMILY,
    loras: LoraRegistry | None = None,
    *,
    stopped_at: int | None = None,
) -> str:
    """Parameters in AUTOMATIC1111's format, which other tools read from a PNG: a job's
    LoRAs as `<lora:name:weight>` in its prompt and their "Lora hashes", as A1111 writes
    them (hashes where `loras`, the registry, is given). An image interrupted at step
    `stopped_at` says so ("Interrupted: step 3 of 10"); its Steps stay those asked for,
    as A1111 writes them."""
    lines = [" ".join(filter(None, [request.prompt, prompt_tags(request.loras)]))]
    if request.negative_prompt and family.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    fields = [*family.infotext_fields(request), ("Model", request.model)]
    hashes = infotext_hashes(request.loras, loras) if request.loras and loras is not None else ""
    if hashes:
        fields.append(("Lora hashes", json.dumps(hashes)))  # quoted: the value holds ": " and ", "
    if stopped_at is not None:
        fields.append(("Interrupted", f"step {stopped_at} of {request.denoise_steps}"))
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
