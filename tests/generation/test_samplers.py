"""Samplers as AUTOMATIC1111 names them, with its noise schedules, run by each family's tiny pipeline."""

import inspect
from itertools import combinations

import diffusers
import numpy as np
import pytest

from generation.families import FAMILIES, SAMPLER_NAMES, SCHEDULES, SD3, SD15
from generation.loading import ModelRegistry
from generation.pipeline import DiffusersGenerator, infotext, set_scheduler
from generation.request import GenerationRequest

TINY = {"demo": "sd15", "tiny-sdxl": "sdxl", "tiny-sd3": "sd3", "tiny-flux": "flux", "tiny-kontext": "flux_kontext"}
# Three steps: with two, Euler and LMS (or Karras and Exponential) take the same steps.
STEPS = 3
# The schedule option each schedule sets in a diffusers scheduler's constructor.
SCHEDULE_OPTIONS = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "sgm_uniform": "timestep_spacing",
}


def _request(model, **overrides):
    values = dict(
        model=model, prompt="a cat", negative_prompt="", width=64, height=64, steps=STEPS, guidance=5.0, seed=7
    )
    return GenerationRequest(**{**values, **overrides})


@pytest.fixture(scope="module")
def generator(tiny_models):
    registry = ModelRegistry({name: str(path) for name, path in tiny_models.items() if name != "demo"})
    return DiffusersGenerator(registry, cache_dir=tiny_models["demo"].parent)


def _image(generator, model, **overrides) -> np.ndarray:
    steps: list[tuple[int, int]] = []
    image = generator.generate(_request(model, **overrides), on_step=lambda step, total, _: steps.append((step, total)))
    assert steps[-1][0] == steps[-1][1], overrides  # the pass ran to its end
    return np.asarray(image).astype(int)


def _all_differ(images: dict) -> None:
    for (a, first), (b, second) in combinations(images.items(), 2):
        assert not np.array_equal(first, second), f"{a} and {b} made the same image"


@pytest.mark.parametrize("model", list(TINY))
def test_every_sampler_of_each_family_runs_and_makes_its_own_image(generator, model):
    family = FAMILIES[TINY[model]]
    images = {}
    for key in family.schedulers:
        image = _image(generator, model, scheduler=key)
        assert image.shape == (64, 64, 3) and image.std() > 0, key  # not blank
        images[key] = image
    # DPM++ 3M SDE takes a third-order step from the fifth on (below, DPM++ 2M SDE's).
    images.pop("dpmpp_3m_sde", None)
    _all_differ(images)


def test_dpmpp_3m_sde_is_not_2m_sde(generator):
    images = {key: _image(generator, "demo", scheduler=key, steps=5) for key in ("dpmpp_2m_sde", "dpmpp_3m_sde")}
    _all_differ(images)


@pytest.mark.parametrize("model, sampler", [("demo", "euler"), ("tiny-flux", "euler")])
def test_each_schedule_a_sampler_takes_spaces_its_steps_its_own_way(generator, model, sampler):
    schedules = FAMILIES[TINY[model]].schedulers[sampler].schedules
    assert len(schedules) >= 3
    _all_differ({schedule: _image(generator, model, scheduler=sampler, schedule=schedule) for schedule in schedules})


def test_automatic_is_the_samplers_own_schedule_as_in_a1111(generator):
    automatic = _image(generator, "demo", scheduler="dpmpp_2m")
    assert np.array_equal(automatic, _image(generator, "demo", scheduler="dpmpp_2m", schedule="karras"))
    assert not np.array_equal(automatic, _image(generator, "demo", scheduler="dpmpp_2m", schedule="sgm_uniform"))


def test_a_dpmpp_sde_image_follows_its_own_seed_in_a_pass_of_several(generator):
    alone = [_image(generator, "demo", scheduler="dpmpp_sde", seed=seed) for seed in (1, 2)]
    together = generator.generate_batch([_request("demo", scheduler="dpmpp_sde", seed=seed) for seed in (1, 2)])
    for image, expected in zip(together, alone, strict=True):
        assert np.array_equal(np.asarray(image).astype(int), expected)


def test_another_sampler_or_schedule_rebuilds_the_scheduler_from_the_models_own_config(generator):
    pipe = generator.load("demo")
    set_scheduler(pipe, "dpmpp_3m_sde", SD15, "karras")
    config = pipe.scheduler.config
    assert (config.algorithm_type, config.solver_order, config.use_karras_sigmas) == ("sde-dpmsolver++", 3, True)

    set_scheduler(pipe, "dpmpp_2m", SD15, "sgm_uniform")  # the same class, other options
    config = pipe.scheduler.config
    assert (config.algorithm_type, config.solver_order, config.use_karras_sigmas) == ("dpmsolver++", 2, False)
    assert config.timestep_spacing == "trailing"

    set_scheduler(pipe, "euler", SD15, "automatic")
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "linspace"  # the demo model's own
    kept = pipe.scheduler
    set_scheduler(pipe, "euler", SD15, "automatic")
    assert pipe.scheduler is kept  # nothing changed: nothing rebuilt


def test_each_sampler_offers_exactly_the_schedules_its_scheduler_class_takes():
    for family in FAMILIES.values():
        for key, sampler in family.schedulers.items():
            assert SAMPLER_NAMES[key] == sampler.label  # a key names one sampler in every family
            accepted = inspect.signature(getattr(diffusers, sampler.scheduler).__init__).parameters
            takes = {"automatic"} | {name for name, option in SCHEDULE_OPTIONS.items() if option in accepted}
            assert set(sampler.schedules) == takes, (family.name, key)
            assert sampler.automatic in sampler.schedules
            assert set(sampler.config) <= set(accepted)


def test_the_infotext_names_the_schedule_a_sampler_ran_with_as_a1111_writes_it():
    def fields(**overrides):
        return infotext(_request("demo", **overrides), SD15).splitlines()[-1]

    assert fields(scheduler="euler").startswith("Steps: 3, Sampler: Euler, CFG scale: 5,")
    assert fields(scheduler="euler", schedule="sgm_uniform").startswith(
        "Steps: 3, Sampler: Euler, Schedule type: SGM Uniform, CFG scale: 5,"
    )
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in fields(scheduler="dpmpp_2m")
    assert "Sampler: DPM++ 3M SDE, Schedule type: Exponential," in fields(scheduler="dpmpp_3m_sde")
    assert "Sampler: Heun, CFG scale" in infotext(_request("sd3", scheduler="heun"), SD3)
    assert {label for label, _ in SCHEDULES.values()} == {"Automatic", "Karras", "Exponential", "SGM Uniform"}
