"""Each family's tiny pipeline, offline: its latents, preview, infotext, and where models come from."""

import numpy as np
import pytest
import torch

from generation.families import FAMILIES, FLUX, FLUX_KONTEXT, SD3, SD15, SDXL
from generation.loading import ModelRegistry
from generation.pipeline import DiffusersGenerator, infotext
from generation.request import GenerationRequest
from generation.sources import ModelUnavailable, detect_family, parse_spec
from tests.helpers import fill_hub_cache

TINY = {"demo": SD15, "tiny-sdxl": SDXL, "tiny-sd3": SD3, "tiny-flux": FLUX, "tiny-kontext": FLUX_KONTEXT}
# The latents the step callback sees for a 64x96 image (width x height).
LATENT_SHAPES = {
    "demo": (1, 4, 12, 8),
    "tiny-sdxl": (1, 4, 12, 8),
    "tiny-sd3": (1, 16, 12, 8),
    "tiny-flux": (1, 24, 64),  # (96/16)*(64/16) tokens of 16 channels x 2x2
    "tiny-kontext": (1, 24, 64),
}


def _request(model, **overrides):
    values = dict(model=model, prompt="a cat", negative_prompt="", width=64, height=96, steps=2, guidance=4.0, seed=3)
    return GenerationRequest(**{**values, **overrides})


@pytest.fixture(scope="module")
def generator(tiny_models, tmp_path_factory):
    registry = ModelRegistry({name: str(path) for name, path in tiny_models.items() if name != "demo"})
    return DiffusersGenerator(registry, cache_dir=tiny_models["demo"].parent)


@pytest.mark.parametrize("model", list(TINY))
def test_each_family_runs_offline_with_its_own_latents_and_preview(generator, model):
    assert generator.registry.get(model).family is TINY[model]
    seen = []
    image = generator.generate(_request(model), on_step=lambda step, total, latents: seen.append(latents.clone()))

    assert image.size == (64, 96)
    assert np.asarray(image).std() > 0
    assert [tuple(latents.shape) for latents in seen] == [LATENT_SHAPES[model]] * 2
    preview = TINY[model].preview(seen[0], width=64, height=96)
    assert preview.mode == "RGB" and preview.size == (8, 12)  # the latents' own size, upright


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])  # demo: test_pipeline.py
def test_the_same_seed_gives_the_same_image_in_every_family(generator, model):
    first = np.asarray(generator.generate(_request(model, seed=9)))
    again = np.asarray(generator.generate(_request(model, seed=9)))
    other = np.asarray(generator.generate(_request(model, seed=10)))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_a_packed_preview_keeps_the_pictures_orientation():
    # A 2x2 patch of channel 0 lit in the top-left token only: it must land top-left.
    tokens = torch.zeros(1, 6 * 4, 64)  # a 64 wide, 96 high image
    tokens[0, 0, 0:4] = 10.0
    unpacked = FLUX.preview(tokens, width=64, height=96, max_size=512)
    pixels = np.asarray(unpacked).astype(int)
    assert unpacked.size == (8, 12)
    assert (pixels[:2, :2] != pixels[5, 5]).any()
    assert (pixels[2:, :] == pixels[5, 5]).all()


def test_flux_writes_distilled_guidance_and_no_negative_prompt_in_its_infotext():
    request = _request("flux", guidance=3.5, negative_prompt="ignored", scheduler="euler")
    assert infotext(request, FLUX) == (
        "a cat\nSteps: 2, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 3, Size: 64x96, Model: flux"
    )
    assert infotext(_request("xl", negative_prompt="dogs"), SDXL) == (
        "a cat\nNegative prompt: dogs\nSteps: 2, Sampler: Euler, CFG scale: 4, Seed: 3, Size: 64x96, Model: xl"
    )


def test_the_family_is_read_from_a_folder_and_an_unknown_one_is_guessed_from_its_name(tiny_models, tmp_path):
    for name, family in TINY.items():
        if name != "demo":
            assert detect_family(parse_spec(str(tiny_models[name]))) == (family, True)
    assert detect_family(parse_spec("black-forest-labs/FLUX.1-schnell")) == (FLUX, False)
    assert detect_family(parse_spec("someone/model;family=sdxl")) == (SDXL, True)
    with pytest.raises(ValueError, match="unknown option 'fast'"):
        parse_spec("someone/model;fast")


def test_sizes_dtypes_and_guidance_differ_per_family():
    assert {name: (f.default_size, f.size_step, f.dtype) for name, f in FAMILIES.items()} == {
        "sd15": (512, 8, "float16"),
        "sdxl": (1024, 8, "float16"),
        "sd3": (1024, 16, "bfloat16"),
        "flux": (1024, 16, "bfloat16"),
        "flux_kontext": (1024, 16, "bfloat16"),
    }
    assert (FLUX.guidance, FLUX.negative_prompt) == ("distilled", False)
    assert (SD3.guidance, SD3.negative_prompt, list(SD3.schedulers)) == ("cfg", True, ["euler", "heun"])
    assert "negative_prompt" not in FLUX.call_kwargs([_request("flux", negative_prompt="x")])
    assert FAMILIES["sd15"].torch_dtype("cpu") == torch.float32


def test_the_memory_mode_tiles_the_vae(tiny_models):
    registry = ModelRegistry({"big": f"{tiny_models['tiny-sdxl']};offload"})
    generator = DiffusersGenerator(registry, cache_dir=tiny_models["demo"].parent)
    image = generator.generate(_request("big"))
    assert image.size == (64, 96)
    assert generator.load("big").vae.use_tiling  # CPU offload itself needs a GPU


