"""Running the real worker processes against the test database."""

import os
import signal
import socket
import subprocess
import sys
import threading
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


# The web process borrows PostgreSQL connections from a pool, as in the Procfile.
WEB_ENV = {"DATABASE_POOL_MAX_SIZE": "20"}


def start_web(data_dir: Path, log_path: Path, *, port: int = 0, **extra: str) -> tuple[subprocess.Popen, str]:
    """The web server (scripts/web.py, as the Procfile runs it) against the test database
    on `port` (default: a free one), with one daphne process unless WEB_PROCESSES says
    otherwise; returns (launcher process, base URL)."""
    if not port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    settings = {**WEB_ENV, "WEB_PROCESSES": "1", **extra, "WEB_HOST": "127.0.0.1", "WEB_PORT": str(port)}
    web = subprocess.Popen(
        [sys.executable, "scripts/web.py"],
        cwd=BASE_DIR,
        env=worker_env(data_dir, **settings),
        stdout=open(log_path, "ab"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise RuntimeError(f"the web server exited:\n{Path(log_path).read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return web, f"http://127.0.0.1:{port}"
        time.sleep(0.2)
    stop(web)
    raise RuntimeError(f"the web server did not open port {port}")


def web_processes(web: subprocess.Popen, *, count: int = 1, timeout: float = 30) -> list[int]:
    """The pids of the daphne processes of a server started by start_web, once `count` run."""
    found: list[int] = []

    def running() -> bool:
        out = subprocess.run(["pgrep", "-P", str(web.pid)], capture_output=True, text=True).stdout
        found[:] = [int(pid) for pid in out.split()]
        return len(found) == count

    wait_for(running, timeout=timeout, interval=0.1, message=f"{count} daphne process(es)")
    return list(found)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 5) -> None:
    """Stop a process started with start_new_session, and its children.

    SIGKILL goes to the whole group (the power going out); another signal only to the
    main process, as scripts/qcluster.sh does: a django-q2 cluster whose processes all
    get SIGTERM at once hangs instead of stopping.
    """
    if process.poll() is None:
        try:
            if sig == signal.SIGKILL:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
            process.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    # A cluster's workers may outlive their parent for a moment, holding database
    # connections; wait for the whole group, then kill what is left.
    deadline = time.monotonic() + wait
    while process.poll() is None or _group_alive(process.pid):  # poll() reaps the main process
        if time.monotonic() > deadline:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        time.sleep(0.05)
    process.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


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


def fill_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """Lay `folder` out as the Hugging Face Hub cache holds a downloaded repository; its commit."""
    import shutil

    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def run_pass(runner):
    """Run the next pass through the `gpu` cluster's own path (`JobRunner.run_queue`, its
    bookkeeping thread included), with a budget that ends the drain after one pass.

    Returns the pass's head job as it is now, or None when nothing was run. The
    bookkeeper writes on its own connection, so a test that runs the worker needs a
    transactional database (the `runner_for` fixture asks for one).
    """
    from generation.models import ImageJob

    ran = runner.run_queue(budget=0)
    return ImageJob.objects.get(pk=ran[0]) if ran else None


class QueryCounter:
    """Counts the SQL statements run on every connection, in every thread, while active.

    `by_thread` maps a thread's name to its count, so a test can see that the
    bookkeeping thread's writes were counted too.
    """

    def __init__(self):
        self.by_thread: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.by_thread.values())

    def __enter__(self):
        from django.db.backends.utils import CursorWrapper

        self._original = original = CursorWrapper._execute_with_wrappers
        counter = self

        def counting(cursor, sql, params, many, executor):
            with counter._lock:
                name = threading.current_thread().name
                counter.by_thread[name] = counter.by_thread.get(name, 0) + 1
            return original(cursor, sql, params, many, executor)

        CursorWrapper._execute_with_wrappers = counting
        return self

    def __exit__(self, *exc_info):
        from django.db.backends.utils import CursorWrapper

        CursorWrapper._execute_with_wrappers = self._original


def striped_picture(size=(64, 64)):
    """An RGB picture with structure (a stripe pattern per axis), so a changed pixel shows."""
    import numpy as np
    from PIL import Image

    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, :, 0] = (np.arange(width) * 4 % 256)[None, :]
    pixels[:, :, 2] = (np.arange(height) * 3 % 256)[:, None]
    return Image.fromarray(pixels, "RGB")


def image_file(image, fmt="PNG") -> bytes:
    """The image as the bytes of a file of that format."""
    import io

    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()
