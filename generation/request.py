"""What the worker asks of an image generator: a batch of requests in, images out.

`ImageGenerator` is the one interface the GPU worker drives: the diffusers generator
(`generation.pipeline.DiffusersGenerator`) and every test double implement it,
batching included. This module imports nothing from Django or torch, so the
families, the pipeline and the worker can all import it without a circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_SCHEDULER = "euler"


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


# (step done, 1-based; total steps; the pass's current latents, one row per request).
# It may raise to stop the pass: GenerationCancelled, GenerationTimeout, or the worker's own.
StepCallback = Callable[[int, int, Any], None]


class ImageGenerator(Protocol):
    """Keeps a model loaded and makes the images of a pass.

    `generate_batch` takes requests that share a pass key (model, size, steps,
    guidance, scheduler) and returns one image per request, in order; each image is
    the one its request would get alone. `on_step` is called after every step.
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
