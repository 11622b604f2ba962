"""The ETA's estimator: a fixed part and a cost per step that grows with the pixels,
learnt from finished jobs; what a job behind a pass waits for; what is left of a running
one; fractions of a second; and the worker's measured default before any history."""

from datetime import timedelta

import pytest
from django.utils import timezone

from generation import selectors
from generation.estimates import Sample, Speed, fit, time_left
from generation.models import ImageJob, Worker

# A device whose passes take 1.2 s of fixed work plus 0.03 s a step and 0.2 s a step
# per megapixel: close to an SD 1.5 model on a mid-range GPU.
GPU = Speed(overhead=1.2, step=0.03, step_per_mp=0.2)


def _seconds(width, height, steps, speed=GPU):
    return speed.seconds(width * height / 1e6, steps)


def _history(submit, shapes, *, worker="gpu-a:1", gap=0.0, speed=GPU, waited=None):
    """Finished jobs of `shapes` (width, height, steps), run back to back on `worker`, each
    taking what `speed` says; `gap` seconds between one's end and the next one's start;
    each submitted `waited` seconds before it started (default: long before)."""
    moment = timezone.now() - timedelta(hours=1)
    for width, height, steps in shapes:
        job = submit("done", width=width, height=height, steps=steps)
        seconds = _seconds(width, height, steps, speed)
        ImageJob.objects.filter(pk=job.pk).update(
            status="complete",
            worker=worker,
            created_at=moment - timedelta(seconds=3600 if waited is None else waited),
            started_at=moment,
            finished_at=moment + timedelta(seconds=seconds),
            progress=100,
        )
        moment += timedelta(seconds=seconds + gap)


MIXED = [(512, 512, 20), (768, 768, 25), (1024, 1024, 30), (512, 768, 30), (640, 640, 15)] * 2


@pytest.mark.django_db
def test_a_fixed_part_is_not_charged_to_every_step(settings, submit):
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 99
    _history(submit, [(512, 512, 20)] * 3 + [(512, 512, 40)] * 3, gap=1)
    estimate = selectors.duration_estimator()

    # 10 and 60 steps were never run: seconds per step of the runs (fixed part
    # included) would promise 60 steps 13 % too long and 10 steps 29 % too short.
    for steps in (10, 60):
        assert estimate("demo", 512, 512, steps) == pytest.approx(_seconds(512, 512, steps), rel=0.02)


@pytest.mark.django_db
def test_sizes_never_run_are_fitted_from_the_mixed_history_not_scaled_by_pixels(settings, submit):
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 99
    _history(submit, MIXED, gap=1)
    estimate = selectors.duration_estimator()

    for width, height, steps in [(256, 256, 20), (896, 896, 40), (1024, 768, 10), (512, 512, 50)]:
        assert estimate("demo", width, height, steps) == pytest.approx(_seconds(width, height, steps), rel=0.03)


@pytest.mark.django_db
def test_a_job_that_also_loaded_its_model_does_not_skew_the_fit(settings, submit):
    _history(submit, MIXED, gap=1)
    loaded = ImageJob.objects.filter(width=1024).order_by("pk").first()
    ImageJob.objects.filter(pk=loaded.pk).update(finished_at=loaded.finished_at + timedelta(seconds=40))

    estimate = selectors.duration_estimator()
    assert estimate("demo", 896, 896, 40) == pytest.approx(_seconds(896, 896, 40), rel=0.03)


@pytest.mark.django_db
def test_without_history_the_eta_uses_what_the_worker_measured_at_start_up(settings, submit):
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 99  # the last resort: not used
    now = timezone.now()
    Worker.objects.create(
        name="gpu-a:1",
        host="gpu-a",
        pid=1,
        device="cuda:0",
        started_at=now,
        last_seen_at=now,
        loaded_model="demo",
        warmup={"demo": {"overhead": 1.2, "overhead_per_mp": 0.0, "step": 0.03, "step_per_mp": 0.2}},
    )
    first = submit("first", width=512, height=512, steps=20)
    submit("second", width=1024, height=1024, steps=30)

    entries = selectors.queue_eta()
    one, two = _seconds(512, 512, 20), _seconds(1024, 1024, 30)
    assert [(e["estimated_start_seconds"], e["estimated_seconds"]) for e in entries] == [
        (0, round(one, 1)),
        (round(one, 1), round(one + two, 1)),
    ]
    # The first job, running (a second in, its progress written at 30 %): what is left of it.
    ImageJob.objects.filter(pk=first.pk).update(status="processing", started_at=now - timedelta(seconds=1), progress=30)
    (entry,) = selectors.queue_eta(now=now)
    assert entry["estimated_start_seconds"] == pytest.approx(one - 1, abs=0.1)


