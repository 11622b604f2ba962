"""Many API requests waiting at once hold no thread and no database connection each.

(bench/api_wait.py does the same with 200 requests on PostgreSQL and reports numbers.)
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.db import connection

from chat.models import Conversation
from generation import services
from generation.models import ImageJob
from tests.conftest import make_user
from tests.helpers import LAYER_DATABASES, wait_for, web_processes

pytestmark = [
    pytest.mark.configured_layer,
    pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES),
    pytest.mark.timeout(300),
]

USERS, PER_USER = 2, 10


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def _web_connections() -> int | None:
    if connection.vendor != "postgresql":
        return None  # SQLite opens no server connections to count
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_requests_waiting_behind_a_busy_worker_share_a_few_threads_and_connections(api_stack, key_for):
    (server,) = web_processes(api_stack["web"])  # the one daphne process serving
    idle_threads = _threads(server)
    blocker = make_user("blocker")
    chat = Conversation.objects.create(owner=blocker, title="blocking")
    # The worker hangs on this job until it is cancelled: everything after it waits.
    hang = services.job_submit(
        user=blocker, conversation=chat, prompt="[hang] hold", width=64, height=64, steps=2
    ).jobs[0]
    wait_for(lambda: ImageJob.objects.filter(pk=hang.pk, status="processing").exists(), timeout=60, message="hang")
    baseline_connections = _web_connections()
    keys = [key_for(f"user{n}")[1] for n in range(USERS)]
    total = USERS * PER_USER

    def ask(n: int) -> tuple[int, int]:
        response = requests.post(
            f"{api_stack['url']}/v1/images/generations",
            json={"prompt": f"waiting {n}", "size": "64x64"},
            headers={"Authorization": f"Bearer {keys[n % USERS]}"},
            timeout=240,
        )
        return response.status_code, len(response.json().get("data", []))

    with ThreadPoolExecutor(total) as pool:
        answers = [pool.submit(ask, n) for n in range(total)]
        wait_for(lambda: ImageJob.objects.filter(status="queued").count() == total, timeout=60, message="all queued")
        waiting_threads = _threads(server)
        waiting_connections = _web_connections()
        # The waiting requests hold none of the web process's page threads.
        assert requests.get(f"{api_stack['url']}/login/", timeout=10).status_code == 200
        services.job_cancel(job=hang)
        results = [answer.result(timeout=240) for answer in answers]

    assert results == [(200, 1)] * total
    # Django's own per-request threads would be one per waiting request.
    assert waiting_threads - idle_threads <= 12, (idle_threads, waiting_threads)
    if waiting_connections is not None:
        # The gpu cluster's and this test's connections are in both counts.
        assert waiting_connections - baseline_connections <= 6, (baseline_connections, waiting_connections)
