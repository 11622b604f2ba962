"""The worker through an outage of the database, Redis or the disk: nothing made is lost,
nothing is failed or run twice, the queue moves again by itself, and the log says so once."""

import io
import logging
import threading
import time

import pytest
from django.db.utils import OperationalError
from django_q.brokers import get_broker

from generation import heartbeat, selectors, services, workers
from generation.models import ImageJob
from generation.outages import OUTAGES, OutageLogFilter
from tests.fakes import FakeGenerator
from tests.helpers import run_pass
from tests.servers import ThrowawayRedis

DOWN = "connection to server at 127.0.0.1, port 5432 failed: Connection refused"


def _outage_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "generation.outages"]


def test_a_claim_cut_off_by_an_outage_fails_nothing_and_the_job_keeps_its_place(
    monkeypatch, runner_for, submit, caplog
):
    first, second = submit("first"), submit("second")

    def database_gone(**kwargs):
        raise OperationalError(DOWN)

    monkeypatch.setattr(services, "jobs_claim", database_gone)
    assert run_pass(runner_for(FakeGenerator())) is None  # the drain ends; the task does not fail

    assert [(job.status, job.attempts) for job in ImageJob.objects.order_by("pk")] == [("queued", 0), ("queued", 0)]
    assert selectors.queue_positions() == {first.pk: 1, second.pk: 2}
    assert _outage_lines(caplog) == [
        "Outage: the database cannot be reached (claiming and running jobs: " + DOWN + "). Retrying until it answers."
    ]


@pytest.mark.parametrize("error", [DOWN, "database is locked"])
def test_an_image_made_while_the_database_is_away_is_recorded_when_it_answers(
    monkeypatch, runner_for, submit, caplog, error
):
    job = submit("made during the outage")
    complete = services.job_complete
    tries = []

    def away_twice(**kwargs):
        tries.append(1)
        if len(tries) <= 2:
            raise OperationalError(error)
        return complete(**kwargs)

    monkeypatch.setattr(services, "job_complete", away_twice)
    run_pass(runner_for(FakeGenerator()))

    job.refresh_from_db()
    assert (job.status, job.attempts, len(tries)) == ("complete", 1, 3)
    assert job.message.metadata["status"] == "complete" and job.message.metadata["image_url"]
    lines = _outage_lines(caplog)
    assert len(lines) == 2 and "answers again" in lines[1], lines


def test_progress_writes_that_fail_in_an_outage_are_skipped_and_the_job_still_completes(
    monkeypatch, runner_for, submit
):
    job = submit("progress lost", steps=10)
    progress = services.job_progress
    calls = []

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) % 2:
            raise OperationalError(DOWN)
        return progress(**kwargs)

    monkeypatch.setattr(services, "job_progress", flaky)
    run_pass(runner_for(FakeGenerator(on_each_step=lambda step: time.sleep(0.05))))
    job.refresh_from_db()
    assert job.status == "complete" and len(calls) > 1


def test_an_idle_worker_hands_back_a_job_it_lost_track_of_without_counting_the_attempt(submit, settings):
    settings.IMAGEGEN_WORKER_BEAT_SECONDS = 60  # the test beats by hand
    first, second = submit("claimed, answer lost"), submit("second")
    beat = heartbeat.start(device="cpu")
    services.job_claim(worker=beat.name)  # committed, but the worker never heard of it

    with heartbeat.working():  # while a drain runs, its jobs are its own
        beat.look_after_the_queue()
        assert ImageJob.objects.get(pk=first.pk).status == "processing"

    beat.look_after_the_queue()
    first.refresh_from_db()
    assert (first.status, first.attempts) == ("queued", 0)
    assert selectors.queue_positions() == {first.pk: 1, second.pk: 2}


