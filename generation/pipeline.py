"""Diffusers pipelines: a registry of models, loaded once per process and kept warm.

This module imports nothing from Django, so it can be benchmarked and reused on its
own. The Django side hands it plain values and a per-step callback.

`demo` is an SD-1.5-shaped pipeline with small random weights, built offline from
configs (no download) and deterministic. It makes noise images, fast, on a CPU; real
images need a real model: a local diffusers folder or a single `.safetensors` file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import torch

# torch and diffusers are imported where they are used, so the web process can read
# the registry and scheduler names without loading them.

logger = logging.getLogger(__name__)

DEMO = "demo"
# Bump when the random pipelines' configs change, so a stale cache is not reused.
DEMO_VERSION = "1"

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


# --- The demo model ---------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2 / CLIP byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _write_demo_tokenizer(folder: Path) -> None:
    """Write a character-level CLIP tokenizer (no merges)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


# Layer shapes of the random-weight pipelines. `demo` is tiny, for CPUs and tests;
# `sd15` has the layer sizes of Stable Diffusion 1.5 (the same compute per step), for
# measuring the system on a GPU without downloading weights.
RANDOM_SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {
        "unet": {
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        # Four blocks give the usual x8 latent scale of SD 1.5.
        "vae": {"block_out_channels": (8, 16, 16, 16), "layers_per_block": 1, "norm_num_groups": 8},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    },
    "sd15": {
        "unet": {
            "layers_per_block": 2,
            "block_out_channels": (320, 640, 1280, 1280),
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
            "norm_num_groups": 32,
        },
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32},
        "text": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "hidden_act": "quick_gelu",
            "vocab_size": 49408,
        },
    },
}


def random_modules(shape: str, tokenizer) -> dict[str, Any]:
    """The UNet, VAE and text encoder of `shape`, with seeded random weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = RANDOM_SHAPES[shape]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, **configs["unet"])
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=512,
        **configs["vae"],
    )
    torch.manual_seed(2)
    text_config = {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **configs["text"],
    }
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def demo_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    _write_demo_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def build_random_pipeline(target: Path, shape: str = DEMO) -> None:
    """Build a pipeline of `shape` from configs with seeded random weights and save it."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    work = Path(tempfile.mkdtemp(prefix=f"{shape}-build-", dir=target.parent))
    try:
        tokenizer = demo_tokenizer(work / "tokenizer")
        modules = random_modules(shape, tokenizer)
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
        )
        pipe = StableDiffusionPipeline(
            **modules,
            tokenizer=tokenizer,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        if shape != DEMO:
            pipe.to(torch.float16)  # Half the disk; loaded as fp16 on a GPU anyway.
        pipe.save_pretrained(work / "pipeline")
        try:
            os.rename(work / "pipeline", target)
        except OSError:
            # Another process finished the same build first; its copy is identical.
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def random_pipeline_path(cache_dir: Path, shape: str = DEMO) -> Path:
    """Where the random-weight pipeline of `shape` lives, building it on first use."""
    if shape not in RANDOM_SHAPES:
        raise KeyError(f"Unknown shape {shape!r}; known: {', '.join(RANDOM_SHAPES)}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{shape}-v{DEMO_VERSION}"
    if not (target / "model_index.json").exists():
        logger.info("Building the %s model in %s", shape, target)
        build_random_pipeline(target, shape)
    return target


def demo_pipeline_path(cache_dir: Path) -> Path:
    """Where the demo pipeline lives, building it on first use."""
    return random_pipeline_path(cache_dir, DEMO)


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


class Generator:
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

    def pipeline(self, name: str):
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
        import torch

        with self._lock:
            pipe = self.pipeline(request.model)
            set_scheduler(pipe, request.scheduler)
            generator = torch.Generator(device="cpu").manual_seed(request.seed)

            def step_end(pipeline, step_index: int, timestep, callback_kwargs: dict) -> dict:
                if on_step is not None:
                    on_step(step_index + 1, pipeline.num_timesteps, callback_kwargs["latents"])
                return callback_kwargs

            with torch.inference_mode():
                result = pipe(
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt or None,
                    width=request.width,
                    height=request.height,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance,
                    generator=generator,
                    callback_on_step_end=step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                    output_type="pil",
                )
            return result.images[0]


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
