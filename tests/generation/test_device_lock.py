import os
import signal
import subprocess
import sys
import time

import pytest

from generation.locks import DeviceBusy, device_lock
from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import BASE_DIR, run_pass

HOLDER = """
import sys, time
from pathlib import Path
from generation.locks import device_lock
with device_lock("cpu", lock_dir=Path(sys.argv[1]), wait=5):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the cpu device's lock."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "locks")],
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout.readline().strip() == "held"
    yield process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_second_process_cannot_take_a_held_device_and_waits_a_bounded_time(holder, tmp_path):
    started = time.monotonic()
    with pytest.raises(DeviceBusy, match="busy"), device_lock("cpu", lock_dir=tmp_path / "locks", wait=0.5):
        pass
    assert 0.4 < time.monotonic() - started < 5


def test_the_lock_is_freed_when_its_holder_is_killed(holder, tmp_path):
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    with device_lock("cpu", lock_dir=tmp_path / "locks", wait=2):
        pass


def test_other_devices_are_not_blocked(holder, tmp_path):
    with device_lock("cuda:1", lock_dir=tmp_path / "locks", wait=0):
        pass


def test_the_lock_is_released_after_success_and_after_an_error(tmp_path):
    with device_lock("cpu", lock_dir=tmp_path, wait=0):
        pass
    with pytest.raises(RuntimeError), device_lock("cpu", lock_dir=tmp_path, wait=0):
        raise RuntimeError("job blew up")
    with device_lock("cpu", lock_dir=tmp_path, wait=0):
        pass


def test_a_worker_that_cannot_get_the_device_leaves_the_job_queued(holder, settings, runner_for, submit, fake_clock):
    settings.IMAGEGEN_GPU_LOCK_WAIT_SECONDS = 30
    job = submit("patience")

    assert run_pass(runner_for(FakeGenerator())) is None

    assert ImageJob.objects.get(pk=job.pk).status == "queued"
    assert sum(fake_clock.sleeps) == pytest.approx(30, abs=0.2), "waited its 30 s, no more"
