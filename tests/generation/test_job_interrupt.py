"""An interrupt (A1111's) stops a running job early and keeps the image of the step it
reached; a cancel throws it away. Passes shared by several jobs stop only for those asked."""

import time

from PIL import Image

from chat.models import Message
from generation import services, worker
from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


def _interrupt_at(step_wanted: int, job_id: int):
    """A step hook that interrupts the job once, at `step_wanted`, as an A1111 client would."""

    def hook(step):
        time.sleep(0.05)  # a step takes time on a real device; the bookkeeper writes meanwhile
        if step == step_wanted:
            assert services.job_interrupt(job=ImageJob.objects.get(pk=job_id))

    return hook


def test_an_interrupted_job_ends_complete_with_the_image_of_the_step_it_reached(runner_for, submit):
    job = submit("stop me early", steps=10)

    run_pass(runner_for(FakeGenerator(on_each_step=_interrupt_at(3, job.pk))))

    job.refresh_from_db()
    assert job.status == "complete" and job.image
    # Noticed from the bookkeeper's next write, as a cancel is: at the step after, or so.
    assert 3 <= job.stopped_at_step <= 5, job.stopped_at_step
    with job.image.open("rb") as file:
        image = Image.open(file)
        image.load()
    step = job.stopped_at_step
    assert image.getpixel((0, 0)) == (step, step, step), "the fake's picture of a row stopped at that step"
    assert f"Interrupted: step {step} of 10" in image.info["parameters"]
    assert "Steps: 10" in image.info["parameters"]  # the steps asked for, as A1111 writes them
    message = Message.objects.get(pk=job.message_id)
    assert message.content == f"Stopped at step {step} of 10: your image as it was then."
    assert message.metadata["status"] == "complete" and message.metadata["image_url"]


def test_interrupting_one_job_of_a_pass_leaves_the_others_running_to_the_end(runner_for, submit, bob_chat, settings):
    settings.IMAGEGEN_MAX_BATCH = 2
    worker._BATCH_FITS.clear()
    alices = submit("alice's", steps=8, seed=1)
    bobs = submit("bob's", conversation=bob_chat, steps=8, seed=2)
    generator = FakeGenerator(on_each_step=_interrupt_at(2, alices.pk))

    run_pass(runner_for(generator))

    assert generator.passes == [2]
    alices, bobs = ImageJob.objects.get(pk=alices.pk), ImageJob.objects.get(pk=bobs.pk)
    assert alices.batch == bobs.batch
    assert (alices.status, bobs.status) == ("complete", "complete")
    assert alices.stopped_at_step is not None and bobs.stopped_at_step is None
    with bobs.image.open("rb") as file:
        assert Image.open(file).getpixel((0, 0)) == (10, 20, 30), "bob's image ran every step"
    assert not bobs.interrupt_requested


def test_only_a_running_job_can_be_interrupted(submit):
    job = submit("waiting")
    assert not services.job_interrupt(job=job)
    assert not ImageJob.objects.get(pk=job.pk).interrupt_requested


def test_a_job_put_back_in_the_queue_forgets_the_interrupt_of_the_run_that_ended(submit):
    job = submit("handed back", steps=10)
    claimed = services.jobs_claim(worker="w:1", max_batch=1)[0]
    assert services.job_interrupt(job=claimed)

    services.job_hand_back(job_id=job.pk)  # the worker stopped before it noticed

    job.refresh_from_db()
    assert (job.status, job.interrupt_requested) == ("queued", False)
    # Its next run is a whole one: nothing asks it to stop at its first step.
    again = services.jobs_claim(worker="w:2", max_batch=1)[0]
    assert again.pk == job.pk and not again.interrupt_requested
