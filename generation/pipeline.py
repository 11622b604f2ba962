"""Diffusers pipelines: a registry of models, loaded once per process and kept warm.

This module imports nothing from Django, so it can be benchmarked and reused on its
own. The Django side hands it plain values and a per-step callback.

`demo` is an SD-1.5-shaped pipeline with small random weights (`demo_model.py`). It
makes noise images, fast, on a CPU; real images need a real model: a local diffusers
folder, a single `.safetensors` file or a Hub id (`sources.py`). What differs between
SD 1.x, SDXL, SD3 and Flux is data in `families.py`; this module asks the model's
family for its dtype, its call arguments, its preview and its infotext.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from generation.demo_model import DEMO, demo_pipeline_path
from generation.families import (
    DEFAULT_FAMILY,
    DISCRETE_SCHEDULERS,
    SAMPLER_NAMES,
    Family,
    ModelLimits,
    family_for_pipeline,
)
from generation.sources import (
    DEMO_SOURCE,
    ModelSpec,
    ModelUnavailable,
    detect_family,
    holds_vae,
    hub_cached_file,
    parse_spec,
    safetensors_keys,
)

if TYPE_CHECKING:
    import torch

# torch and diffusers are imported where they are used, so the web process can read
# the registry and scheduler names without loading them.


# scheduler key -> (diffusers class name, AUTOMATIC1111 sampler name, extra config), as SD
# 1.x and SDXL run them. Which class a key means for a model is its family's
# (`Family.schedulers`): "euler" is Euler on the flow for SD3 and Flux, their only one.
SCHEDULERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    key: (class_name, SAMPLER_NAMES[key], extra) for key, (class_name, extra) in DISCRETE_SCHEDULERS.items()
}
DEFAULT_SCHEDULER = "euler"


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

    if isinstance(exc, ModelUnavailable):
        return False  # only an operator can fix it
    transient: tuple[type[BaseException], ...] = (TransientGenerationError, MemoryError, ConnectionError)
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None:
        transient += (oom,)
    return isinstance(exc, transient)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    spec: ModelSpec
    size_cap: int  # besides the family's own limit

    @property
    def source(self) -> str:
        return self.spec.source

    @property
    def is_demo(self) -> bool:
        return self.name == DEMO

    @property
    def offload(self) -> bool:
        return self.spec.offload

    @property
    def family(self) -> Family:
        return _family(self.spec)

    @property
    def max_size(self) -> int:
        return min(self.family.max_size, self.size_cap)

    def limits(self) -> ModelLimits:
        family = self.family
        return ModelLimits(
            model=self.name,
            family=family,
            min_size=family.min_size,
            max_size=self.max_size,
            size_step=family.size_step,
            default_size=min(family.default_size, self.max_size),
        )


_families: dict[ModelSpec, Family] = {}


def _family(spec: ModelSpec) -> Family:
    # Read from the files once; a guess (a Hub model not pulled yet) is read again
    # next time, so the family is right as soon as the files are here.
    if spec in _families:
        return _families[spec]
    family, certain = detect_family(spec)
    if certain:
        _families[spec] = family
    return family


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
    """Named models: `demo` plus local diffusers folders, `.safetensors` files and Hub ids.

    `extra` maps a name to an `IMAGEGEN_MODELS` source, with its options (see `sources.py`).
    """

    DEMO_MAX_SIZE = 1024
    MAX_SIZE = 2048

    def __init__(self, extra: dict[str, str] | None = None):
        self._models = {DEMO: ModelInfo(DEMO, ModelSpec(DEMO_SOURCE), self.DEMO_MAX_SIZE)}
        for name, text in (extra or {}).items():
            self._models[name] = ModelInfo(name, parse_spec(str(text)), self.MAX_SIZE)

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> ModelInfo:
        try:
            return self._models[name]
        except KeyError:
            raise KeyError(f"Unknown model {name!r}; known: {', '.join(self._models)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def limits(self, name: str) -> ModelLimits:
        """The family and the limits of model `name` (KeyError when unknown)."""
        return self.get(name).limits()


# --- Loading and running ------------------------------------------------------------


def resolve_device(preference: str = "auto") -> str:
    if preference != "auto":
        return preference
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(info: ModelInfo, *, cache_dir: Path, device: str, on_download: Callable[[], None] | None = None):
    """Load a model's pipeline onto `device`, in its family's dtype on CUDA.

    A Hub model missing from the cache is downloaded first when the machine is online
    (`on_download` is called before that starts); everything else is read offline.
    """
    family = info.family
    dtype = family.torch_dtype(device)
    kind = info.spec.kind
    if kind == "demo":
        pipe = _from_folder(demo_pipeline_path(cache_dir), family, dtype)
    elif kind == "hub":
        pipe = _from_folder(hub_snapshot(info, on_download=on_download), family, dtype)
    elif kind == "file":
        pipe = _from_single_file(info, family, dtype)
    else:
        source = Path(info.source).expanduser()
        if not (source / "model_index.json").is_file():
            raise ModelUnavailable(
                f"Model {info.name!r}: {source} is not a diffusers folder (no model_index.json); "
                "fix its path in IMAGEGEN_MODELS."
            )
        pipe = _from_folder(source, family, dtype)
    return place_pipeline(pipe, device=device, offload=info.offload)


def place_pipeline(pipe, *, device: str, offload: bool):
    """Move the pipeline to `device`; in the memory mode only the running part is there.

    The memory mode keeps each model (text encoders, UNet or transformer, VAE) in the
    host's memory and moves it to the GPU while it runs (diffusers' model CPU offload),
    and decodes the image in tiles, so an SDXL or Flux model fits a smaller GPU at
    some cost in speed.
    """
    if offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    if offload and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_folder(folder: Path, family: Family, dtype, **components):
    from diffusers import AutoPipelineForText2Image

    index = json.loads((Path(folder) / "model_index.json").read_text())
    # The folder's own pipeline class decides its family's arguments: the registry's
    # may be a guess made before the files were here.
    family = family_for_pipeline(index.get("_class_name", "")) or family
    return AutoPipelineForText2Image.from_pretrained(
        str(folder), dtype=dtype, local_files_only=True, **family.load_kwargs, **components
    )


def _from_single_file(info: ModelInfo, family: Family, dtype):
    import diffusers

    path = Path(info.source).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"Model {info.name!r}: {path} does not exist; fix its path in IMAGEGEN_MODELS.")
    if transformer_only(info):
        # The other parts (text encoders, VAE) come from the family's repository.
        base = single_file_config(info)
        transformer = getattr(diffusers, family.transformer).from_single_file(
            str(path), config=str(base), subfolder="transformer", dtype=dtype, local_files_only=True
        )
        return _from_folder(base, family, dtype, transformer=transformer)
    config = single_file_config(info)
    pipeline_class = getattr(diffusers, family.pipelines[0])
    return pipeline_class.from_single_file(
        str(path), config=str(config), dtype=dtype, local_files_only=True, **family.load_kwargs
    )


def transformer_only(info: ModelInfo) -> bool:
    """Whether a single-file model holds its family's transformer alone (as Flux.1's files do)."""
    path = Path(info.source).expanduser()
    if not info.family.transformer or path.suffix != ".safetensors" or not path.is_file():
        return False
    return not holds_vae(safetensors_keys(path))


def single_file_config(info: ModelInfo, *, download: bool = False) -> Path:
    """The local folder a single-file checkpoint is read with.

    A local folder (`config=`), or a Hub repository from the Hub cache: its `config=`,
    else its family's reference repository. For a checkpoint with all its parts only
    the configs are needed; for a transformer alone, the other parts' weights too.
    Loading never downloads them (`manage.py model_pull NAME` does, with `download`).
    """
    wanted = info.spec.config or info.family.single_file_config
    if Path(wanted).expanduser().is_dir():
        return Path(wanted).expanduser()
    repo_id, _, revision = wanted.partition("@")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "tokenizer*/*", "*/spiece.model"]
    needs = "configs"
    if transformer_only(info):
        patterns += ["text_encoder*/*", "vae/*"]
        needs = "text encoders, VAE and configs"
    try:
        folder = snapshot_download(
            repo_id, revision=revision or None, allow_patterns=patterns, local_files_only=not download
        )
    except Exception as exc:
        raise ModelUnavailable(
            f"Model {info.name!r}: the single-file checkpoint needs the {needs} of {repo_id}, which are not in "
            f"the Hub cache. Run `manage.py model_pull {info.name}` where the machine is online, or name a local "
            f"diffusers folder of the same architecture with ';config=/path' in IMAGEGEN_MODELS."
        ) from exc
    return Path(folder)


def hub_snapshot(info: ModelInfo, *, on_download: Callable[[], None] | None = None, progress: bool = False) -> Path:
    """The local folder of a Hub model, downloading it into the Hub cache if it is not there.

    Offline (HF_HUB_OFFLINE=1), or when the download fails, a ModelUnavailable names
    the model and says how to fix it.
    """
    from huggingface_hub import constants, snapshot_download

    repo_id, revision = info.spec.repo_id, info.spec.revision
    if hub_cached_file(repo_id, "model_index.json", revision) is not None:
        try:
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except Exception:
            pass  # a partial cache: download what is missing, below
    where = f"{repo_id}" + (f" at revision {revision}" if revision else "")
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(
            f"Model {info.name!r} ({where}) is not in the Hub cache ({constants.HF_HUB_CACHE}) and this machine "
            f"is offline (HF_HUB_OFFLINE). Run `manage.py model_pull {info.name}` on a machine that is online with "
            "the same cache, or copy the model's folder there and register the folder instead."
        )
    if on_download is not None:
        on_download()
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    if not progress:
        diffusers_logging.disable_progress_bar()
    try:
        # diffusers picks the files a pipeline needs (safetensors, no duplicate formats).
        return Path(DiffusionPipeline.download(repo_id, revision=revision))
    except Exception as exc:
        raise ModelUnavailable(
            f"Model {info.name!r} ({where}) could not be downloaded: {type(exc).__name__}: {exc}. Check the id and "
            "the network; for a gated model accept its licence on the Hub and set HF_TOKEN, then run "
            f"`manage.py model_pull {info.name}`."
        ) from exc
    finally:
        if not progress:
            diffusers_logging.enable_progress_bar()


def set_scheduler(pipe, name: str, family: Family = DEFAULT_FAMILY) -> None:
    import diffusers

    class_name, extra = family.schedulers[name]
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
        self._family: Family = DEFAULT_FAMILY
        self._lock = threading.Lock()
        self.loads = 0

    @property
    def device(self) -> str:
        # Resolved lazily: CUDA must not be touched before the worker process forks.
        if self._device is None:
            self._device = resolve_device(self._device_preference)
        return self._device

    def load(self, name: str, *, on_download: Callable[[], None] | None = None):
        """The pipeline of model `name`, loading it (in place of the one loaded) if needed.

        `on_download` is called if its files must be downloaded first.
        """
        if self._loaded_name != name:
            info = self.registry.get(name)
            self._pipe = None
            self._loaded_name = None
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
            self._pipe = load_pipeline(info, cache_dir=self.cache_dir, device=self.device, on_download=on_download)
            self._family = family_for_pipeline(type(self._pipe).__name__) or info.family
            self._loaded_name = name
            self.loads += 1
        return self._pipe

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
        import torch

        first = requests[0]
        with self._lock:
            pipe = self.load(first.model)
            family = self._family
            set_scheduler(pipe, first.scheduler, family)
            generators = [torch.Generator(device="cpu").manual_seed(request.seed) for request in requests]

            def step_end(pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
                if on_step is not None:
                    on_step(step_index + 1, pipeline.num_timesteps, callback_kwargs["latents"])
                return callback_kwargs

            with torch.inference_mode():
                kwargs = family.call_kwargs(requests)
                if family.zeros_for_no_negative and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
                    kwargs = _zeros_for_no_negative(pipe, requests, kwargs)
                result = pipe(
                    **kwargs,
                    generator=generators,
                    callback_on_step_end=step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                    output_type="pil",
                )
            return list(result.images)


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
