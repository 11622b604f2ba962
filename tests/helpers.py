"""Running the real worker processes against the test database."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, connections

BASE_DIR = Path(settings.BASE_DIR)


def worker_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a child process that uses this test run's database."""
    drop = {"DATABASE_URL", "SQLITE_PATH", "CHANNELS_SQLITE_PATH"}
    env = {key: value for key, value in os.environ.items() if key not in drop}
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        env["SQLITE_PATH"] = str(db["NAME"])
    else:
        user = db["USER"] or ""
        auth = f"{user}:{db['PASSWORD']}@" if db["PASSWORD"] else (f"{user}@" if user else "")
        env["DATABASE_URL"] = f"postgres://{auth}{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    if "channels" in settings.DATABASES:
        env["CHANNELS_SQLITE_PATH"] = str(connections["channels"].settings_dict["NAME"])
    env.update(
        DATA_DIR=str(data_dir),
        IMAGEGEN_MODEL_CACHE=str(settings.IMAGEGEN_MODEL_CACHE),
        IMAGEGEN_LOCK_DIR=str(settings.IMAGEGEN_LOCK_DIR),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_cluster(name: str, data_dir: Path, log_path: Path, **extra: str) -> subprocess.Popen:
    env = worker_env(data_dir, Q_CLUSTER_NAME=name, **extra)
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 5) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_for(predicate, *, timeout: float, interval: float = 0.25, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"Timed out after {timeout} s waiting for {message}")


# The databases a test that uses the configured channel layer needs.
LAYER_DATABASES = ["default", "channels"] if "channels" in settings.DATABASES else ["default"]


def listen(group: str):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    return layer, channel


def drain(layer, channel) -> list[dict]:
    received = []

    async def pull():
        import asyncio

        while True:
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout=0.2)
            except TimeoutError:
                return
            received.append(message["event"])

    async_to_sync(pull)()
    return received
