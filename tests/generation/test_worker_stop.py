"""A worker told to stop claims nothing more, and finishes or hands back its running job."""

import signal
import subprocess
import time

import pytest

from chat.models import Message
from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import BASE_DIR, wait_for, worker_env


@pytest.fixture
def stop_file(settings, tmp_path):
    settings.IMAGEGEN_STOP_FILE = str(tmp_path / "stop")
    settings.IMAGEGEN_STOP_GRACE_SECONDS = 1.5
    return tmp_path / "stop"


def _told_to_stop_at(step_number, stop_file, fake_clock, seconds_per_step):
    def each_step(step):
        fake_clock.advance(seconds_per_step)
        if step == step_number:
            stop_file.touch()

    return each_step


@pytest.mark.django_db(transaction=True)  # the drain records on a thread of its own
def test_a_long_job_goes_back_to_its_place_and_nothing_more_is_claimed(stop_file, fake_clock, runner_for, submit):
    running, waiting = submit("a long one", steps=10), submit("the next one")
    sequence = running.sequence
    generator = FakeGenerator(on_each_step=_told_to_stop_at(3, stop_file, fake_clock, seconds_per_step=1.0))

    ran = runner_for(generator).run_queue(budget=60)

    running.refresh_from_db()
    waiting.refresh_from_db()
    assert ran == [running.pk]
    assert (running.status, running.sequence, running.attempts, running.progress) == ("queued", sequence, 0, 0)
    assert running.started_at is None and not running.image
    assert waiting.status == "queued" and generator.prompts == ["a long one"]
    message = Message.objects.get(pk=running.message_id)
    assert message.metadata["status"] == "queued"
    assert message.content == "Waiting for a worker; your image keeps its place in the queue."


@pytest.mark.django_db(transaction=True)
def test_a_job_about_to_end_is_finished_first(stop_file, fake_clock, runner_for, submit):
    running, waiting = submit("nearly done", steps=10), submit("the next one")
    generator = FakeGenerator(on_each_step=_told_to_stop_at(9, stop_file, fake_clock, seconds_per_step=0.1))

    runner_for(generator).run_queue(budget=60)

    running.refresh_from_db()
    waiting.refresh_from_db()
    assert running.status == "complete" and running.image
    assert waiting.status == "queued" and generator.prompts == ["nearly done"]


@pytest.mark.django_db(transaction=True)
def test_ctrl_c_on_a_running_cluster_hands_its_job_back_and_stops_within_seconds(alice, alice_chat, tmp_path):
    from generation.services import job_submit

    slow = job_submit(user=alice, conversation=alice_chat, prompt="slow", steps=20, width=64, height=64).jobs[0]
    after = job_submit(user=alice, conversation=alice_chat, prompt="after", steps=2, width=64, height=64).jobs[0]
    env = worker_env(
        tmp_path,
        IMAGEGEN_GENERATOR="bench.zero_cost.ZeroCostGenerator",
        IMAGEGEN_BENCH_GPU_MS="30000",  # a 30 s image: the stop comes while it runs
        DATA_DIR=str(tmp_path),
    )
    log = open(tmp_path / "gpu.log", "wb")  # noqa: SIM115 - closed below
    script = subprocess.Popen(
        ["scripts/qcluster.sh", "gpu"],
        cwd=BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        # As from a terminal, whatever this run inherited (a shell's background job ignores SIGINT).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for(lambda: ImageJob.objects.get(pk=slow.pk).progress > 0, timeout=60, message="the slow job running")
        started = time.monotonic()
        script.send_signal(signal.SIGINT)
        script.wait(timeout=20)
        stopped_in = time.monotonic() - started
    finally:
        if script.poll() is None:
            script.terminate()  # the script stops its cluster (which runs in a session of its own)
            script.wait(timeout=20)
        log.close()
    slow.refresh_from_db()
    after.refresh_from_db()
    assert (slow.status, slow.attempts) == ("queued", 0), (tmp_path / "gpu.log").read_text()[-2000:]
    assert after.status == "queued" and after.attempts == 0
    assert stopped_in < 5
    assert not list(tmp_path.glob("run/*.stop"))
