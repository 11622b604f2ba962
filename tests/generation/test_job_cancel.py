import time

import pytest

from chat.models import Message
from generation import services
from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


def test_a_queued_job_is_cancelled_at_once_and_never_runs(runner_for, submit):
    job, other = submit("unwanted"), submit("wanted")
    generator = FakeGenerator()

    services.job_cancel(job=job)

    job.refresh_from_db()
    assert job.status == "cancelled" and job.finished_at
    message = Message.objects.get(pk=job.message_id)
    assert message.metadata["status"] == "cancelled"
    assert message.content == "No image was made."
    run_pass(runner_for(generator))
    assert generator.prompts == ["wanted"]
    assert ImageJob.objects.get(pk=other.pk).status == "complete"


def test_a_running_job_stops_at_its_next_step_and_keeps_no_image(runner_for, submit, settings):
    job, other = submit("stop me", steps=10), submit("next")
    steps_run = []

    def user_cancels_at_step_3(step):
        time.sleep(0.1)  # a step takes time on a real device; the bookkeeper writes meanwhile
        steps_run.append(step)
        if step == 3 and len(steps_run) == 3:
            services.job_cancel(job=ImageJob.objects.get(pk=job.pk))

    runner = runner_for(FakeGenerator(on_each_step=user_cancels_at_step_3))
    run_pass(runner)

    job.refresh_from_db()
    assert job.status == "cancelled"
    assert not job.image
    # The worker notices the cancel from its bookkeeper's next write: at the step after.
    assert steps_run[:3] == [1, 2, 3] and len(steps_run) <= 5, steps_run
    assert not any(settings.MEDIA_ROOT.rglob("*.png"))
    run_pass(runner)
    assert ImageJob.objects.get(pk=other.pk).status == "complete"


@pytest.mark.parametrize("final", ["complete", "error", "cancelled"])
def test_a_finished_job_cannot_be_cancelled(submit, final):
    job = submit("done")
    ImageJob.objects.filter(pk=job.pk).update(status=final)
    with pytest.raises(services.JobError, match=f"already {final}"):
        services.job_cancel(job=job)
    assert ImageJob.objects.get(pk=job.pk).status == final
