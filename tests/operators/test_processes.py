"""`make run` stops promptly on Ctrl-C: the Procfile's clusters survive the group signal."""

import os
import signal
import subprocess
import time

import pytest

from tests.helpers import BASE_DIR, LAYER_DATABASES, wait_for, worker_env

pytestmark = [pytest.mark.configured_layer, pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES)]


@pytest.mark.parametrize("cluster", ["gpu", "maintenance"])
def test_a_cluster_stops_cleanly_when_its_whole_process_group_is_told_to(cluster, tmp_path):
    log = tmp_path / "cluster.log"
    process = subprocess.Popen(
        ["scripts/qcluster.sh", cluster],
        cwd=BASE_DIR,
        env=worker_env(tmp_path),
        stdout=open(log, "ab"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while "running." not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "running." in log.read_text(), log.read_text()[-2000:]

        os.killpg(process.pid, signal.SIGTERM)  # what honcho and a terminal's Ctrl-C do
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert "has stopped." in log.read_text(), log.read_text()[-2000:]


def test_a_cluster_busy_with_a_job_is_stopped_within_seconds_and_leaves_nothing_running(alice, alice_chat, tmp_path):
    from generation import services
    from generation.models import ImageJob

    job = services.job_submit(user=alice, conversation=alice_chat, prompt="long", steps=100, width=768, height=768)
    log = tmp_path / "cluster.log"
    process = subprocess.Popen(
        ["scripts/qcluster.sh", "gpu"],
        cwd=BASE_DIR,
        env=worker_env(tmp_path, STOP_SECONDS="2"),
        stdout=open(log, "ab"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: ImageJob.objects.get(pk=job.pk).status == "processing", timeout=120, message="the job")
        cluster = int(subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout)
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
        assert time.monotonic() - started < 6

        def nothing_left():
            return subprocess.run(["pgrep", "-s", str(cluster)], capture_output=True).returncode == 1

        wait_for(nothing_left, timeout=5, interval=0.1, message="every process of the cluster to end")
        # What the next `make run` does first: the job goes back to the queue, not lost.
        assert services.jobs_expire_stuck()["requeued"] == [job.pk]
        assert ImageJob.objects.get(pk=job.pk).status == "queued"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
