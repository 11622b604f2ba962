"""The random-weight pipelines used offline: `demo` (tiny, for CPUs and tests), `sd15`, and
tiny pipelines of the other families' shapes (`tiny-sdxl`, `tiny-sd3`, `tiny-flux`).

Built from configs with seeded weights (no download, deterministic) and saved once in
the model cache. `sd15` has the layer sizes of Stable Diffusion 1.5, for measuring the
system on a GPU without weights. The tiny family shapes have their family's structure
(SDXL's two text encoders and size conditioning, SD3's 16-channel latents, joint
transformer and three text encoders, Flux's packed latents, guidance embedding and T5),
with layers a few dozen wide, so each runs in a fraction of a second on a CPU. Like
`pipeline.py`, nothing here imports Django.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEMO = "demo"
# Bump when the random pipelines' configs change, so a stale cache is not reused.
DEMO_VERSION = "1"
# The tiny family shapes, with the family each one has, and their own version.
TINY_FAMILIES = {"tiny-sdxl": "sdxl", "tiny-sd3": "sd3", "tiny-flux": "flux", "tiny-kontext": "flux_kontext"}
TINY_VERSION = "2"


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
        if shape in TINY_FAMILIES:
            tiny_family_pipeline(shape, work).save_pretrained(work / "pipeline")
            _publish(work / "pipeline", target)
            return
        if shape in FULL_SHAPES:
            FULL_SHAPES[shape](work).to(torch.float16).save_pretrained(work / "pipeline")
            _publish(work / "pipeline", target)
            return
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
        _publish(work / "pipeline", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(built: Path, target: Path) -> None:
    try:
        os.rename(built, target)
    except OSError:
        # Another process finished the same build first; its copy is identical.
        if not (target / "model_index.json").exists():
            raise


def _tiny_t5(work: Path, name: str, *, d_model: int):
    """A tiny T5 encoder and a character-level T5 tokenizer, for the `name` slot."""
    import torch
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(chr(code), -1.0) for code in range(32, 127)] + [("\u2581", -1.0)]
    T5TokenizerFast(vocab=pieces, extra_ids=0).save_pretrained(work / f"tokenizer_{name}")
    tokenizer = T5TokenizerFast.from_pretrained(work / f"tokenizer_{name}", local_files_only=True)
    torch.manual_seed(20)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0
    )
    return {f"text_encoder_{name}": T5EncoderModel(config), f"tokenizer_{name}": tokenizer}


def _random_clip(work: Path, suffix: str, model_class, seed: int, **sizes) -> dict[str, Any]:
    """A CLIP text encoder of `sizes` with seeded random weights, and its character-level
    tokenizer, for the `text_encoder{suffix}` / `tokenizer{suffix}` slots."""
    import torch
    from transformers import CLIPTextConfig

    tokenizer = demo_tokenizer(work / f"tokenizer{suffix}")
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )
    torch.manual_seed(seed)
    return {f"text_encoder{suffix}": model_class(config), f"tokenizer{suffix}": tokenizer}


def _tiny_vae(latent_channels: int, **config):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        # As the real VAEs: tiling (the memory mode) starts above this size, not at tiny sizes.
        sample_size=512,
        **RANDOM_SHAPES["demo"]["vae"],
        **config,
    )


def tiny_family_pipeline(shape: str, work: Path):
    """A pipeline of `shape`'s family (see TINY_FAMILIES) with tiny random layers."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def clip(index: int, model_class):
        suffix = "" if index == 1 else f"_{index}"
        return _random_clip(work, suffix, model_class, 10 + index, projection_dim=32, **RANDOM_SHAPES["demo"]["text"])

    family = TINY_FAMILIES[shape]
    if family == "sdxl":
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            # SDXL's size and crop conditioning: six time embeddings plus the pooled text.
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=64,  # the two text encoders' hidden states, side by side
            norm_num_groups=8,
        )
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
            timestep_spacing="leading",
        )
        return StableDiffusionXLPipeline(
            unet=unet,
            vae=_tiny_vae(4, scaling_factor=0.13025),
            scheduler=scheduler,
            **clip(1, CLIPTextModel),
            **clip(2, CLIPTextModelWithProjection),
        )
    if family == "sd3":
        torch.manual_seed(0)
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=64,  # T5's width; the two CLIP encoders' 32 + 32 are padded to it
            caption_projection_dim=32,
            pooled_projection_dim=64,
            pos_embed_max_size=64,
        )
        return StableDiffusion3Pipeline(
            transformer=transformer,
            vae=_tiny_vae(
                16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False
            ),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            **clip(1, CLIPTextModelWithProjection),
            **clip(2, CLIPTextModelWithProjection),
            **_tiny_t5(work, "3", d_model=64),
        )
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels, 2x2 patches packed into each token
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    flux = FluxPipeline(
        transformer=transformer,
        vae=_tiny_vae(16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
        scheduler=scheduler,
        **clip(1, CLIPTextModel),
        **_tiny_t5(work, "2", d_model=32),
    )
    if family == "flux_kontext":
        from diffusers import FluxKontextPipeline

        return FluxKontextPipeline.from_pipe(flux)  # Flux's parts; it edits from an instruction
    return flux


def sdxl_shaped_pipeline(work: Path):
    """A pipeline with Stable Diffusion XL's layer sizes and random weights (2.6 B in the
    UNet, both text encoders full width): on a GPU, at 1024x1024, it does SDXL's compute.
    Built where the default device is (a GPU initialises it in seconds)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2, 10),
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048,
    )
    torch.manual_seed(1)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
        **RANDOM_SHAPES["sd15"]["vae"],
    )
    encoders = {}
    for suffix, model_class, width, layers, heads, act in (
        ("", CLIPTextModel, 768, 12, 12, "quick_gelu"),
        ("_2", CLIPTextModelWithProjection, 1280, 32, 20, "gelu"),
    ):
        encoders |= _random_clip(
            work,
            suffix,
            model_class,
            2,
            hidden_size=width,
            intermediate_size=width * 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            hidden_act=act,
            projection_dim=width,
        )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(unet=unet, vae=vae, scheduler=scheduler, **encoders)


FULL_SHAPES = {"sdxl": sdxl_shaped_pipeline}


def random_pipeline_path(cache_dir: Path, shape: str = DEMO) -> Path:
    """Where the random-weight pipeline of `shape` lives, building it on first use."""
    if shape not in RANDOM_SHAPES and shape not in TINY_FAMILIES and shape not in FULL_SHAPES:
        known = ", ".join([*RANDOM_SHAPES, *TINY_FAMILIES, *FULL_SHAPES])
        raise KeyError(f"Unknown shape {shape!r}; known: {known}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{shape}-v{TINY_VERSION if shape in TINY_FAMILIES else DEMO_VERSION}"
    if not (target / "model_index.json").exists():
        logger.info("Building the %s model in %s", shape, target)
        build_random_pipeline(target, shape)
    return target


def demo_pipeline_path(cache_dir: Path) -> Path:
    """Where the demo pipeline lives, building it on first use."""
    return random_pipeline_path(cache_dir, DEMO)


# --- Random LoRAs ----------------------------------------------------------------------


LORA_ARCHITECTURES = {
    "StableDiffusionXLPipeline": "stable-diffusion-xl-v1-base/lora",
    "StableDiffusion3Pipeline": "stable-diffusion-3-medium/lora",
    "FluxPipeline": "flux-1-dev/lora",
    "FluxKontextPipeline": "flux-1-dev/lora",
}


def build_random_lora(target: Path, pipeline_folder: Path, *, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA file with seeded random weights for the pipeline in `pipeline_folder` (its
    UNet's or transformer's attention projections), in diffusers' LoRA layout, offline.

    Its up-projections are random rather than zero (as training would leave them), so
    it changes the image at weight 1 and does nothing at weight 0.
    """
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    pipe = diffusers.DiffusionPipeline.from_pretrained(pipeline_folder, local_files_only=True)
    component = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    denoiser = getattr(pipe, component)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    denoiser.add_adapter(config)
    layers = get_peft_model_state_dict(denoiser)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lora-build-", dir=target.parent))
    try:
        type(pipe).save_lora_weights(work, **{f"{component}_lora_layers": layers}, weight_name=target.name)
        # What trainers write in a LoRA's metadata: the architecture it was made for.
        tensors = load_file(work / target.name)
        architecture = LORA_ARCHITECTURES.get(type(pipe).__name__, "stable-diffusion-v1/lora")
        # Written beside it and renamed: a folder being scanned never shows half a file.
        save_file(tensors, work / "lora.safetensors", metadata={"format": "pt", "modelspec.architecture": architecture})
        os.replace(work / "lora.safetensors", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
