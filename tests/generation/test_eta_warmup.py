"""A gpu worker's start-up warm-up: it times the default model so the first ETAs are
measured, makes no job and no image, and never stops the worker when it fails."""

import pytest
import torch
from PIL import Image

from generation import heartbeat, selectors, workers
from generation.estimates import Speed
from generation.models import ImageJob, Worker
from generation.pipeline import DiffusersGenerator
from generation.registry import get_registry
from generation.worker import measure_speed, warm_up
from tests.fakes import FakeClock


@pytest.fixture(autouse=True)
def _fresh_measurements(monkeypatch):
    """What a warm-up measured stays with the process: not with the next test."""
    monkeypatch.setattr(workers, "_warm_ups", {})


class TimedDevice:
    """A device on a fake clock: fixed work before and after the steps, a step that costs a
    floor plus a share per megapixel, and a first call that costs two seconds more."""

    device = "cpu"

    def __init__(self, clock: FakeClock, speed: Speed, *, fails: bool = False):
        self.clock, self.law, self.fails = clock, speed, fails
        self.loaded_model = None
        self.calls = 0

    def load(self, name):
        self.loaded_model = name

    def needs_download(self, name):
        return False

    def generate_batch(self, requests, on_step=None):
        if self.fails:
            raise RuntimeError("the device is gone")
        first = requests[0]
        megapixels = first.width * first.height * len(requests) / 1e6
        self.calls += 1
        self.clock.advance(self.law.overhead / 2 + (2.0 if self.calls == 1 else 0.0))
        for step in range(1, first.steps + 1):
            self.clock.advance(self.law.steps(megapixels, 1))
            on_step(step, first.steps, torch.zeros(len(requests), 4, 8, 8))
        self.clock.advance(self.law.overhead / 2 + self.law.overhead_per_mp * megapixels)
        return [Image.new("RGB", (first.width, first.height)) for _ in requests]


GPU = Speed(overhead=0.4, overhead_per_mp=0.3, step=0.02, step_per_mp=0.12)


def test_it_measures_the_fixed_part_and_the_cost_of_a_step_by_its_pixels():
    clock = FakeClock()
    measured = measure_speed(TimedDevice(clock, GPU), "demo", clock=clock.clock)

    speed = Speed.from_warm_up(measured)
    for field in ("overhead", "overhead_per_mp", "step", "step_per_mp"):
        assert getattr(speed, field) == pytest.approx(getattr(GPU, field), abs=1e-6), field
    assert measured["size"] == 512  # the demo model's default size


@pytest.mark.django_db(transaction=True)
def test_a_started_worker_times_the_demo_model_and_the_first_eta_uses_it(settings, submit):
    settings.IMAGEGEN_WARMUP = True
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 99  # the last resort: not used
    generator = DiffusersGenerator(get_registry(), cache_dir=settings.IMAGEGEN_MODEL_CACHE, device="cpu")

    measured = warm_up(generator)

    assert generator.loaded_model == "demo"
    row = Worker.objects.get()
    assert row.warmup == {"demo": measured} and row.loaded_model == "demo"
    assert measured["step"] + measured["step_per_mp"] > 0
    assert not ImageJob.objects.exists(), "a warm-up is no job"
    assert not (settings.MEDIA_ROOT / "images").exists(), "and makes no image"
    job = submit("the first one", width=512, height=512, steps=20)
    (entry,) = selectors.queue_eta()
    expected = Speed.from_warm_up(measured).seconds(512 * 512 / 1e6, 20)
    assert entry["estimated_seconds"] == pytest.approx(expected, abs=0.06)
    assert entry["job_id"] == job.pk


@pytest.mark.django_db(transaction=True)
def test_the_warm_up_can_be_turned_off(settings):
    settings.IMAGEGEN_WARMUP = False
    device = TimedDevice(FakeClock(), GPU)

    assert warm_up(device) is None
    assert device.loaded_model is None and not Worker.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_failing_warm_up_leaves_the_worker_running_without_a_measure(settings, caplog):
    settings.IMAGEGEN_WARMUP = True

    assert warm_up(TimedDevice(FakeClock(), GPU, fails=True)) is None
    assert Worker.objects.get().warmup == {}
    assert "warm-up pass of model demo failed" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_workers_row_made_again_gets_its_measure_back_at_the_next_beat(settings):
    settings.IMAGEGEN_WARMUP = True
    device = TimedDevice(FakeClock(), GPU)
    measured = warm_up(device)
    beat = heartbeat.start(device="cpu", generator=device)
    Worker.objects.all().delete()  # pruned, say

    beat.beat()  # registers it again
    beat.beat()
    assert Worker.objects.get(name=beat.name).warmup == {"demo": measured}
