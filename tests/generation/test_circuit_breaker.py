from datetime import timedelta

import pytest

from generation import services
from generation.models import CircuitBreaker, ImageJob
from generation.selectors import service_status
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


def _breaker():
    return CircuitBreaker.objects.get(name="generation")


@pytest.fixture
def breaker_settings(settings):
    settings.IMAGEGEN_BREAKER_THRESHOLD = 5
    settings.IMAGEGEN_BREAKER_COOLDOWN_SECONDS = 60
    settings.IMAGEGEN_MAX_ATTEMPTS = 1


def test_four_failures_keep_it_closed_and_the_fifth_opens_it(breaker_settings, runner_for, submit):
    runner = runner_for(FakeGenerator(failures=[RuntimeError("boom")] * 5))
    for n in range(5):
        submit(f"job {n}")

    for _ in range(4):
        run_pass(runner)
    assert (_breaker().state, _breaker().failures) == ("closed", 4)

    run_pass(runner)
    assert _breaker().state == "open"
    assert "paused" in service_status()["message"]


def test_while_open_jobs_stay_queued_then_a_trial_after_the_cooldown_closes_it(
    breaker_settings, runner_for, submit, fake_clock
):
    failing = runner_for(FakeGenerator(failures=[RuntimeError("boom")] * 5))
    for n in range(5):
        submit(f"doomed {n}")
        run_pass(failing)
    assert _breaker().state == "open"

    waiting = [submit("kept 1"), submit("kept 2")]
    healthy = runner_for(FakeGenerator())
    fake_clock.advance(30)
    # The worker waits out the cool-down (bounded), then runs the oldest job as the trial.
    trial = run_pass(healthy)
    assert trial == waiting[0]
    assert sum(fake_clock.sleeps) == pytest.approx(30, abs=1.1)
    assert _breaker().state == "closed" and _breaker().failures == 0
    assert run_pass(healthy) == waiting[1]
    assert set(ImageJob.objects.filter(pk__in=[j.pk for j in waiting]).values_list("status", flat=True)) == {"complete"}


def test_nothing_is_claimed_while_open_and_the_first_claim_after_the_cooldown_is_the_trial(
    breaker_settings, submit, fake_clock
):
    opened = fake_clock.now()
    CircuitBreaker.objects.create(name="generation", state="open", failures=5, opened_at=opened)
    job = submit("kept")

    assert services.job_claim(worker="w", now=opened + timedelta(seconds=59)) is None
    assert ImageJob.objects.get(pk=job.pk).status == "queued"

    assert services.job_claim(worker="w", now=opened + timedelta(seconds=60)) == job
    assert _breaker().state == "half_open"
    assert services.job_claim(worker="w2", now=opened + timedelta(seconds=61)) is None, "one trial at a time"


def test_a_failed_trial_opens_it_again(breaker_settings, runner_for, submit, fake_clock):
    CircuitBreaker.objects.create(
        name="generation", state="open", failures=5, opened_at=fake_clock.now() - timedelta(seconds=61)
    )
    job = submit("trial")
    run_pass(runner_for(FakeGenerator(failures=[RuntimeError("still broken")])))
    assert ImageJob.objects.get(pk=job.pk).status == "error"
    breaker = _breaker()
    assert breaker.state == "open"
    assert breaker.opened_at == fake_clock.now()


def test_the_trial_is_half_open_while_it_runs(breaker_settings, runner_for, submit, fake_clock):
    CircuitBreaker.objects.create(
        name="generation", state="open", failures=5, opened_at=fake_clock.now() - timedelta(seconds=61)
    )
    states = []
    submit("trial")
    run_pass(runner_for(FakeGenerator(on_each_step=lambda step: states.append(_breaker().state))))
    assert set(states) == {"half_open"}
    assert _breaker().state == "closed"
