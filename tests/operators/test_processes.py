"""`make run` stops promptly on Ctrl-C: the Procfile's clusters survive the group signal."""

import os
import signal
import sqlite3
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

    job = services.job_submit(
        user=alice, conversation=alice_chat, prompt="long", steps=100, width=768, height=768
    ).jobs[0]
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


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(line) for line in out.split()]


def test_the_web_server_runs_several_processes_on_one_port_and_replaces_one_that_dies(tmp_path):
    import requests

    from tests.helpers import start_web, stop

    web, url = start_web(tmp_path, tmp_path / "web.log", WEB_PROCESSES="2")
    try:
        wait_for(lambda: len(_children(web.pid)) == 2, timeout=30, message="two daphne processes")
        first, second = _children(web.pid)
        wait_for(lambda: requests.get(f"{url}/login/", timeout=5).status_code == 200, timeout=60, message="answers")

        os.kill(first, signal.SIGKILL)  # one process dies: the other goes on serving
        assert all(requests.get(f"{url}/login/", timeout=5).status_code == 200 for _ in range(10))
        wait_for(
            lambda: len(_children(web.pid)) == 2 and first not in _children(web.pid),
            timeout=30,
            message="a new process in place of the dead one",
        )
        assert second in _children(web.pid)

        children = _children(web.pid)
        web.send_signal(signal.SIGTERM)  # what honcho sends: everything stops
        web.wait(timeout=15)
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), timeout=10, message="all gone")
    finally:
        stop(web, signal.SIGKILL)
    assert "web: 2 daphne process(es)" in (tmp_path / "web.log").read_text()


def test_make_superuser_on_a_fresh_install_sets_the_database_up_first(tmp_path):
    """Before the first `make run` there are no tables yet: the account is made anyway."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SQLITE_PATH", "DJANGO_SETTINGS_MODULE"}
    }
    env |= {
        "DATA_DIR": str(tmp_path / "data"),
        "DJANGO_SUPERUSER_USERNAME": "root",
        "DJANGO_SUPERUSER_EMAIL": "root@example.com",
        "DJANGO_SUPERUSER_PASSWORD": "root-secret-pw",
    }
    result = subprocess.run(
        ["make", "--no-print-directory", "superuser", "ARGS=--noinput"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert "Superuser created successfully." in output
    database = sqlite3.connect(tmp_path / "data" / "db.sqlite3")
    assert database.execute("select is_superuser, is_staff from auth_user where username = 'root'").fetchall() == [
        (1, 1)
    ]