# --- Hub ids, from the Hub cache -------------------------------------------------------


def test_a_hub_id_resolves_from_the_hub_cache_with_the_network_off(tiny_models, offline_hub):
    commit = fill_hub_cache(offline_hub, "tiny-org/tiny-flux", tiny_models["tiny-flux"])
    registry = ModelRegistry({"flux": "tiny-org/tiny-flux", "pinned": f"tiny-org/tiny-flux@{commit}"})
    generator = DiffusersGenerator(registry, cache_dir=tiny_models["demo"].parent)

    assert registry.get("flux").family is FLUX
    assert not generator.needs_download("flux")
    assert generator.generate(_request("flux")).size == (64, 96)
    assert generator.generate(_request("pinned")).size == (64, 96)


def test_a_hub_id_missing_from_the_cache_fails_offline_naming_the_model_and_the_fix(tiny_models, offline_hub):
    registry = ModelRegistry({"sdxl": "nobody/not-pulled-xl"})
    generator = DiffusersGenerator(registry, cache_dir=tiny_models["demo"].parent)
    assert generator.needs_download("sdxl")
    assert registry.get("sdxl").family is SDXL  # a guess from the name until the files are here

    with pytest.raises(ModelUnavailable) as failure:
        generator.generate(_request("sdxl"))
    message = str(failure.value)
    assert "'sdxl' (nobody/not-pulled-xl)" in message
    assert "offline" in message and "manage.py model_pull sdxl" in message


# --- Single-file checkpoints -----------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_checkpoint(tiny_models, tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    from tests.checkpoints import write_sd1_checkpoint

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["demo"], local_files_only=True)
    return write_sd1_checkpoint(pipe, tmp_path_factory.mktemp("checkpoints") / "tiny-sd15.safetensors")


def test_a_single_file_checkpoint_loads_offline_with_configs_from_a_folder_into_the_same_weights(
    tiny_models, sd1_checkpoint, offline_hub
):
    registry = ModelRegistry({"file": f"{sd1_checkpoint};config={tiny_models['demo']}", "folder": tiny_models["demo"]})
    generator = DiffusersGenerator(registry, cache_dir=tiny_models["demo"].parent)

    assert registry.get("file").family is SD15  # read from the file's tensor names
    from_file = np.asarray(generator.generate(_request("file")))
    from_folder = np.asarray(generator.generate(_request("folder")))
    assert np.array_equal(from_file, from_folder)


def test_a_single_file_checkpoint_reads_its_familys_configs_from_the_hub_cache(
    tiny_models, sd1_checkpoint, offline_hub
):
    registry = ModelRegistry({"file": str(sd1_checkpoint)})
    generator = DiffusersGenerator(registry, cache_dir=tiny_models["demo"].parent)
    with pytest.raises(ModelUnavailable, match="needs the configs of stable-diffusion-v1-5/stable-diffusion-v1-5"):
        generator.generate(_request("file"))

    fill_hub_cache(offline_hub, SD15.single_file_config, tiny_models["demo"])
    assert generator.generate(_request("file")).size == (64, 96)


def test_a_flux_transformer_alone_in_one_file_takes_the_other_parts_from_the_hub_cache(
    tiny_models, offline_hub, tmp_path
):
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    transformer = FluxTransformer2DModel.from_pretrained(tiny_models["tiny-flux"], subfolder="transformer")
    path = tmp_path / "flux1-tiny.safetensors"
    save_file({key: value.contiguous() for key, value in transformer.state_dict().items()}, str(path))
    registry = ModelRegistry({"file": str(path), "folder": tiny_models["tiny-flux"]})
    generator = DiffusersGenerator(registry, cache_dir=tiny_models["demo"].parent)
    assert registry.get("file").family is FLUX

    with pytest.raises(ModelUnavailable, match="needs the text encoders, VAE and configs of black-forest-labs/FLUX.1"):
        generator.generate(_request("file"))

    fill_hub_cache(offline_hub, FLUX.single_file_config, tiny_models["tiny-flux"])
    from_file = np.asarray(generator.generate(_request("file")))
    assert np.array_equal(from_file, np.asarray(generator.generate(_request("folder"))))


@pytest.mark.parametrize("model", list(TINY))
def test_each_family_makes_the_same_images_in_one_pass_as_alone(generator, model):
    guidance = TINY[model].default_guidance
    first = _request(model, seed=1, guidance=guidance, negative_prompt="" if model == "tiny-flux" else "fog")
    second = _request(model, seed=2, guidance=guidance, prompt="a dog")
    together = generator.generate_batch([first, second])
    for request, image in zip([first, second], together, strict=True):
        alone = np.asarray(generator.generate(request), dtype=int)
        assert np.abs(alone - np.asarray(image, dtype=int)).max() <= 2, "the same image, within rounding"


def test_the_last_model_stays_loaded_and_another_family_swaps_it(generator):
    generator.generate(_request("tiny-flux"))
    loads = generator.loads
    generator.generate(_request("tiny-flux", seed=4))
    assert generator.loads == loads
    generator.generate(_request("tiny-sdxl"))
    generator.generate(_request("tiny-sdxl", seed=4))
    assert generator.loads == loads + 1
    assert type(generator.load("tiny-sdxl")).__name__ == "StableDiffusionXLPipeline"
