"""Real worker processes killed mid-job, and a whole restart: nothing stuck, nothing lost."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from generation import services
from generation.models import ImageJob
from generation.workers import process_is_gone
from tests.helpers import BASE_DIR, start_cluster, stop, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


# Long enough (a few seconds on a CPU) to be caught mid-run, and cheap to run again in
# full once it is requeued: the steps, not the size, make it long.
LONG = {"steps": 100, "width": 256, "height": 256}


def _submit(user, conversation, prompt, **params):
    params = {"steps": 3, "width": 64, "height": 64, **params}
    return services.job_submit(user=user, conversation=conversation, prompt=prompt, **params).jobs[0]


def _processing(job):
    job.refresh_from_db()
    return job.status == "processing" and job.progress > 0 and job


def _all_complete(jobs):
    return ImageJob.objects.filter(pk__in=[j.pk for j in jobs], status="complete").count() == len(jobs)


def _log_on_failure(tmp_path):
    for log in sorted(tmp_path.glob("*.log")):
        print(f"--- {log.name}\n{log.read_text()[-3000:]}")


def test_a_worker_killed_mid_job_leaves_no_job_stuck_and_the_next_one_runs(alice, alice_chat, tmp_path):
    long_job = _submit(alice, alice_chat, "long", **LONG)
    next_job = _submit(alice, alice_chat, "next")
    cluster = start_cluster("gpu", tmp_path, tmp_path / "gpu.log")
    try:
        running = wait_for(lambda: _processing(long_job), timeout=120, message="the long job running")
        worker_pid = int(running.worker.rpartition(":")[2])
        os.kill(worker_pid, signal.SIGKILL)
        wait_for(lambda: process_is_gone(socket.gethostname(), worker_pid), timeout=10, message="death")

        result = services.jobs_expire_stuck()  # what the maintenance cluster runs every minute

        assert result["requeued"] == [long_job.pk]
        wait_for(lambda: _all_complete([long_job, next_job]), timeout=180, message="both jobs complete")
    except AssertionError:
        _log_on_failure(tmp_path)
        raise
    finally:
        stop(cluster)
    long_job.refresh_from_db()
    assert long_job.attempts == 2 and long_job.image


def test_a_restart_with_jobs_queued_loses_none_and_runs_them_in_order(alice, alice_chat, bob, bob_chat, tmp_path):
    jobs = [
        _submit(alice, alice_chat, "first", **LONG),
        _submit(bob, bob_chat, "second"),
        _submit(alice, alice_chat, "third"),
    ]
    first = start_cluster("gpu", tmp_path, tmp_path / "gpu-1.log")
    try:
        wait_for(lambda: _processing(jobs[0]), timeout=120, message="the first job running")
    finally:
        stop(first, sig=signal.SIGKILL)  # the power goes out
    assert list(ImageJob.objects.order_by("sequence").values_list("status", flat=True)) == [
        "processing",
        "queued",
        "queued",
    ]

    # What `make run` does on start: the guard once, then the workers.
    subprocess.run(
        [sys.executable, "manage.py", "expire_stuck_jobs"], cwd=BASE_DIR, env=worker_env(tmp_path), check=True
    )
    second = start_cluster("gpu", tmp_path, tmp_path / "gpu-2.log")
    try:
        wait_for(lambda: _all_complete(jobs), timeout=180, message="all jobs complete after the restart")
    except AssertionError:
        _log_on_failure(tmp_path)
        raise
    finally:
        stop(second)
    done = list(ImageJob.objects.order_by("started_at"))
    assert [job.pk for job in done] == [job.pk for job in jobs]
    assert all(job.image for job in done)


def test_a_task_stopped_by_the_hard_timeout_still_ends_its_job(alice, alice_chat, tmp_path):
    warm_up = _submit(alice, alice_chat, "load the model first")
    hung = _submit(alice, alice_chat, "too slow", steps=100, width=1024, height=1024)
    after = _submit(alice, alice_chat, "after")
    # Long enough for the warm-up's task to load the model and run it (a few seconds);
    # the hung job waits this out in full.
    cluster = start_cluster("gpu", tmp_path, tmp_path / "gpu.log", IMAGEGEN_HARD_TIMEOUT_SECONDS="15")
    try:
        wait_for(lambda: _all_complete([warm_up, after]), timeout=180, message="the other jobs complete")
    except AssertionError:
        _log_on_failure(tmp_path)
        raise
    finally:
        stop(cluster)
    hung.refresh_from_db()
    assert hung.status == "error"
    assert hung.error == "Image generation timed out after 15 s. Please try again."
    assert not hung.image