@pytest.mark.django_db
def test_the_constant_is_the_last_resort(settings, submit):
    settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP = 0.5
    submit("one", steps=20, width=512, height=512)
    (entry,) = selectors.queue_eta()
    assert entry["estimated_seconds"] == 10


@pytest.mark.django_db
def test_a_sub_second_job_is_promised_in_tenths_not_zero(submit):
    _history(submit, [(64, 64, 2)] * 3, speed=Speed(overhead=0.3))
    submit("tiny", width=64, height=64, steps=2)
    submit("tiny too", width=64, height=64, steps=2)

    first, second = selectors.queue_eta()
    assert (first["estimated_start_seconds"], first["estimated_seconds"]) == (0, 0.3)
    assert (second["estimated_start_seconds"], second["estimated_seconds"]) == (0.3, 0.6)


@pytest.mark.django_db
def test_a_job_behind_a_pass_waits_for_the_device_not_for_the_pass_images_to_be_stored(submit):
    # Back to back: each next pass was claimed 0.5 s before the previous one's image was
    # stored (its PNG was still being written): the device held each for 0.5 s less.
    _history(submit, [(512, 512, 20)] * 4, gap=-0.5)
    for n in range(3):
        submit(f"waiting {n}", width=512, height=512, steps=20)

    seconds = _seconds(512, 512, 20)
    assert [(e["estimated_start_seconds"], e["estimated_seconds"]) for e in selectors.queue_eta()] == [
        (0, round(seconds, 1)),
        (round(seconds - 0.5, 1), round(2 * seconds - 0.5, 1)),
        (round(2 * seconds - 1, 1), round(3 * seconds - 1, 1)),
    ]


@pytest.mark.django_db
def test_a_running_jobs_time_left_follows_its_clock_within_what_its_progress_allows(submit):
    _history(submit, [(512, 512, 20)] * 3, speed=Speed(step_per_mp=10 / 20 / (512 * 512 / 1e6)))  # 10 s each
    running = submit("running", width=512, height=512, steps=20)
    submit("waiting", width=512, height=512, steps=20)
    now = timezone.now()

    def start_of_the_waiting_one(*, elapsed, progress):
        ImageJob.objects.filter(pk=running.pk).update(
            status="processing", started_at=now - timedelta(seconds=elapsed), progress=progress
        )
        (entry,) = selectors.queue_eta(now=now)
        return entry["estimated_start_seconds"]

    # Progress is written by tenths: 6 s into a 10 s job that has written 50 %.
    assert start_of_the_waiting_one(elapsed=6, progress=50) == 4
    # Ahead of its clock: progress bounds it.
    assert start_of_the_waiting_one(elapsed=1, progress=50) == 5
    # Behind: not counted down past what its progress leaves.
    assert start_of_the_waiting_one(elapsed=30, progress=20) == 7
    assert selectors.job_remaining_seconds(job=ImageJob.objects.get(pk=running.pk), now=now) == 7


@pytest.mark.django_db
def test_a_job_sent_to_an_idle_worker_starts_as_late_as_such_jobs_did(submit):
    # Each was sent to an idle worker (10 s after the previous one ended) and started
    # 0.4 s later: the doorbell, the claim.
    _history(submit, [(512, 512, 20)] * 4, gap=10, waited=0.4)
    submit("next", width=512, height=512, steps=20)

    (entry,) = selectors.queue_eta()
    seconds = _seconds(512, 512, 20)
    assert (entry["estimated_start_seconds"], entry["estimated_seconds"]) == (0.4, round(0.4 + seconds, 1))


def test_time_left_without_a_start_time_is_progress_alone():
    assert time_left(40, elapsed=None, progress=25) == 30


def test_few_shapes_scale_the_prior_and_many_fit_it_all():
    prior = Speed(overhead=1.0, step=0.05)
    one_shape = [Sample(0.26, 20, 4.0)] * 3
    assert fit(one_shape, prior).seconds(0.26, 20) == pytest.approx(4.0)
    truth = Speed(overhead=0.5, overhead_per_mp=0.3, step=0.02, step_per_mp=0.15)
    shapes = [(0.26, 20), (0.59, 25), (1.05, 30), (0.39, 30), (0.41, 15)]
    fitted = fit([Sample(p, s, truth.seconds(p, s)) for p, s in shapes], prior)
    assert fitted.seconds(2.0, 50) == pytest.approx(truth.seconds(2.0, 50), rel=1e-6)
