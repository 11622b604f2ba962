"""Diffusers pipelines: a registry of models, loaded once per process and kept warm.

This module imports nothing from Django, so it can be benchmarked and reused on its
own. The Django side hands it plain values and a per-step callback.

`demo` is an SD-1.5-shaped pipeline with small random weights (`demo_model.py`). It
makes noise images, fast, on a CPU; real images need a real model: a local diffusers
folder or a single `.safetensors` file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from generation.demo_model import DEMO, demo_pipeline_path

if TYPE_CHECKING:
    import torch

# torch and diffusers are imported where they are used, so the web process can read
# the registry and scheduler names without loading them.


# scheduler key -> (diffusers class name, AUTOMATIC1111 sampler name, extra config)
SCHEDULERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", "Euler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", "Euler a", {}),
    "ddim": ("DDIMScheduler", "DDIM", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", "DPM++ 2M", {}),
    "pndm": ("PNDMScheduler", "PLMS", {"skip_prk_steps": True}),
}
DEFAULT_SCHEDULER = "euler"

# Linear latent -> RGB approximation for SD-1.x latents (4 channels), used for cheap
# previews without a VAE decode.
_PREVIEW_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


class GenerationCancelled(Exception):
    """The job was cancelled while it ran; its partial result is discarded."""


class GenerationTimeout(Exception):
    """The job ran past its time limit."""


class TransientGenerationError(Exception):
    """A failure that may go away on its own (memory pressure, a busy device)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """The device (or the host) ran out of memory: a smaller pass may fit."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return isinstance(exc, MemoryError) or (oom is not None and isinstance(exc, oom))


def is_transient(exc: BaseException) -> bool:
    import torch

    transient: tuple[type[BaseException], ...] = (TransientGenerationError, MemoryError, ConnectionError)
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None:
        transient += (oom,)
    return isinstance(exc, transient)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    max_size: int

    @property
    def is_demo(self) -> bool:
        return self.name == DEMO


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    scheduler: str = DEFAULT_SCHEDULER


# (step done, 1-based; total steps; current latents)
StepCallback = Callable[[int, int, "torch.Tensor"], None]


class ModelRegistry:
    """Named models: `demo` plus local diffusers folders or `.safetensors` files."""

    DEMO_MAX_SIZE = 1024
    MAX_SIZE = 2048

    def __init__(self, extra: dict[str, str] | None = None):
        self._models = {DEMO: ModelInfo(DEMO, DEMO, self.DEMO_MAX_SIZE)}
        for name, path in (extra or {}).items():
            self._models[name] = ModelInfo(name, str(path), self.MAX_SIZE)

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> ModelInfo:
        try:
            return self._models[name]
        except KeyError:
            raise KeyError(f"Unknown model {name!r}; known: {', '.join(self._models)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._models


# --- Loading and running ------------------------------------------------------------


def resolve_device(preference: str = "auto") -> str:
    if preference != "auto":
        return preference
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(info: ModelInfo, *, cache_dir: Path, device: str):
    """Load a model's pipeline offline onto `device` (fp16 on CUDA)."""
    import torch
    from diffusers import StableDiffusionPipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if info.is_demo:
        source = demo_pipeline_path(cache_dir)
    else:
        source = Path(info.source)
        if not source.exists():
            raise FileNotFoundError(f"Model {info.name!r}: {source} does not exist")
    common = {"dtype": dtype, "local_files_only": True, "safety_checker": None, "requires_safety_checker": False}
    if source.is_file():
        pipe = StableDiffusionPipeline.from_single_file(str(source), **common)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(str(source), **common)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def set_scheduler(pipe, name: str) -> None:
    import diffusers

    class_name, _, extra = SCHEDULERS[name]
    if type(pipe.scheduler).__name__ != class_name:
        pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **extra)


class ImageGenerator:
    """Keeps one pipeline loaded between jobs; a job for another model swaps it."""

    def __init__(self, registry: ModelRegistry, *, cache_dir: Path, device: str = "auto"):
        self.registry = registry
        self.cache_dir = Path(cache_dir)
        self._device_preference = device
        self._device: str | None = None
        self._loaded_name: str | None = None
        self._pipe = None
        self._lock = threading.Lock()
        self.loads = 0

    @property
    def device(self) -> str:
        # Resolved lazily: CUDA must not be touched before the worker process forks.
        if self._device is None:
            self._device = resolve_device(self._device_preference)
        return self._device

    def load(self, name: str):
        """The pipeline of model `name`, loading it (in place of the one loaded) if needed."""
        if self._loaded_name != name:
            info = self.registry.get(name)
            self._pipe = None
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            self._pipe = load_pipeline(info, cache_dir=self.cache_dir, device=self.device)
            self._loaded_name = name
            self.loads += 1
        return self._pipe

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
        import torch

        first = requests[0]
        with self._lock:
            pipe = self.load(first.model)
            set_scheduler(pipe, first.scheduler)
            generators = [torch.Generator(device="cpu").manual_seed(request.seed) for request in requests]

            def step_end(pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
                if on_step is not None:
                    on_step(step_index + 1, pipeline.num_timesteps, callback_kwargs["latents"])
                return callback_kwargs

            negatives = [request.negative_prompt for request in requests]
            with torch.inference_mode():
                result = pipe(
                    prompt=[request.prompt for request in requests],
                    # An empty negative prompt is what the pipeline uses for none.
                    negative_prompt=negatives if any(negatives) else None,
                    width=first.width,
                    height=first.height,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance,
                    generator=generators,
                    callback_on_step_end=step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                    output_type="pil",
                )
            return list(result.images)


# --- Output -------------------------------------------------------------------------


def infotext(request: GenerationRequest) -> str:
    """Parameters in AUTOMATIC1111's format, which other tools read from a PNG."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    sampler = SCHEDULERS[request.scheduler][1]
    lines.append(
        f"Steps: {request.steps}, Sampler: {sampler}, CFG scale: {request.guidance:g}, "
        f"Seed: {request.seed}, Size: {request.width}x{request.height}, Model: {request.model}"
    )
    return "\n".join(lines)


def latents_preview(latents: torch.Tensor, *, max_size: int = 128) -> Image.Image:
    """A small RGB picture from SD latents, without a VAE decode."""
    import torch

    sample = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", sample, torch.tensor(_PREVIEW_FACTORS, dtype=sample.dtype))
    rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    picture = Image.fromarray(rgb, mode="RGB")
    picture.thumbnail((max_size, max_size))
    return picture
