"""The worker's PNG writer: any reader gets the exact pixels and the parameters back."""

import io

import numpy as np
import pytest
from PIL import Image

from generation.png import encode_png


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_every_pixel_comes_back_exactly(mode):
    pixels = np.random.default_rng(7).integers(0, 256, (37, 53, len(mode)), dtype=np.uint8)
    image = Image.fromarray(pixels, mode=mode)
    decoded = _decoded(encode_png(image))
    assert decoded.mode == mode and decoded.size == (53, 37)
    assert np.array_equal(np.asarray(decoded), pixels)


def test_the_parameters_survive_in_any_script():
    text = "a cat on a mat, ünïcode 猫\nNegative prompt: dogs\nSteps: 3, Seed: 42"
    assert _decoded(encode_png(Image.new("RGB", (8, 8)), parameters=text)).info["parameters"] == text


def test_a_smooth_picture_is_compressed():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    image = Image.fromarray(np.stack([ramp, ramp.T, ramp], axis=-1), mode="RGB")
    assert len(encode_png(image)) < 256 * 256 * 3 / 10
