import pytest

from chat.models import Message
from generation.models import ImageJob
from generation.request import TransientGenerationError
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


def _reload(job):
    job.refresh_from_db()
    return job, Message.objects.get(pk=job.message_id)


def test_a_failing_job_becomes_an_error_and_the_next_job_runs_at_once(runner_for, submit, fake_clock):
    runner = runner_for(FakeGenerator(failures=[RuntimeError("CUDA kernel exploded")]))
    broken, healthy = submit("broken"), submit("healthy")

    run_pass(runner)
    run_pass(runner)

    broken, message = _reload(broken)
    assert broken.status == "error"
    assert broken.error == "Image generation failed because of a problem on the server. Please try again."
    assert "CUDA kernel exploded" in broken.error_detail
    assert message.metadata["status"] == "error"
    assert message.metadata["error"] == broken.error
    assert message.metadata["finished_at"]
    assert not broken.image
    assert _reload(healthy)[0].status == "complete"
    assert fake_clock.sleeps == [], "nothing waited between the two jobs"


def test_a_job_over_its_time_limit_fails_with_a_friendly_message(settings, runner_for, submit, fake_clock):
    settings.IMAGEGEN_TIMEOUT_SECONDS = 180
    runner = runner_for(FakeGenerator(on_each_step=lambda step: fake_clock.advance(50)))
    slow, after = submit("slow", steps=10), submit("after", steps=2)

    run_pass(runner)

    slow, message = _reload(slow)
    assert slow.status == "error"
    assert slow.error == "Image generation timed out after 180 s. Please try again."
    assert message.metadata["error"] == "Image generation timed out after 180 s. Please try again."
    assert slow.progress < 100
    run_pass(runner)
    assert _reload(after)[0].status == "complete"


def test_transient_errors_are_retried_with_exponential_backoff(settings, runner_for, submit, fake_clock):
    settings.IMAGEGEN_MAX_ATTEMPTS = 3
    settings.IMAGEGEN_RETRY_BASE_SECONDS = 2
    runner = runner_for(FakeGenerator(failures=[TransientGenerationError("busy"), MemoryError()]))
    job = submit("flaky")

    run_pass(runner)  # attempt 1 fails: back in the queue for 2 s
    job, message = _reload(job)
    assert (job.status, job.attempts) == ("queued", 1)
    assert message.metadata["retrying"] is True

    run_pass(runner)  # waits 2 s, attempt 2 fails: 4 s
    run_pass(runner)  # waits 4 s, attempt 3 succeeds

    job, message = _reload(job)
    assert (job.status, job.attempts) == ("complete", 3)
    assert message.content == "Your image is ready."
    assert message.metadata["retrying"] is False
    assert sum(fake_clock.sleeps) == pytest.approx(6, abs=0.1)


def test_a_job_that_keeps_failing_transiently_gives_up_after_the_last_attempt(settings, runner_for, submit):
    settings.IMAGEGEN_MAX_ATTEMPTS = 2
    runner = runner_for(FakeGenerator(failures=[TransientGenerationError("busy")] * 5))
    job = submit("never")

    run_pass(runner)
    run_pass(runner)

    job, message = _reload(job)
    assert (job.status, job.attempts) == ("error", 2)
    assert "temporarily unavailable" in job.error
    assert message.metadata["retrying"] is False
    assert message.metadata["status"] == "error"


def test_jobs_behind_a_retrying_job_run_while_it_waits(settings, runner_for, submit, fake_clock):
    settings.IMAGEGEN_RETRY_BASE_SECONDS = 30
    runner = runner_for(FakeGenerator(failures=[TransientGenerationError("busy")]))
    flaky, other = submit("flaky"), submit("other")

    run_pass(runner)
    assert run_pass(runner) == other
    assert fake_clock.sleeps == []
    assert run_pass(runner) == flaky
    assert ImageJob.objects.get(pk=flaky.pk).status == "complete"


def test_words_in_a_prompt_never_make_the_real_worker_fail_or_hang(runner_for, submit):
    from generation.registry import get_generator

    job = submit("[fail] [hang] a storm over a lighthouse", steps=2)
    run_pass(runner_for(get_generator()))
    job.refresh_from_db()
    assert (job.status, job.error) == ("complete", "")
