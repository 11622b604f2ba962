"""What the worker asks of an image generator: a batch of requests in, images out.

`ImageGenerator` is the one interface the GPU worker drives: the diffusers generator
(`generation.pipeline.DiffusersGenerator`) and every test double implement it,
batching included. This module imports nothing from Django or torch, so the
families, the pipeline and the worker can all import it without a circle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_SCHEDULER = "euler"
DEFAULT_SCHEDULE = "automatic"

# What a job does with the model: make an image from its prompt, or continue from one.
TXT2IMG = "txt2img"  # a new image from the prompt
IMG2IMG = "img2img"  # the source image, re-noised by `strength` and denoised to the prompt
INPAINT = "inpaint"  # the same inside the mask; outside it the source's pixels are kept
UPSCALE = "upscale"  # the source enlarged to the job's size, then a light image-to-image pass
KINDS = (TXT2IMG, IMG2IMG, INPAINT, UPSCALE)
EDIT_KINDS = (IMG2IMG, INPAINT, UPSCALE)


def denoise_steps(steps: int, strength: float | None) -> int:
    """How many steps an edit of `strength` runs out of `steps`, as diffusers' image-to-image
    pipelines count them (at least one: see `pipeline_steps`)."""
    if strength is None:
        return steps
    return max(1, min(int(steps * strength), steps))


def pipeline_steps(steps: int, strength: float | None) -> int:
    """The `num_inference_steps` to give a pipeline so an edit of low strength still runs a step.

    A pipeline runs int(steps x strength) steps and refuses none; a strength too low
    for the steps asked gets the fewest steps that make one.
    """
    if strength is None or int(steps * strength) >= 1:
        return steps
    return math.ceil(1 / strength + 1e-9)


class GenerationCancelled(Exception):
    """The job was cancelled while it ran; its partial result is discarded."""


class GenerationTimeout(Exception):
    """The job ran past its time limit."""


class TransientGenerationError(Exception):
    """A failure that may go away on its own (memory pressure, a busy device)."""


@dataclass(frozen=True)
class GenerationRequest:
    """One image to make: what a job asks of the pipeline."""

    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    scheduler: str = DEFAULT_SCHEDULER
    schedule: str = DEFAULT_SCHEDULE  # A1111's noise schedule: automatic, karras, exponential, sgm_uniform
    # LoRAs applied, as (name, weight) pairs sorted by name; a pass shares one set.
    loras: tuple[tuple[str, float], ...] = ()
    # AUTOMATIC1111's clip skip: 1 encodes the prompt with the text encoder's last layer,
    # 2 with the one before it... (families without it ignore it: `Family.clip_skip`).
    clip_skip: int = 1
    # A1111's eta noise seed delta: the initial noise comes from the seed, the sampler's
    # own noise (ancestral samplers) from seed + delta.
    noise_seed_delta: int = 0
    kind: str = TXT2IMG
    strength: float | None = None  # how far an edit may move from its source (0-1)
    mask_blur: int = 4  # pixels of soft edge where an inpainted area meets the kept source
    # An edit's source image (RGB) and, for inpainting, its mask (L: 255 = repaint).
    image: Image.Image | None = field(default=None, compare=False, repr=False)
    mask: Image.Image | None = field(default=None, compare=False, repr=False)

    @property
    def denoise_steps(self) -> int:
        return denoise_steps(self.steps, self.strength if self.kind != TXT2IMG else None)


# (step done, 1-based; total steps; the pass's current latents, one row per request).
# It may raise to stop the pass: GenerationCancelled, GenerationTimeout, or the worker's own.
# It returns the rows that stop here (or stopped before), or None: a stopped row's image
# is made from its latents as they are at the step that first names it (A1111's
# interrupt), while the other rows go on; once every row has stopped, the pass ends
# (and decodes).
StepCallback = Callable[[int, int, Any], Collection[int] | None]


class ImageGenerator(Protocol):
    """Keeps a model loaded and makes the images of a pass.

    `generate_batch` takes requests that share a pass key (model, size, steps,
    guidance, scheduler, schedule, LoRAs, clip skip, noise seed delta, kind, strength)
    and returns one image per request, in order; each image is the one its request
    would get alone. `on_step` is called after every step; the rows
    it returns stop there (see `StepCallback`).
    """

    @property
    def device(self) -> str: ...

    def load(self, name: str) -> object:
        """Load model `name` (replacing the one loaded), if it is not loaded already."""
        ...

    def needs_download(self, name: str) -> bool:
        """Whether loading model `name` would download its files first."""
        ...

    def generate_batch(
        self, requests: list[GenerationRequest], on_step: StepCallback | None = None
    ) -> list[Image.Image]: ...


# --- LoRAs as a job stores them --------------------------------------------------------


def format_loras(pairs) -> str:
    """A job's LoRA set as stored: "name:weight" pairs sorted by name, joined by spaces
    ("" for none), so that jobs with the same set compare equal. Weight 0 is kept: it
    is what was asked for."""
    return " ".join(f"{name}:{float(weight):g}" for name, weight in sorted(pairs))


def parse_loras(text: str) -> tuple[tuple[str, float], ...]:
    """The (name, weight) pairs of a stored LoRA set."""
    pairs = []
    for item in (text or "").split():
        name, _, weight = item.rpartition(":")
        pairs.append((name, float(weight)))
    return tuple(pairs)
