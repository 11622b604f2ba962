"""Workers are rows that beat; a job whose worker stopped beating goes back to its place."""

import threading
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from generation import heartbeat, selectors, services, workers
from generation.models import ImageJob, Worker
from tests.fakes import FakeGenerator
from tests.helpers import run_pass


def test_a_job_whose_worker_stopped_beating_goes_back_to_its_place_at_the_next_guard(settings, submit, fake_clock):
    settings.IMAGEGEN_WORKER_DEAD_AFTER_SECONDS = 20
    first, second = submit("first"), submit("second")
    now = fake_clock.now()
    # A worker on another host (a container recreated under a new name): its pid means nothing here.
    workers.worker_register(name="old-container:7", device="cuda:0", now=now)
    services.job_claim(worker="old-container:7", now=now)

    assert services.jobs_expire_stuck(now=now + timedelta(seconds=10))["requeued"] == []
    result = services.jobs_expire_stuck(now=now + timedelta(seconds=30))

    assert result["requeued"] == [first.pk] and result["expired"] == []
    first.refresh_from_db()
    assert first.status == "queued" and "stopped beating" in first.error_detail
    assert selectors.queue_positions() == {first.pk: 1, second.pk: 2}


def test_a_beating_worker_keeps_its_job(settings, submit, fake_clock):
    job = submit("kept")
    now = fake_clock.now()
    workers.worker_register(name="gpu-host:9", device="cuda:0", now=now)
    services.job_claim(worker="gpu-host:9", now=now)
    workers.worker_beat(name="gpu-host:9", device="cuda:0", now=now + timedelta(seconds=25))
    assert services.jobs_expire_stuck(now=now + timedelta(seconds=30))["requeued"] == []
    assert ImageJob.objects.get(pk=job.pk).status == "processing"


@pytest.mark.django_db(transaction=True)
def test_the_worker_beats_while_a_model_loads_so_the_guard_leaves_the_job_alone(settings, submit, runner_for):
    settings.IMAGEGEN_WORKER_BEAT_SECONDS = 0.05
    job = submit("slow load")
    heartbeats = []

    class SlowLoading(FakeGenerator):
        def load(self, name):
            claimed = ImageJob.objects.get(pk=job.pk).heartbeat_at
            time.sleep(0.6)
            heartbeats.append((claimed, ImageJob.objects.get(pk=job.pk).heartbeat_at))

    beat = heartbeat.start(device="cpu")
    try:
        run_pass(runner_for(SlowLoading()))
    finally:
        heartbeat.stop()
    ((claimed, after_load),) = heartbeats
    assert after_load > claimed, "the job's heartbeat moved while its model was loading"
    assert Worker.objects.get(name=beat.name).last_seen_at > claimed
    assert ImageJob.objects.get(pk=job.pk).status == "complete"


def test_a_worker_registers_once_per_process_and_shows_as_live(db, settings, capsys):
    settings.IMAGEGEN_WORKER_BEAT_SECONDS = 60
    beat = heartbeat.start(device="cpu")
    try:
        assert heartbeat.start() is beat
        worker = Worker.objects.get()
        assert (worker.name, worker.device) == (workers.worker_name(), "cpu")
        assert list(selectors.workers_live()) == [worker]
        call_command("queue")
        assert f"Live workers: 1\n  {worker.name} on cpu, up to 1 per pass, running" in capsys.readouterr().out
    finally:
        heartbeat.stop()


def test_the_admin_lists_workers_for_staff(admin_user):
    workers.worker_register(name="gpu-a:1", device="cuda:0")
    client = Client()
    client.force_login(admin_user)
    body = client.get(reverse("admin:generation_worker_changelist")).content.decode()
    assert "gpu-a:1" in body and "cuda:0" in body


@pytest.mark.django_db(transaction=True)
def test_beats_from_another_thread_do_not_disturb_claims(submit, runner_for):
    # The beat thread writes beside the worker's own writes (SQLite's write lock, PostgreSQL rows).
    submit("one")
    stop = threading.Event()
    workers.worker_register(name="w:1", device="cpu")

    def beat():
        while not stop.is_set():
            workers.worker_beat(name="w:1", device="cpu")

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        assert run_pass(runner_for(FakeGenerator())).pk
    finally:
        stop.set()
        thread.join()


@pytest.mark.django_db(transaction=True)
def test_a_live_worker_takes_back_a_dead_workers_job_within_seconds_without_the_guard(settings, submit):
    settings.IMAGEGEN_WORKER_DEAD_AFTER_SECONDS = 1
    settings.IMAGEGEN_WORKER_BEAT_SECONDS = 0.1
    lost, waiting = submit("lost"), submit("waiting")
    workers.worker_register(name="other-machine:3", device="cuda:0")
    services.job_claim(worker="other-machine:3")  # then that machine goes silent
    beat = heartbeat.WorkerBeat(device="cpu", interval=settings.IMAGEGEN_WORKER_BEAT_SECONDS)
    beat.start()
    try:
        deadline = time.monotonic() + 10
        while ImageJob.objects.get(pk=lost.pk).status != "queued" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        beat.stop()
    lost.refresh_from_db()
    assert lost.status == "queued" and "stopped beating" in lost.error_detail
    assert selectors.queue_positions() == {lost.pk: 1, waiting.pk: 2}
