import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from generation.demo_model import demo_pipeline_path, demo_tokenizer, random_modules
from generation.loading import ModelRegistry
from generation.pipeline import DiffusersGenerator, infotext, latents_preview
from generation.png import encode_png
from generation.request import GenerationRequest
from generation.sources import ModelUnavailable
from tests.helpers import BASE_DIR


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return demo_pipeline_path(tmp_path_factory.mktemp("models"))


def _request(**overrides):
    values = dict(
        model="demo",
        prompt="a cat",
        negative_prompt="",
        width=64,
        height=64,
        steps=3,
        guidance=7.0,
        seed=1,
    )
    return GenerationRequest(**{**values, **overrides})


def test_the_pipeline_module_imports_nothing_from_django():
    code = "import sys, generation.pipeline; print(any(m.split('.')[0] == 'django' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_demo_model_is_built_offline_once_and_cached_on_disk(demo_dir):
    assert (demo_dir / "model_index.json").exists()
    built = (demo_dir / "unet").stat().st_mtime
    assert demo_pipeline_path(demo_dir.parent) == demo_dir
    assert (demo_dir / "unet").stat().st_mtime == built


def test_the_demo_model_keeps_the_usual_x8_latent_scale(demo_dir):
    generator = DiffusersGenerator(ModelRegistry(), cache_dir=demo_dir.parent)
    shapes = []
    generator.generate(_request(width=128, height=96), on_step=lambda s, t, latents: shapes.append(latents.shape))
    assert shapes[0][-2:] == (12, 16)


def test_the_sd15_shape_has_the_parameter_counts_of_stable_diffusion_1_5(tmp_path):
    # The GPU benchmark's model: the real model's compute without its weights. Built on
    # the meta device, so no memory is spent on the 1.07 billion parameters.
    from accelerate import init_empty_weights

    with init_empty_weights():
        modules = random_modules("sd15", demo_tokenizer(tmp_path / "tokenizer"))
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_the_same_seed_gives_the_same_image_and_another_seed_another(demo_dir):
    generator = DiffusersGenerator(ModelRegistry(), cache_dir=demo_dir.parent)
    a = np.asarray(generator.generate(_request(seed=1)))
    b = np.asarray(generator.generate(_request(seed=1)))
    c = np.asarray(generator.generate(_request(seed=2)))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_local_diffusers_folder_can_be_registered_as_a_model(demo_dir):
    registry = ModelRegistry({"mine": str(demo_dir)})
    generator = DiffusersGenerator(registry, cache_dir=demo_dir.parent / "unused")
    image = generator.generate(_request(model="mine"))
    assert image.size == (64, 64)
    assert generator.loads == 1


def test_a_missing_model_path_fails_clearly(tmp_path):
    generator = DiffusersGenerator(ModelRegistry({"gone": str(tmp_path / "nowhere")}), cache_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="nowhere"):
        generator.generate(_request(model="gone"))


def test_an_unknown_model_name_is_refused():
    with pytest.raises(KeyError, match="Unknown model 'sdxl'"):
        ModelRegistry().get("sdxl")


def test_an_exception_from_the_step_callback_aborts_the_run(demo_dir):
    generator = DiffusersGenerator(ModelRegistry(), cache_dir=demo_dir.parent)
    seen = []

    def stop_at_two(step, total, latents):
        seen.append(step)
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generator.generate(_request(steps=10), on_step=stop_at_two)
    assert seen == [1, 2]


def test_the_png_carries_automatic1111_infotext():
    request = _request(prompt="a cat\non a mat", negative_prompt="dogs", scheduler="euler_a", guidance=6.5, seed=42)
    with Image.open(io.BytesIO(encode_png(Image.new("RGB", (64, 64)), parameters=infotext(request)))) as png:
        assert png.info["parameters"] == (
            "a cat\non a mat\nNegative prompt: dogs\n"
            "Steps: 3, Sampler: Euler a, CFG scale: 6.5, Seed: 42, Size: 64x64, Model: demo"
        )


def test_a_preview_is_a_small_rgb_picture_made_from_latents():
    picture = latents_preview(torch.randn(1, 4, 64, 48), max_size=32)
    assert picture.mode == "RGB"
    assert max(picture.size) == 32


def test_the_web_process_does_not_load_torch():
    code = (
        "import os, sys, django; os.environ.setdefault('SECRET_KEY', 'k'); "
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'imagegen_site.settings'; "
        "import imagegen_site.asgi, imagegen_site.urls; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