@pytest.mark.django_db(transaction=True)
def test_the_beat_never_takes_a_running_drains_jobs_for_lost(settings, submit, runner_for, caplog):
    settings.IMAGEGEN_WORKER_BEAT_SECONDS = 0.01  # beats race the drain's claims
    settings.IMAGEGEN_MAX_PENDING_PER_USER = settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 100
    jobs = [submit(f"job {n}") for n in range(12)]
    heartbeat.start(device="cpu")
    runner = runner_for(FakeGenerator(on_each_step=lambda step: time.sleep(0.005)))
    ran = runner.run_queue(budget=600)

    assert sorted(ran) == [job.pk for job in jobs]
    assert set(ImageJob.objects.values_list("status", "attempts")) == {("complete", 1)}
    assert not [record for record in caplog.records if "was not running" in record.getMessage()]


def test_an_idle_worker_rings_a_lost_doorbell_within_two_beats(submit, settings):
    settings.IMAGEGEN_WORKER_BEAT_SECONDS = 60
    submit("waiting for a doorbell that was lost")
    broker = get_broker("gpu")
    broker.purge_queue()  # the submission's doorbell is lost
    beat = heartbeat.start(device="cpu")

    beat.look_after_the_queue()
    assert broker.queue_size() == 0  # once could be a doorbell on its way
    beat.look_after_the_queue()
    assert broker.queue_size() == 1
    beat.look_after_the_queue()
    assert broker.queue_size() == 1  # rung again only if the queue still waits two beats on


def test_a_worker_rings_at_once_when_the_database_comes_back(submit, settings):
    settings.IMAGEGEN_WORKER_BEAT_SECONDS = 60
    submit("waiting through the outage")
    broker = get_broker("gpu")
    broker.purge_queue()
    beat = heartbeat.start(device="cpu")
    beat.look_after_the_queue(database_back=True)
    assert broker.queue_size() == 1


def test_silence_right_after_an_outage_is_not_taken_for_death(submit, settings, fake_clock, monkeypatch):
    settings.IMAGEGEN_WORKER_DEAD_AFTER_SECONDS = 20
    settings.IMAGEGEN_STUCK_AFTER_SECONDS = 300
    job = submit("in flight on another machine")
    long_ago = fake_clock.now()
    workers.worker_register(name="other-machine:4", device="cuda:0", now=long_ago)
    services.job_claim(worker="other-machine:4", now=long_ago)
    ImageJob.objects.filter(pk=job.pk).update(heartbeat_at=long_ago)  # silent for far longer than both limits

    OUTAGES.failed(OperationalError(DOWN))
    OUTAGES.answered("database")
    assert services.jobs_expire_stuck() == {"expired": [], "requeued": [], "failed": [], "rang": False}
    assert ImageJob.objects.get(pk=job.pk).status == "processing"

    # Once the workers have had time to beat again, silence means what it says.
    later = time.monotonic() + settings.IMAGEGEN_WORKER_DEAD_AFTER_SECONDS + settings.IMAGEGEN_WORKER_BEAT_SECONDS
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert services.jobs_expire_stuck()["requeued"] == [job.pk]


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OutageLogFilter())
    for name in ("django-q", "generation.outages"):
        logging.getLogger(name).addHandler(handler)
    try:
        for _ in range(50):  # what django-q2's monitor logs for every result it cannot save
            try:
                raise OperationalError(DOWN)
            except OperationalError:
                logging.getLogger("django-q").exception("Could not save task result")
        logging.getLogger("django-q").error("Something else went wrong")
        OUTAGES.answered("database")
    finally:
        for name in ("django-q", "generation.outages"):
            logging.getLogger(name).removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("Outage: the database cannot be reached (Could not save task result: ")
    assert lines[1] == "Something else went wrong"
    assert lines[2].startswith("Outage over: the database answers again after ")
    assert len(lines) == 3 and "Traceback" not in stream.getvalue()


