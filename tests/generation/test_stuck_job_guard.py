import io
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.management import call_command

from chat.models import Message
from generation import events, services, workers
from generation.broadcasts import queue_broadcast_run
from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import drain, listen, run_pass

ELSEWHERE = "gpu-box-2:4242"  # a worker on another host: only its heartbeat tells


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _claim(*, worker, now):
    job = services.job_claim(worker=worker, now=now)
    assert job is not None
    return job


def _claim_as_dead_worker(*, now):
    """Claim as a worker of this host that registered (as every worker does) and then died."""
    worker = f"{socket.gethostname()}:{_dead_pid()}"
    workers.worker_register(name=worker, device="cpu", now=now)
    return _claim(worker=worker, now=now)


def _status(job):
    return ImageJob.objects.get(pk=job.pk).status


@pytest.mark.parametrize("idle_minutes,expected", [(4, "processing"), (5, "error"), (10, "error")])
def test_the_guard_fails_a_job_only_after_five_minutes_without_a_heartbeat(submit, fake_clock, idle_minutes, expected):
    submit("stuck?")
    job = _claim(worker=ELSEWHERE, now=fake_clock.now())

    result = services.jobs_expire_stuck(now=fake_clock.now() + timedelta(minutes=idle_minutes))

    job.refresh_from_db()
    assert job.status == expected
    if expected == "error":
        assert result["expired"] == [job.pk]
        assert job.error == "Generation timed out (stuck job guard)"
        message = Message.objects.get(pk=job.message_id)
        assert message.metadata["status"] == "error"
        assert message.metadata["error"] == "Generation timed out (stuck job guard)"
        assert message.metadata["prompt"] == "stuck?", "the merge keeps what was there"
    else:
        assert result["expired"] == []


def test_a_long_job_with_a_fresh_heartbeat_is_left_alone(submit, fake_clock):
    submit("a long one", steps=100)
    start = fake_clock.now()
    job = _claim(worker=ELSEWHERE, now=start)
    services.job_progress(job=job, step=90, total=100, persist=True, now=start + timedelta(minutes=19))

    services.jobs_expire_stuck(now=start + timedelta(minutes=20))

    assert _status(job) == "processing"


@pytest.mark.django_db(transaction=True)
def test_the_guard_tells_the_user_live(alice, submit, fake_clock):
    submit("stuck")
    job = _claim(worker=ELSEWHERE, now=fake_clock.now())
    layer, channel = listen(events.user_group(alice.pk))

    services.jobs_expire_stuck(now=fake_clock.now() + timedelta(minutes=6))

    received = drain(layer, channel)
    assert {
        "type": "job.error",
        "job_id": job.pk,
        "status": "error",
        "error": "Generation timed out (stuck job guard)",
    } in received


def test_a_job_whose_worker_died_is_retried_in_its_place(settings, submit, fake_clock):
    settings.IMAGEGEN_MAX_ATTEMPTS = 3
    orphan, behind = submit("orphan"), submit("behind")
    _claim_as_dead_worker(now=fake_clock.now())

    result = services.jobs_expire_stuck(now=fake_clock.now())

    assert result["requeued"] == [orphan.pk]
    assert _status(orphan) == "queued"
    assert services.job_claim(worker="next", now=fake_clock.now()) == orphan, "it keeps its place"
    assert _status(behind) == "queued"


@pytest.mark.django_db(transaction=True)
def test_the_owner_sees_a_requeued_job_back_in_the_queue_live(alice, settings, submit, fake_clock):
    settings.IMAGEGEN_MAX_ATTEMPTS = 3
    orphan = submit("orphan")
    _claim_as_dead_worker(now=fake_clock.now())
    layer, channel = listen(events.user_group(alice.pk))

    services.jobs_expire_stuck(now=fake_clock.now())

    queue_broadcast_run()  # what the maintenance cluster runs when asked

    received = drain(layer, channel)
    queued = [event for event in received if event["type"] == "job.queued"]
    assert [(event["job_id"], event["status"]) for event in queued] == [(orphan.pk, "queued")]
    (positions,) = [event for event in received if event["type"] == "queue.positions"]
    assert [(job["job_id"], job["position"]) for job in positions["jobs"]] == [(orphan.pk, 1)]


def test_a_job_whose_worker_died_on_its_last_attempt_fails_clearly(settings, submit, fake_clock):
    settings.IMAGEGEN_MAX_ATTEMPTS = 1
    orphan = submit("orphan")
    _claim_as_dead_worker(now=fake_clock.now())

    services.jobs_expire_stuck(now=fake_clock.now())

    orphan.refresh_from_db()
    assert orphan.status == "error"
    assert orphan.error == "Image generation stopped unexpectedly. Please try again."


def test_a_live_worker_on_this_host_is_not_disturbed(submit, fake_clock):
    job = submit("mine")
    _claim(worker=f"{socket.gethostname()}:{subprocess.os.getpid()}", now=fake_clock.now())
    services.jobs_expire_stuck(now=fake_clock.now() + timedelta(minutes=1))
    assert _status(job) == "processing"


@pytest.mark.django_db(transaction=True)
def test_queued_jobs_nobody_is_running_get_the_worker_rung_again(sync_q, monkeypatch, submit):
    from django_q.conf import Conf

    generator = FakeGenerator()
    monkeypatch.setattr("generation.worker.get_generator", lambda: generator)
    monkeypatch.setattr(Conf, "SYNC", False)
    job = submit("the doorbell was lost")  # rung into a broker nobody reads
    monkeypatch.setattr(Conf, "SYNC", True)

    out = io.StringIO()
    call_command("expire_stuck_jobs", stdout=out)

    assert "rang the worker" in out.getvalue()
    assert _status(job) == "complete"
    assert generator.prompts == ["the doorbell was lost"]


def test_a_failure_outside_the_generation_still_ends_the_job(monkeypatch, runner_for, submit):
    job = submit("unlucky")

    def broken(**kwargs):
        raise RuntimeError("the image store is misconfigured")

    monkeypatch.setattr(services, "job_complete", broken)
    run_pass(runner_for(FakeGenerator()))  # the bookkeeper records the failure; the worker lives on

    job.refresh_from_db()
    assert job.status == "error"
    assert "misconfigured" in job.error_detail
    assert job.error == "Image generation failed because of a problem on the server. Please try again."


def test_a_full_disk_keeps_the_image_until_it_can_be_stored(monkeypatch, runner_for, submit, caplog):
    job = submit("patient")
    complete = services.job_complete
    tries = []

    def disk_full_twice(**kwargs):
        tries.append(1)
        if len(tries) <= 2:
            raise OSError(28, "No space left on device")
        return complete(**kwargs)

    monkeypatch.setattr(services, "job_complete", disk_full_twice)
    run_pass(runner_for(FakeGenerator()))

    job.refresh_from_db()
    assert job.status == "complete" and job.attempts == 1
    assert len(tries) == 3
    outage_lines = [r.getMessage() for r in caplog.records if r.name == "generation.outages"]
    assert len(outage_lines) == 2, outage_lines  # one when it starts, one when it ends
    assert "the disk cannot be reached" in outage_lines[0] and "answers again" in outage_lines[1]
