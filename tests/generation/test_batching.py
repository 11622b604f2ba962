"""Several images in one pass: which jobs share it, and each keeping its own life."""

from datetime import timedelta

import numpy as np
import pytest
import torch
from django.utils import timezone
from PIL import Image

from generation import selectors, services, worker
from generation.models import CircuitBreaker, ImageJob, Worker
from generation.registry import get_generator
from tests.helpers import run_pass, start_cluster, stop, wait_for


class BatchGenerator:
    """Makes a flat image per request, a pass at a time, and records each pass's size.

    `on_each_step(step, requests)` runs inside every step; `fail_above` raises
    out-of-memory for a pass of more requests than that; `failure` fails every pass.
    """

    device = "cpu"

    def __init__(self, on_each_step=None, fail_above=None, failure=None):
        self.on_each_step = on_each_step
        self.fail_above = fail_above
        self.failure = failure
        self.passes: list[list[str]] = []

    def load(self, name):
        return None

    def needs_download(self, name):
        return False

    def generate_batch(self, requests, on_step=None):
        self.passes.append([request.prompt for request in requests])
        if self.failure is not None:
            raise self.failure
        if self.fail_above is not None and len(requests) > self.fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        first = requests[0]
        latents = torch.zeros(len(requests), 4, first.height // 8, first.width // 8)
        for step in range(1, first.steps + 1):
            if self.on_each_step:
                self.on_each_step(step, requests)
            if on_step:
                on_step(step, first.steps, latents)
        return [Image.new("RGB", (r.width, r.height), (r.seed % 256, 20, 30)) for r in requests]


@pytest.fixture
def batches(settings):
    settings.IMAGEGEN_MAX_BATCH = 4
    settings.IMAGEGEN_BATCH_WINDOW = 8
    worker._BATCH_FITS.clear()
    yield
    worker._BATCH_FITS.clear()


def _claimed(jobs):
    return [job.prompt for job in jobs]


# --- Which jobs share a pass --------------------------------------------------------


def test_the_head_always_runs_and_only_jobs_that_can_share_its_pass_join_it(batches, submit):
    submit("head", width=64)
    submit("other size", width=128)
    submit("second", width=64)
    submit("other steps", width=64, steps=9)
    submit("third", width=64)
    submit("other guidance", width=64, guidance=3)
    submit("fourth", width=64)
    submit("fifth", width=64)

    jobs = services.jobs_claim(worker="w:1", max_batch=4)

    assert _claimed(jobs) == ["head", "second", "third", "fourth"]
    assert len({job.batch for job in jobs}) == 1 and all(job.batch_size == 4 for job in jobs)
    # The next pass starts at the new head, the job of another size.
    assert _claimed(services.jobs_claim(worker="w:1", max_batch=4)) == ["other size"]


def test_a_job_joins_the_head_only_from_within_the_window(batches, settings, submit):
    settings.IMAGEGEN_BATCH_WINDOW = 2
    submit("head", width=64)
    submit("other 1", width=128)
    submit("other 2", width=128)
    submit("too far back", width=64)

    assert _claimed(services.jobs_claim(worker="w:1", max_batch=4)) == ["head"]
    assert ImageJob.objects.get(prompt="too far back").status == "queued"


def test_while_the_breaker_tries_one_job_nothing_joins_it(batches, submit):
    for n in range(3):
        submit(f"job {n}")
    CircuitBreaker.objects.create(
        name=CircuitBreaker.GENERATION,
        state=CircuitBreaker.State.OPEN,
        failures=5,
        opened_at=timezone.now() - timedelta(hours=1),
    )

    assert _claimed(services.jobs_claim(worker="w:1", max_batch=4)) == ["job 0"]


def test_on_a_cpu_the_worker_makes_one_image_per_pass_unless_told_otherwise(settings, runner_for):
    settings.IMAGEGEN_MAX_BATCH = 0
    assert runner_for(BatchGenerator()).max_batch == 1
    cuda = BatchGenerator()
    cuda.device = "cuda:0"
    assert runner_for(cuda).max_batch == 4
    settings.IMAGEGEN_MAX_BATCH = 2
    assert runner_for(cuda).max_batch == 2


# --- Each job of a pass keeps its own life ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_every_job_of_a_pass_gets_its_own_progress_image_and_completion(batches, submit, runner_for):
    jobs = [submit(f"picture {n}", seed=100 + n) for n in range(4)]
    generator = BatchGenerator()

    runner_for(generator).run_queue(budget=60)

    assert generator.passes == [[f"picture {n}" for n in range(4)]]
    for job in jobs:
        job.refresh_from_db()
        assert (job.status, job.progress, job.batch_size) == ("complete", 100, 4)
        with Image.open(job.image.path) as image:
            assert image.getpixel((0, 0))[0] == job.seed % 256, "each job gets its own image"
            assert f"Seed: {job.seed}," in image.text["parameters"]
    assert len({job.batch for job in jobs}) == 1


@pytest.mark.django_db(transaction=True)
def test_a_job_cancelled_in_a_running_pass_loses_its_image_and_the_others_go_on(batches, submit, runner_for):
    jobs = [submit(f"picture {n}") for n in range(4)]

    def cancel_second(step, requests):
        if step == 2:
            services.job_cancel(job=ImageJob.objects.get(pk=jobs[1].pk))

    runner_for(BatchGenerator(on_each_step=cancel_second)).run_queue(budget=60)

    states = {job.pk: (job.status, bool(job.image)) for job in ImageJob.objects.all()}
    assert states[jobs[1].pk] == ("cancelled", False)
    assert [states[job.pk] for job in (jobs[0], jobs[2], jobs[3])] == [("complete", True)] * 3


def test_a_pass_that_fails_fails_each_of_its_jobs_and_counts_once_with_the_breaker(batches, submit, runner_for):
    jobs = [submit(f"picture {n}") for n in range(3)]

    run_pass(runner_for(BatchGenerator(failure=RuntimeError("the device said no"))))

    assert set(ImageJob.objects.filter(pk__in=[job.pk for job in jobs]).values_list("status", flat=True)) == {"error"}
    assert CircuitBreaker.current().failures == 1


def test_a_pass_that_runs_out_of_memory_is_split_and_the_size_that_fits_is_remembered(batches, submit, runner_for):
    for n in range(8):
        submit(f"picture {n}")
    generator = BatchGenerator(fail_above=2)
    runner = runner_for(generator)

    run_pass(runner)
    assert [len(made) for made in generator.passes] == [4, 2, 2], "4 did not fit: two passes of 2"
    run_pass(runner)
    assert [len(made) for made in generator.passes[3:]] == [2, 2], "the next 4 go in passes of 2 at once"

    jobs = list(ImageJob.objects.all())
    assert [job.status for job in jobs] == ["complete"] * 8
    assert all(job.attempts == 1 for job in jobs), "a split is not a failed attempt"
    assert CircuitBreaker.current() is None


# --- The same image alone or in a pass ----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_job_gets_the_same_pixels_alone_and_inside_a_pass_of_four(batches, settings, submit, runner_for):
    params = {"steps": 4, "width": 64, "height": 64, "scheduler": "euler_a"}
    settings.IMAGEGEN_MAX_BATCH = 1
    alone = submit("a red fox", seed=7, negative_prompt="blurry", **params)
    run_pass(runner_for(get_generator()))
    settings.IMAGEGEN_MAX_BATCH = 4
    together = [
        submit("a blue whale", seed=1, **params),
        submit("a red fox", seed=7, negative_prompt="blurry", **params),
        submit("a green hill", seed=3, negative_prompt="people", **params),
        submit("a red fox", seed=8, **params),
    ]
    run_pass(runner_for(get_generator()))

    alone.refresh_from_db()
    twin = ImageJob.objects.get(pk=together[1].pk)
    assert twin.batch_size == 4 and alone.batch_size == 1
    with Image.open(alone.image.path) as a, Image.open(twin.image.path) as b:
        difference = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
    assert difference.max() <= 2, "the same image, within rounding"
    with Image.open(ImageJob.objects.get(pk=together[3].pk).image.path) as other:
        assert np.abs(np.asarray(other, dtype=int) - np.asarray(Image.open(alone.image.path), dtype=int)).max() > 20


# --- The ETA knows passes -----------------------------------------------------------


def test_the_eta_counts_passes_of_the_workers_batch_size_from_measured_passes(batches, submit):
    now = timezone.now()
    Worker.objects.create(
        name="gpu:1", host="gpu", pid=1, device="cuda:0", started_at=now, last_seen_at=now, max_batch=4
    )
    # History: a pass of 4 images of this size took 8 s (4 steps: 2 s a step).
    for n in range(4):
        done = submit(f"done {n}")
        ImageJob.objects.filter(pk=done.pk).update(
            status="complete", batch_size=4, started_at=now - timedelta(seconds=8), finished_at=now
        )
    waiting = [submit(f"waiting {n}") for n in range(8)]

    eta = {entry["job_id"]: entry for entry in selectors.queue_eta(now=now)}

    assert [eta[job.pk]["position"] for job in waiting] == list(range(1, 9))
    assert [eta[job.pk]["estimated_seconds"] for job in waiting] == [8] * 4 + [16] * 4


# --- n images of one prompt, through the real cluster -------------------------------


@pytest.mark.django_db(transaction=True)
def test_four_images_of_one_prompt_run_together_in_a_real_cluster(alice, alice_chat, tmp_path):
    job = services.job_submit(
        user=alice, conversation=alice_chat, prompt="four foxes", count=4, seed=41, steps=3, width=64, height=64
    ).jobs[0]
    cluster = start_cluster("gpu", tmp_path, tmp_path / "gpu.log", IMAGEGEN_MAX_BATCH="4")
    try:
        wait_for(
            lambda: ImageJob.objects.filter(status="complete").count() == 4,
            timeout=180,
            message="the four images made by the gpu cluster",
        )
    except AssertionError:
        print((tmp_path / "gpu.log").read_text()[-4000:])
        raise
    finally:
        stop(cluster)
    jobs = list(ImageJob.objects.filter(message=job.message).order_by("image_index"))
    assert [each.seed for each in jobs] == [41, 42, 43, 44]
    assert len({each.batch for each in jobs}) == 1 and jobs[0].batch_size == 4, "one pass"
    for each in jobs:
        with Image.open(each.image.path) as image:
            assert f"Seed: {each.seed}," in image.text["parameters"]
    message = job.message
    message.refresh_from_db()
    assert message.content == "Your 4 images are ready."
    assert message.metadata["status"] == "complete"
    assert {message.metadata["images"][str(each.pk)]["status"] for each in jobs} == {"complete"}
