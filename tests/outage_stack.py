"""The whole service on PostgreSQL and Redis of its own, for restarting them mid-run.

`OutageStack` starts a throwaway PostgreSQL and Redis (tests/servers.py), migrates,
and runs the production processes against them: the web server (scripts/web.py, with
its connection pool, as the Procfile runs it), a `gpu` cluster and the `maintenance`
cluster. The generator is the zero-cost one (bench/zero_cost.py) sleeping GPU_MS per
image, so a job is in flight long enough to be caught by an outage. A thread polls
`/healthz` throughout. Used by tests/test_outages.py and bench/outage.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests

from tests.helpers import stop, wait_for
from tests.servers import ThrowawayPostgres, ThrowawayRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
SUBMIT = """
from chat.services import conversation_create
from django.contrib.auth import get_user_model
from generation.services import job_submit
users = {name: get_user_model().objects.get_or_create(username=name)[0] for name in NAMES}
for n in range(COUNT):
    user = users[NAMES[n % len(NAMES)]]
    chat = conversation_create(owner=user, title="outage")
    job_submit(user=user, conversation=chat, prompt=f"{PREFIX} {n}", steps=8, width=64, height=64, model="demo")
"""


@dataclass
class HealthSample:
    at: float  # epoch seconds, when the request was sent
    seconds: float
    status: int  # 0: no answer at all
    body: dict = field(default_factory=dict)


class OutageStack:
    def __init__(self, *, gpu_ms: int = 600, beat_seconds: float = 1.0):
        self.root = Path(tempfile.mkdtemp(prefix="imagegen-outage-"))
        self.pg = ThrowawayPostgres()
        self.redis = ThrowawayRedis()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        keep = {
            key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_", "REDIS_", "SQLITE"))
        }
        self.env = {
            **keep,
            "SECRET_KEY": "outage-tests-only",
            "DATA_DIR": str(self.root),
            "IMAGEGEN_MODEL_CACHE": str(ROOT / "var" / "models"),
            "DATABASE_URL": self.pg.url,
            "REDIS_URL": self.redis.url,
            "IMAGEGEN_GENERATOR": "bench.zero_cost.ZeroCostGenerator",
            "IMAGEGEN_BENCH_GPU_MS": str(gpu_ms),
            "IMAGEGEN_BENCH_TIMINGS": str(self.root / "passes.txt"),
            "IMAGEGEN_WORKER_BEAT_SECONDS": str(beat_seconds),
            "IMAGEGEN_MAX_PENDING_PER_USER": "1000",
            "IMAGEGEN_SUBMISSIONS_PER_MINUTE": "1000",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.health: list[HealthSample] = []
        self._polling = threading.Event()
        self._poller: threading.Thread | None = None

    # --- the stack ----------------------------------------------------------------

    def start(self) -> OutageStack:
        self.pg.start()
        self.redis.start()
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=self.env, check=True)
        self._spawn("web", [sys.executable, "scripts/web.py"], WEB_PROCESSES="1", DATABASE_POOL_MAX_SIZE="20")
        self._spawn("gpu", [sys.executable, "manage.py", "qcluster"], Q_CLUSTER_NAME="gpu")
        self._spawn("maintenance", [sys.executable, "manage.py", "qcluster"], Q_CLUSTER_NAME="maintenance")
        try:
            wait_for(lambda: self._get("/healthz")[0] == 200, timeout=90, interval=0.5, message="a healthy stack")
        except AssertionError:
            logs = "\n".join(f"--- {name}.log\n{self.log(name)[-2000:]}" for name in self.processes)
            raise AssertionError(f"the stack did not become healthy: {self._get('/healthz')}\n{logs}") from None
        return self

    def _spawn(self, name: str, command: list[str], **extra: str) -> None:
        env = {**self.env, **extra, "WEB_HOST": "127.0.0.1", "WEB_PORT": str(self.port)}
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.processes[name] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def close(self) -> None:
        self.stop_polling()
        for process in self.processes.values():
            stop(process)
        self.redis.destroy()
        self.pg.destroy()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    # --- work and what became of it -------------------------------------------------

    def submit(self, count: int, *, prefix: str = "outage", users: tuple[str, ...] = ("ann", "ben", "cy")) -> None:
        script = f"NAMES = {list(users)!r}\nCOUNT = {count}\nPREFIX = {prefix!r}\n{SUBMIT}"
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", script],
            cwd=ROOT,
            env={**self.env, "LOG_LEVEL": "WARNING"},
            check=True,
            timeout=120,
            capture_output=True,
        )

    def query(self, sql: str, *params) -> list[tuple]:
        with psycopg.connect(self.pg.url.replace("postgres://", "postgresql://"), connect_timeout=2) as conn:
            return conn.execute(sql, params).fetchall()

    def jobs(self) -> list[dict]:
        rows = self.query(
            "SELECT j.id, j.status, j.attempts, j.image, j.error, j.started_at, j.finished_at, m.metadata"
            " FROM generation_imagejob j JOIN chat_message m ON m.id = j.message_id ORDER BY j.id"
        )
        keys = ("id", "status", "attempts", "image", "error", "started_at", "finished_at", "metadata")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def count(self, status: str) -> int:
        return self.query("SELECT count(*) FROM generation_imagejob WHERE status = %s", status)[0][0]

    def completed_since(self, epoch: float) -> int:
        """Jobs started at or after `epoch` and complete now."""
        sql = "SELECT count(*) FROM generation_imagejob WHERE status = 'complete' AND started_at >= to_timestamp(%s)"
        return self.query(sql, epoch)[0][0]

    def pngs(self) -> list[Path]:
        return sorted((self.root / "media" / "images" / "jobs").rglob("*.png"))

    def passes(self) -> int:
        """How many passes the generator ran (each made one image here: a CPU pass holds one)."""
        path = self.root / "passes.txt"
        return len(path.read_text().splitlines()) if path.exists() else 0

    # --- health ---------------------------------------------------------------------

    def _get(self, path: str) -> tuple[int, dict]:
        try:
            response = requests.get(self.url + path, timeout=10)
        except requests.RequestException:
            return 0, {}
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {}

    def start_polling(self, interval: float = 0.5) -> None:
        self._polling.clear()

        def poll() -> None:
            while not self._polling.is_set():
                sent = time.time()
                status, body = self._get("/healthz")
                self.health.append(HealthSample(at=sent, seconds=time.time() - sent, status=status, body=body))
                self._polling.wait(interval)

        self._poller = threading.Thread(target=poll, name="healthz-poller", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        self._polling.set()
        if self._poller is not None:
            self._poller.join(timeout=15)
            self._poller = None

    def health_between(self, start: float, end: float) -> list[HealthSample]:
        return [sample for sample in self.health if start <= sample.at <= end]

    # --- outages --------------------------------------------------------------------

    def wait_until(self, predicate, *, timeout: float, message: str) -> None:
        wait_for(predicate, timeout=timeout, interval=0.2, message=message)

    def outage(self, kind: str, seconds: float) -> tuple[float, float]:
        """Stop "postgres" (a fast shutdown: clients cut off) or "redis" (what it held,
        queued doorbells and channel messages, is lost) for `seconds`; (down at, back
        at), epoch seconds."""
        server = self.pg if kind == "postgres" else self.redis
        down = time.time()
        server.stop()
        time.sleep(max(0.0, seconds - (time.time() - down)))
        server.start()
        return down, time.time()


def run_outages(outages: list[tuple[str, float]], *, jobs: int = 18, gpu_ms: int = 600) -> dict:
    """Queue `jobs` jobs, then cut each dependency in turn ("postgres" or "redis", for
    so many seconds) while a job is in flight; wait until the queue is empty.

    Returns what an operator would look at: each job's outcome, the images made, the
    PNGs stored, for each outage the time from its end to the next job started and
    completed, and the health checks' answers while it lasted and after.
    """
    stack = OutageStack(gpu_ms=gpu_ms)
    try:
        stack.start()
        stack.start_polling()
        stack.submit(jobs)
        report = {"jobs": jobs, "outages": []}
        for kind, seconds in outages:
            done_before = stack.count("complete")
            stack.wait_until(
                lambda done=done_before: stack.count("complete") > done and stack.count("processing") > 0,
                timeout=120,
                message="a job completed and the next one in flight",
            )
            down, back = stack.outage(kind, seconds)
            stack.wait_until(
                lambda back=back: stack.completed_since(back) > 0,
                timeout=60,
                message=f"a job started and completed after the {kind} outage",
            )
            report["outages"].append({"kind": kind, "seconds": seconds, "down": down, "back": back})
        stack.wait_until(
            lambda: stack.count("queued") + stack.count("processing") == 0, timeout=240, message="an empty queue"
        )
        time.sleep(2)  # the health poller sees the settled stack
        stack.stop_polling()
        rows = stack.jobs()
        for outage in report["outages"]:
            back = outage["back"]
            started = [
                row["started_at"].timestamp()
                for row in rows
                if row["started_at"] and row["started_at"].timestamp() >= back
            ]
            finished = [
                row["finished_at"].timestamp()
                for row in rows
                if row["finished_at"] and row["finished_at"].timestamp() >= back
            ]
            during = stack.health_between(outage["down"] + 1.0, back - 0.5)
            after = [sample for sample in stack.health_between(back, back + 120) if sample.status == 200]
            outage.update(
                next_started_after_s=round(min(started) - back, 2) if started else None,
                next_completed_after_s=round(min(finished) - back, 2) if finished else None,
                health_during=[(sample.status, round(sample.seconds, 2)) for sample in during],
                health_200_after_s=round(after[0].at - back, 2) if after else None,
            )
        report.update(
            rows=rows,
            complete=sum(1 for row in rows if row["status"] == "complete"),
            failed=sum(1 for row in rows if row["status"] == "error"),
            retried=sum(1 for row in rows if row["attempts"] > 1),
            passes=stack.passes(),
            pngs=len(stack.pngs()),
            health_max_s=round(max(sample.seconds for sample in stack.health), 2),
            logs={name: stack.log(name) for name in stack.processes},
        )
        return report
    finally:
        stack.close()