def test_the_task_brokers_pusher_waits_out_a_redis_restart(monkeypatch, caplog):
    from django_q.conf import Conf

    from generation.brokers import PatientRedis

    redis = ThrowawayRedis()
    redis.start()
    try:
        monkeypatch.setattr(Conf, "REDIS", redis.url)
        broker = PatientRedis(list_key="outage-test")
        redis.stop()

        def come_back():
            time.sleep(1.5)
            redis.start()
            PatientRedis(list_key="outage-test").enqueue("a doorbell")

        thread = threading.Thread(target=come_back)
        thread.start()
        started = time.monotonic()
        task = None
        while task is None and time.monotonic() - started < 20:
            task = broker.dequeue()  # blocks through the outage instead of raising
        thread.join()
    finally:
        redis.destroy()
    assert task == [(None, b"a doorbell")]
    lines = _outage_lines(caplog)
    assert len(lines) == 2 and "Redis cannot be reached" in lines[0] and "Redis answers again" in lines[1]


def test_only_errors_that_mean_the_database_is_away_count_as_an_outage():
    import sqlite3

    import psycopg

    from generation.outages import kind_of

    def wrapped(cause):
        try:
            raise OperationalError(str(cause)) from cause
        except OperationalError as exc:
            return exc

    class Shutdown(psycopg.errors.AdminShutdown):
        sqlstate = "57P01"

    assert kind_of(wrapped(sqlite3.OperationalError("database is locked"))) == "database"
    assert kind_of(wrapped(sqlite3.OperationalError("no such table: generation_imagejob"))) is None
    assert kind_of(wrapped(Shutdown("terminating connection due to administrator command"))) == "database"
    assert kind_of(wrapped(psycopg.OperationalError("connection refused"))) == "database"  # no SQLSTATE
    assert kind_of(OSError(28, "No space left on device")) == "disk"
    assert kind_of(RuntimeError("a bug")) is None


def test_a_drain_first_takes_back_a_job_whose_claim_answer_was_lost(runner_for, submit):
    lost, waiting = submit("claimed, answer lost"), submit("waiting")
    services.job_claim(worker=workers.worker_name())  # the previous drain's claim, cut off
    runner = runner_for(FakeGenerator())

    assert sorted(runner.run_queue(budget=600)) == [lost.pk, waiting.pk]
    assert set(ImageJob.objects.values_list("status", "attempts")) == {("complete", 1)}


def test_nothing_is_claimed_while_the_images_disk_is_nearly_full(monkeypatch, runner_for, submit):
    from generation import files

    job = submit("no room")
    monkeypatch.setattr(files, "disk_nearly_full", lambda: True)
    assert run_pass(runner_for(FakeGenerator())) is None
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("queued", 0)


def test_a_guard_that_slept_through_an_outage_does_not_take_silence_for_death(settings, submit, monkeypatch):
    from generation import tasks

    settings.IMAGEGEN_WORKER_DEAD_AFTER_SECONDS = 20
    job = submit("in flight elsewhere")
    workers.worker_register(name="other-machine:5", device="cuda:0")
    services.job_claim(worker="other-machine:5")
    from datetime import timedelta

    from django.utils import timezone

    from generation.models import Worker

    Worker.objects.filter(name="other-machine:5").update(last_seen_at=timezone.now() - timedelta(minutes=5))
    # The last guard ran five minutes ago: the database may have been away since.
    monkeypatch.setattr(tasks, "_guard_ran_at", time.monotonic() - 300)
    assert tasks.expire_stuck_jobs()["requeued"] == []
    assert ImageJob.objects.get(pk=job.pk).status == "processing"


def test_a_library_logging_an_outage_error_as_its_message_is_one_line_too():
    from redis.exceptions import ConnectionError as RedisConnectionError

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OutageLogFilter())
    logger = logging.getLogger("django-q")
    logger.addHandler(handler)
    try:
        for _ in range(20):  # django-q2's status saver: logger.error(e), every half second
            logger.error(RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == ""  # noted once, by generation.outages, which has no handler here
    assert OUTAGES.down("redis")
