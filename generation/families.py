"""What differs between model families, as data: sizes, dtype, guidance, schedulers, previews.

A family is an architecture that diffusers runs with one text-to-image pipeline class:
Stable Diffusion 1.x/2.x, SDXL, SD3 and Flux. Everything else in the service (the
form, the admin, the worker's call to the pipeline, the preview, the PNG's infotext)
asks the model's family instead of knowing about architectures itself. Like
`pipeline.py`, this module imports nothing from Django, and torch only where a
preview is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from generation.request import INPAINT, TXT2IMG, UPSCALE, pipeline_steps

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from generation.request import GenerationRequest


# A1111's noise schedules (its `scheduler` field): key -> (label, the diffusers scheduler
# config that gives it), as diffusers' scheduler overview maps them. A schedule turns the
# others off (a scheduler takes one of the sigma options at a time); "automatic" is the
# sampler's own (see `Sampler.automatic`).
_NO_SIGMAS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
SCHEDULES: dict[str, tuple[str, dict[str, Any]]] = {
    "automatic": ("Automatic", {}),
    "karras": ("Karras", {**_NO_SIGMAS, "use_karras_sigmas": True}),
    "exponential": ("Exponential", {**_NO_SIGMAS, "use_exponential_sigmas": True}),
    "sgm_uniform": ("SGM Uniform", {**_NO_SIGMAS, "timestep_spacing": "trailing"}),
}
# Which schedules a scheduler class can give: those whose option its constructor takes.
EVERY_SCHEDULE = tuple(SCHEDULES)
SPACING_ONLY = ("automatic", "sgm_uniform")  # `timestep_spacing`, no sigma options
SIGMAS_ONLY = ("automatic", "karras", "exponential")  # sigma options, no `timestep_spacing`


@dataclass(frozen=True)
class Sampler:
    """A sampler as AUTOMATIC1111 names it, and the diffusers scheduler that runs it."""

    label: str  # A1111's name: what the form, the infotext and the API show
    scheduler: str  # the diffusers class
    config: dict[str, Any] = field(default_factory=dict)
    schedules: tuple[str, ...] = ("automatic",)
    aliases: tuple[str, ...] = ()  # A1111's other names for it ("k_euler_a")
    # The schedule "automatic" gives, as in A1111 1.9+ (DPM++ 2M is Karras unless told);
    # "automatic" here: the model's own schedule.
    automatic: str = "automatic"
    # Its noise comes from a Brownian tree (DPMSolverSDEScheduler), seeded with each
    # image's seed so that an image does not depend on the others in its pass.
    brownian: bool = False


# The UNet families' samplers (noise prediction on a discrete schedule), as the common
# A1111 -> diffusers table maps them. Keys are what a job stores; the first is the default.
_SDE = {"algorithm_type": "sde-dpmsolver++"}
DISCRETE_SCHEDULERS: dict[str, Sampler] = {
    "euler": Sampler("Euler", "EulerDiscreteScheduler", schedules=EVERY_SCHEDULE, aliases=("k_euler",)),
    "euler_a": Sampler(
        "Euler a", "EulerAncestralDiscreteScheduler", schedules=SPACING_ONLY, aliases=("k_euler_a", "k_euler_ancestral")
    ),
    "heun": Sampler("Heun", "HeunDiscreteScheduler", schedules=EVERY_SCHEDULE, aliases=("k_heun",)),
    "lms": Sampler("LMS", "LMSDiscreteScheduler", schedules=EVERY_SCHEDULE, aliases=("k_lms",)),
    "dpm2": Sampler(
        "DPM2", "KDPM2DiscreteScheduler", schedules=EVERY_SCHEDULE, aliases=("k_dpm_2",), automatic="karras"
    ),
    "dpm2_a": Sampler(
        "DPM2 a",
        "KDPM2AncestralDiscreteScheduler",
        schedules=EVERY_SCHEDULE,
        aliases=("k_dpm_2_a",),
        automatic="karras",
    ),
    "dpmpp_2m": Sampler(
        "DPM++ 2M", "DPMSolverMultistepScheduler", schedules=EVERY_SCHEDULE, aliases=("k_dpmpp_2m",), automatic="karras"
    ),
    "dpmpp_sde": Sampler(
        "DPM++ SDE",
        "DPMSolverSDEScheduler",
        schedules=EVERY_SCHEDULE,
        aliases=("k_dpmpp_sde",),
        automatic="karras",
        brownian=True,
    ),
    "dpmpp_2m_sde": Sampler(
        "DPM++ 2M SDE",
        "DPMSolverMultistepScheduler",
        _SDE,
        schedules=EVERY_SCHEDULE,
        aliases=("k_dpmpp_2m_sde",),
        automatic="exponential",
    ),
    "dpmpp_3m_sde": Sampler(
        "DPM++ 3M SDE",
        "DPMSolverMultistepScheduler",
        {**_SDE, "solver_order": 3},
        schedules=EVERY_SCHEDULE,
        aliases=("k_dpmpp_3m_sde",),
        automatic="exponential",
    ),
    "unipc": Sampler("UniPC", "UniPCMultistepScheduler", schedules=EVERY_SCHEDULE, aliases=("unipc",)),
    "ddim": Sampler("DDIM", "DDIMScheduler", schedules=SPACING_ONLY, aliases=("ddim",)),
    "pndm": Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, schedules=SPACING_ONLY, aliases=("plms",)),
    "lcm": Sampler("LCM", "LCMScheduler", schedules=SPACING_ONLY, aliases=("k_lcm",)),
}
# SD3 and Flux are flow-matching models: their samplers are diffusers' flow-matching
# ones, which take the model's shift from its own config. Heun runs with SD3 only (Flux's
# pipelines hand the scheduler their own sigmas, which FlowMatchHeun does not take);
# DPM++ and UniPC with flow sigmas make an image from text but cannot continue from an
# image (no `scale_noise`), so they are not offered.
FLOW_SCHEDULERS: dict[str, Sampler] = {
    "euler": Sampler("Euler", "FlowMatchEulerDiscreteScheduler", schedules=SIGMAS_ONLY, aliases=("k_euler",)),
}
SD3_SCHEDULERS: dict[str, Sampler] = {
    **FLOW_SCHEDULERS,
    "heun": Sampler("Heun", "FlowMatchHeunDiscreteScheduler", aliases=("k_heun",)),
}

# scheduler key -> AUTOMATIC1111's sampler name (what the infotext and the form show). A
# key names the same sampler in every family; the flow families' keys are among these.
SAMPLER_NAMES = {key: sampler.label for key, sampler in DISCRETE_SCHEDULERS.items()}


@dataclass(frozen=True)
class LatentFormat:
    """How a cheap preview is made from a family's latents: a linear map to RGB.

    `packed`: the latents are 2x2 patches packed into a sequence of tokens
    (batch, (h/2)*(w/2), channels*4), as Flux's pipeline keeps them.
    """

    channels: int
    rgb_factors: tuple[tuple[float, float, float], ...]
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    packed: bool = False
    vae_scale: int = 8


# Linear latent -> RGB fits. SD 1.x's are the ones this project has always used; the
# SDXL, SD3 and Flux fits are the published ones that the common UIs' live previews use.
SD1_LATENTS = LatentFormat(
    channels=4,
    rgb_factors=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
)
SDXL_LATENTS = LatentFormat(
    channels=4,
    rgb_factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    rgb_bias=(0.1084, -0.0175, -0.0011),
)
SD3_LATENTS = LatentFormat(
    channels=16,
    rgb_factors=(
        (-0.0922, -0.0175, 0.0749),
        (0.0311, 0.0633, 0.0954),
        (0.1994, 0.0927, 0.0458),
        (0.0856, 0.0339, 0.0902),
        (0.0587, 0.0272, -0.0496),
        (-0.0006, 0.1104, 0.0309),
        (0.0978, 0.0306, 0.0427),
        (-0.0042, 0.1038, 0.1358),
        (-0.0194, 0.0020, 0.0669),
        (-0.0488, 0.0130, -0.0268),
        (0.0922, 0.0988, 0.0951),
        (-0.0278, 0.0524, -0.0542),
        (0.0332, 0.0456, 0.0895),
        (-0.0069, -0.0030, -0.0810),
        (-0.0596, -0.0465, -0.0293),
        (-0.1448, -0.1463, -0.1189),
    ),
    rgb_bias=(0.2394, 0.2135, 0.1925),
)
FLUX_LATENTS = LatentFormat(
    channels=16,
    rgb_factors=(
        (-0.0346, 0.0244, 0.0681),
        (0.0034, 0.0210, 0.0687),
        (0.0275, -0.0668, -0.0433),
        (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329),
        (0.0004, 0.0383, 0.0115),
        (0.0405, 0.0861, 0.0915),
        (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180),
        (0.1008, 0.0755, -0.0421),
        (-0.0515, 0.0201, 0.0011),
        (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749),
        (-0.1264, -0.0522, -0.1103),
        (-0.0280, -0.0881, -0.0499),
        (-0.1262, -0.0982, -0.0778),
    ),
    rgb_bias=(-0.0329, -0.0718, -0.0851),
    packed=True,
)


# The bounds of any image size (a family or a model may allow less): the one home of
# these numbers for the form, the APIs and the registry.
SIZE_MIN = 64
SIZE_MAX = 2048
SIZE_STEP = 8


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    # model_index.json's `_class_name` values that belong to this family; the first is
    # the class a single-file checkpoint is loaded with.
    pipelines: tuple[str, ...]
    latents: LatentFormat
    default_size: int
    size_step: int  # the VAE's x8 times the transformer's patch size, where it has one
    max_size: int = SIZE_MAX
    min_size: int = SIZE_MIN
    dtype: str = "float16"  # on CUDA; a CPU runs float32
    # "cfg": classifier-free guidance (two passes a step, a negative prompt applies);
    # "distilled": the guidance strength is an input of the model (one pass, no negative prompt).
    guidance: str = "cfg"
    default_guidance: float = 7.0
    default_steps: int = 20
    negative_prompt: bool = True
    schedulers: dict[str, Sampler] = field(default_factory=lambda: DISCRETE_SCHEDULERS)  # key -> sampler
    # Extra arguments for from_pretrained / from_single_file.
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    # The Hub repository whose configs a single-file checkpoint of this family is read
    # with, unless the model names its own (`config=`).
    single_file_config: str = ""
    # The denoiser's class where a checkpoint may hold it alone (Flux.1's are published
    # so): the other parts then come from the repository above.
    transformer: str = ""
    # SDXL's pipeline guides with zeros, not the encoded empty text, when there is no
    # negative prompt (`force_zeros_for_empty_prompt`): a pass mixing requests with and
    # without one needs its text encoded per request (see pipeline.py).
    zeros_for_no_negative: bool = False
    # The diffusers pipelines that continue from an image, built from the loaded
    # text-to-image one's components (`from_pipe`): kind -> class name.
    edit_pipelines: dict[str, str] = field(default_factory=dict)
    # An instruction-edit model (Flux Kontext): its pipeline edits the image it is given
    # as the prompt says, with no strength; without an image it makes a new one.
    instruction: bool = False
    # Extra arguments for an edit pass.
    edit_kwargs: dict[str, Any] = field(default_factory=dict)
    # The pipeline makes an image of `max_area` pixels in the asked shape (Kontext's,
    # a megapixel unless told): it is told the asked size's area.
    sized_by_area: bool = False
    # The speed mode (`speed.py`) is on by default on CUDA: set where it was measured
    # faster than eager with the same images (docs/benchmarks.md).
    speed_default: bool = False
    # The family's pipeline converts a float16 VAE whose config says `force_upcast` to
    # float32 around every decode (SDXL's overflows in float16): the speed mode runs it
    # in bfloat16 instead.
    vae_upcasts: bool = False
    # The prompt is encoded from an earlier layer of the text encoder when a job asks
    # (A1111's clip skip: see pipeline.py). AUTOMATIC1111 applies it to SD 1.x/2.x (to
    # SDXL only behind an option that is off by default), so the other families ignore
    # it: the form stores 1 for their jobs.
    clip_skip: bool = False

    @property
    def default_scheduler(self) -> str:
        return next(iter(self.schedulers))

    def effective_schedule(self, scheduler: str, schedule: str) -> str:
        """The schedule sampler `scheduler` runs with: "automatic" is its own preference
        (A1111's), if it has one."""
        sampler = self.schedulers.get(scheduler)
        return sampler.automatic if schedule == "automatic" and sampler is not None else schedule

    def scheduler_config(self, scheduler: str, schedule: str) -> tuple[str, dict[str, Any]]:
        """The diffusers class of sampler `scheduler` and the config options that give it
        `schedule` (options its class lacks are left for the caller to drop)."""
        sampler = self.schedulers[scheduler]
        return sampler.scheduler, {**sampler.config, **SCHEDULES[self.effective_schedule(scheduler, schedule)][1]}

    def torch_dtype(self, device: str) -> torch.dtype:
        import torch

        if not device.startswith("cuda"):
            return torch.float32
        if self.dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            return torch.float16  # pre-Ampere GPUs: fp16 runs, if less safely
        return getattr(torch, self.dtype)

    def call_kwargs(self, requests: list[GenerationRequest]) -> dict[str, Any]:
        """The pipeline's arguments for a pass of `requests` (without generators and callbacks).

        The requests share a pass key (size, steps, guidance); each keeps its prompt and
        negative prompt.
        """
        first = requests[0]
        kwargs: dict[str, Any] = {
            "prompt": [request.prompt for request in requests],
            "width": first.width,
            "height": first.height,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance,
        }
        if first.kind != TXT2IMG and not self.instruction:
            kwargs["strength"] = first.strength
            kwargs["num_inference_steps"] = pipeline_steps(first.steps, first.strength)
        if first.kind != TXT2IMG:
            kwargs.update(self.edit_kwargs)
        if self.sized_by_area:
            kwargs["max_area"] = first.width * first.height
        if self.negative_prompt:
            negatives = [request.negative_prompt for request in requests]
            # An empty negative prompt is what the pipeline uses for none.
            kwargs["negative_prompt"] = negatives if any(negatives) else None
        return kwargs

    def infotext_fields(self, request: GenerationRequest) -> list[tuple[str, str]]:
        """AUTOMATIC1111's generation fields, as Forge writes them for this family."""
        fields = [("Steps", str(request.steps)), ("Sampler", SAMPLER_NAMES.get(request.scheduler, request.scheduler))]
        # A1111 writes the schedule a sampler ran with ("DPM++ 2M" with Automatic: Karras)
        # and reads a missing one as Automatic, as older versions wrote it.
        schedule = self.effective_schedule(request.scheduler, request.schedule)
        if schedule != "automatic":
            fields.append(("Schedule type", SCHEDULES[schedule][0] if schedule in SCHEDULES else schedule))
        if self.guidance == "distilled":
            fields += [("CFG scale", "1"), ("Distilled CFG Scale", f"{request.guidance:g}")]
        else:
            fields.append(("CFG scale", f"{request.guidance:g}"))
        fields += [("Seed", str(request.seed)), ("Size", f"{request.width}x{request.height}")]
        if request.kind != TXT2IMG and request.strength is not None:
            fields.append(("Denoising strength", f"{request.strength:g}"))
        if request.kind == INPAINT:
            fields += [("Mask blur", str(request.mask_blur)), ("Inpaint area", "Whole picture")]
        if request.kind == UPSCALE and request.image is not None:
            fields += [("Hires upscale", f"{request.width / request.image.width:g}"), ("Hires upscaler", "Lanczos")]
        if request.clip_skip > 1:
            fields.append(("Clip skip", str(request.clip_skip)))
        if request.noise_seed_delta:
            fields.append(("ENSD", str(request.noise_seed_delta)))
        return fields

    def preview(
        self, latents: torch.Tensor, *, width: int | None = None, height: int | None = None, max_size: int = 128
    ) -> Image.Image:
        """A small RGB picture from a batch-of-one of this family's latents, without a VAE decode.

        Packed latents need the image's size to be unpacked; without it they are taken
        as square.
        """
        import torch
        from PIL import Image

        fmt = self.latents
        sample = latents[0].detach().float().cpu()
        if fmt.packed:
            sample = _unpack(sample, width=width, height=height, vae_scale=fmt.vae_scale)
        factors = torch.tensor(fmt.rgb_factors, dtype=sample.dtype)
        rgb = torch.einsum("chw,cr->hwr", sample, factors) + torch.tensor(fmt.rgb_bias, dtype=sample.dtype)
        rgb = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
        picture = Image.fromarray(rgb, mode="RGB")
        picture.thumbnail((max_size, max_size))
        return picture


def _unpack(tokens: torch.Tensor, *, width: int | None, height: int | None, vae_scale: int) -> torch.Tensor:
    """(h/2 * w/2, c*4) tokens of 2x2 patches -> (c, h, w) latents."""
    count, packed_channels = tokens.shape
    if width and height:
        rows, cols = height // (vae_scale * 2), width // (vae_scale * 2)
    else:
        rows = cols = int(round(count**0.5))
    if rows * cols != count:
        raise ValueError(f"{count} latent tokens do not make a {width}x{height} image")
    channels = packed_channels // 4
    return tokens.view(rows, cols, channels, 2, 2).permute(2, 0, 3, 1, 4).reshape(channels, rows * 2, cols * 2)


def _edits(img2img: str, inpaint: str) -> dict[str, str]:
    # An upscale is an image-to-image pass over the enlarged source.
    return {"img2img": img2img, "upscale": img2img, "inpaint": inpaint}


SD15 = Family(
    name="sd15",
    label="Stable Diffusion 1.x/2.x",
    pipelines=("StableDiffusionPipeline",),
    latents=SD1_LATENTS,
    default_size=512,
    size_step=8,
    # Its safety checker (where a repository has one) is not loaded: it blacks out images.
    load_kwargs={"safety_checker": None, "requires_safety_checker": False},
    single_file_config="stable-diffusion-v1-5/stable-diffusion-v1-5",
    edit_pipelines=_edits("StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    speed_default=True,
    clip_skip=True,
)
SDXL = Family(
    name="sdxl",
    label="Stable Diffusion XL",
    pipelines=("StableDiffusionXLPipeline",),
    latents=SDXL_LATENTS,
    default_size=1024,
    size_step=8,
    default_guidance=5.0,
    default_steps=30,
    single_file_config="stabilityai/stable-diffusion-xl-base-1.0",
    zeros_for_no_negative=True,
    edit_pipelines=_edits("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    # The speed mode is 1.9x faster at one image a pass on an H200, but its images
    # differ by up to 5 levels in 255 (bfloat16 VAE, compiled UNet): `;speed` turns it on.
    vae_upcasts=True,
)
SD3 = Family(
    name="sd3",
    label="Stable Diffusion 3",
    pipelines=("StableDiffusion3Pipeline",),
    latents=SD3_LATENTS,
    default_size=1024,
    size_step=16,
    dtype="bfloat16",
    default_guidance=5.0,
    default_steps=28,
    schedulers=SD3_SCHEDULERS,
    single_file_config="stabilityai/stable-diffusion-3.5-medium",
    transformer="SD3Transformer2DModel",
    edit_pipelines=_edits("StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
)
FLUX = Family(
    name="flux",
    label="Flux.1",
    pipelines=("FluxPipeline",),
    latents=FLUX_LATENTS,
    default_size=1024,
    size_step=16,
    dtype="bfloat16",
    guidance="distilled",
    default_guidance=3.5,
    default_steps=28,
    negative_prompt=False,
    schedulers=FLOW_SCHEDULERS,
    single_file_config="black-forest-labs/FLUX.1-dev",
    transformer="FluxTransformer2DModel",
    edit_pipelines=_edits("FluxImg2ImgPipeline", "FluxInpaintPipeline"),
)

# Flux's architecture and settings, with Kontext's own guidance, repository and edits.
FLUX_KONTEXT = replace(
    FLUX,
    name="flux_kontext",
    label="Flux.1 Kontext",
    pipelines=("FluxKontextPipeline",),
    default_guidance=2.5,
    single_file_config="black-forest-labs/FLUX.1-Kontext-dev",
    edit_pipelines={"img2img": "FluxKontextPipeline"},
    instruction=True,
    # The job's size is already one the model makes: the source is used at that size,
    # not moved to the nearest of Kontext's preferred resolutions.
    edit_kwargs={"_auto_resize": False},
    sized_by_area=True,
)

FAMILIES: dict[str, Family] = {family.name: family for family in (SD15, SDXL, SD3, FLUX, FLUX_KONTEXT)}
DEFAULT_FAMILY = SD15


def family_for_pipeline(class_name: str) -> Family | None:
    """The family of a diffusers pipeline class name (model_index.json's `_class_name`)."""
    for family in FAMILIES.values():
        if class_name in family.pipelines:
            return family
    # Variants of a family's pipeline (img2img, inpaint...) are run as its text-to-image one.
    for prefix, family in (("StableDiffusionXL", SDXL), ("StableDiffusion3", SD3), ("Flux", FLUX)):
        if class_name.startswith(prefix):
            return family
    if class_name.startswith("StableDiffusion"):
        return SD15
    return None


def family_for_checkpoint_keys(keys) -> Family | None:
    """The family of a single-file checkpoint, from its tensor names (original layouts)."""
    keys = set(keys)

    def has(*prefixes: str) -> bool:
        return any(key.startswith(prefixes) for key in keys)

    if has("double_blocks.", "model.diffusion_model.double_blocks."):
        return FLUX
    if has("joint_blocks.", "model.diffusion_model.joint_blocks."):
        return SD3
    # A transformer saved in diffusers' own layout.
    if has("single_transformer_blocks.") and has("x_embedder."):
        return FLUX
    if has("transformer_blocks.") and has("pos_embed.proj.") and has("context_embedder."):
        return SD3
    if has("conditioner.embedders.1.", "conditioner.embedders.0.model."):
        return SDXL
    if has("model.diffusion_model.input_blocks.", "cond_stage_model."):
        return SD15
    return None


def family_for_name(text: str) -> Family | None:
    """A guess from a model's name or Hub id, for when its files are not here yet."""
    lowered = text.lower()
    if "kontext" in lowered:
        return FLUX_KONTEXT
    if "flux" in lowered:
        return FLUX
    if "stable-diffusion-3" in lowered or "sd3" in lowered:
        return SD3
    if "xl" in lowered:
        return SDXL
    return None


@dataclass(frozen=True)
class ModelLimits:
    """What a request for one model may ask, and what it gets by default."""

    model: str
    family: Family
    min_size: int
    max_size: int
    size_step: int
    default_size: int

    @property
    def default_steps(self) -> int:
        return self.family.default_steps

    @property
    def default_guidance(self) -> float:
        return self.family.default_guidance

    @property
    def default_scheduler(self) -> str:
        return self.family.default_scheduler

    @property
    def schedulers(self) -> tuple[str, ...]:
        return tuple(self.family.schedulers)

    @property
    def schedules(self) -> dict[str, tuple[str, ...]]:
        """The schedules each of the model's samplers takes."""
        return {key: sampler.schedules for key, sampler in self.family.schedulers.items()}

    @property
    def negative_prompt(self) -> bool:
        return self.family.negative_prompt

    def fit(self, width: int, height: int, *, scale: float = 1.0) -> tuple[int, int]:
        """A size this model makes for an image of `width` x `height` times `scale`: the
        same shape, shrunk (or grown) into the model's bounds, a multiple of its step."""
        width, height = width * scale, height * scale
        shrink = min(1.0, self.max_size / max(width, height))
        grow = max(1.0, self.min_size / min(width, height))
        factor = shrink if shrink < 1.0 else grow
        step = self.size_step

        def snap(value: float) -> int:
            return min(self.max_size, max(self.min_size, int(value * factor) // step * step))

        return snap(width), snap(height)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for a page's script or an API."""
        return {
            "model": self.model,
            "family": self.family.name,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "size_step": self.size_step,
            "default_size": self.default_size,
            "default_steps": self.default_steps,
            "default_guidance": self.default_guidance,
            "default_scheduler": self.default_scheduler,
            "schedulers": list(self.schedulers),
            "schedules": {key: list(schedules) for key, schedules in self.schedules.items()},
            "negative_prompt": self.negative_prompt,
            "guidance": self.family.guidance,
            "edits": list(self.family.edit_pipelines),
            "instruction": self.family.instruction,
        }
