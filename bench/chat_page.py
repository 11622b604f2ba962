"""Chat page: server time and query count for a conversation of 100 and of 1000 messages.

Builds conversations with jobs in every state through job_submit, then renders the
page with Django's test client (server time only, no network), several times each.

    .venv/bin/python bench/chat_page.py [--repeat 7]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_result  # noqa: E402
from bench._django import ROOT, bench_env, migrate, setup  # noqa: E402

STATES = ["queued", "processing", "complete", "error", "cancelled"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    env = bench_env()
    migrate(env)
    setup(env)
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from chat.services import conversation_create
    from generation.models import ImageJob
    from generation.services import job_submit

    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    rows = {}
    for messages in (100, 1000):
        conversation = conversation_create(owner=user, title=f"{messages} messages")
        for n in range(messages // 2):
            job = job_submit(
                user=user, conversation=conversation, prompt=f"prompt {n}", steps=4, width=64, height=64
            ).jobs[0]
            ImageJob.objects.filter(pk=job.pk).update(status=STATES[n % len(STATES)])
        url = reverse("chat:conversation", args=[conversation.pk])
        client.get(url)  # warm caches
        times, counts = [], []
        for _ in range(args.repeat):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = client.get(url)
                times.append(time.perf_counter() - started)
            assert response.status_code == 200
            counts.append(len(queries))
        rows[f"{messages} messages"] = {
            "server_ms_median": round(statistics.median(times) * 1000, 1),
            "server_ms_min": round(min(times) * 1000, 1),
            "queries": counts[0],
            "html_kb": round(len(response.content) / 1024, 1),
        }
    print(f"{'conversation':16} {'median ms':>10} {'min ms':>8} {'queries':>8} {'HTML KB':>8}")
    for name, row in rows.items():
        print(
            f"{name:16} {row['server_ms_median']:>10} {row['server_ms_min']:>8} {row['queries']:>8} {row['html_kb']:>8}"
        )
    result = {"command": "bench/chat_page.py " + " ".join(sys.argv[1:]), "database": "SQLite", **rows}
    result["queries_grow_with_messages"] = rows["1000 messages"]["queries"] != rows["100 messages"]["queries"]
    print(f"written to {write_result('chat_page', result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
