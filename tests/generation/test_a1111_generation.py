"""What AUTOMATIC1111's clients ask of the diffusers pipeline besides the usual
parameters: stopping early (an interrupt), clip skip, and the eta noise seed delta."""

import numpy as np
import pytest
from django.conf import settings

from generation.demo_model import demo_pipeline_path
from generation.families import SD15, SDXL
from generation.loading import ModelRegistry
from generation.pipeline import DiffusersGenerator, infotext
from generation.request import GenerationRequest


@pytest.fixture(scope="module")
def generator():
    demo_pipeline_path(settings.IMAGEGEN_MODEL_CACHE)  # built once, offline
    return DiffusersGenerator(ModelRegistry(), cache_dir=settings.IMAGEGEN_MODEL_CACHE)


def _request(**overrides):
    values = dict(model="demo", prompt="a cat", negative_prompt="", width=64, height=64, steps=3, guidance=7.0, seed=1)
    return GenerationRequest(**{**values, **overrides})


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=int)


def _stopping(rows_at: dict[int, int], seen: list[int]):
    """A step callback that stops each row of `rows_at` (row -> step) from that step on."""

    def on_step(step, total, latents):
        seen.append(step)
        return [row for row, at in rows_at.items() if step >= at]

    return on_step


def test_a_stopped_row_gets_the_image_of_its_step_and_the_pass_ends_when_every_row_has(generator):
    seen_alone: list[int] = []
    stopped_alone = _pixels(generator.generate(_request(seed=1), _stopping({0: 1}, seen_alone)))
    full_alone = _pixels(generator.generate(_request(seed=1)))
    other_alone = _pixels(generator.generate(_request(seed=2, prompt="a dog")))

    seen_together: list[int] = []
    together = generator.generate_batch(
        [_request(seed=1), _request(seed=2, prompt="a dog")], _stopping({0: 1}, seen_together)
    )

    assert seen_alone == [1], "no step runs once every row has stopped"
    assert stopped_alone.shape == (64, 64, 3) and not np.array_equal(stopped_alone, full_alone)
    assert seen_together == [1, 2, 3], "the other row runs every step"
    assert np.abs(_pixels(together[0]) - stopped_alone).max() <= 1
    assert np.abs(_pixels(together[1]) - other_alone).max() <= 1


def test_clip_skip_encodes_the_prompt_from_an_earlier_layer(generator):
    plain = _pixels(generator.generate(_request()))
    skipped = _pixels(generator.generate(_request(clip_skip=2)))
    assert not np.array_equal(plain, skipped)
    # Skipping more layers than the demo's text encoder has (two) keeps its first one.
    assert np.array_equal(_pixels(generator.generate(_request(clip_skip=12))), skipped)
    assert SD15.clip_skip and not SDXL.clip_skip  # A1111 ignores it for SDXL


def test_the_noise_seed_delta_changes_only_the_samplers_own_noise(generator):
    def image(**overrides):
        return _pixels(generator.generate(_request(**overrides)))

    # Euler adds no noise while it samples: the delta changes nothing.
    assert np.array_equal(image(scheduler="euler"), image(scheduler="euler", noise_seed_delta=31337))
    # Euler a does: its noise comes from seed + delta, the starting noise from the seed.
    assert not np.array_equal(image(scheduler="euler_a"), image(scheduler="euler_a", noise_seed_delta=31337))


def test_the_infotext_records_clip_skip_ensd_and_an_interrupt_as_a1111_writes_them():
    text = infotext(_request(clip_skip=2, noise_seed_delta=31337, steps=20), SD15, stopped_at=7)
    assert "Steps: 20," in text and "Clip skip: 2, ENSD: 31337" in text
    assert text.endswith("Interrupted: step 7 of 20")
    plain = infotext(_request(), SD15)
    assert "Clip skip" not in plain and "ENSD" not in plain and "Interrupted" not in plain
