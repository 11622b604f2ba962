"""Soak: page, snapshot, ETA and broadcast costs as finished jobs pile up, 0 to 100k.

Fills the history with finished jobs (bulk inserts: jobs, their messages and
conversations, from several users, timed like real ones), and at each level measures,
with the same 50 queued jobs from 5 users waiting and a viewer with a 40-message
conversation:
- page: the viewer's conversation page (server time through Django's test client);
- snapshot: what the WebSocket sends on connect (version, active jobs, service);
- ETA: the queue's positions and ETAs (`queue_eta`, which reads the ETA's history);
- broadcast: one coalesced queue broadcast (`queue_broadcast_run`).
Each is the median of --repeat runs, with its query count. After each fill the
database is analysed, as autovacuum would.

    .venv/bin/python bench/soak.py [--levels 0,1000,10000,100000] [--repeat 7]
    .venv/bin/python bench/soak.py --postgres postgres://postgres@127.0.0.1:5432
"""

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_result  # noqa: E402
from bench._django import ROOT, bench_env, fresh_postgres, migrate, setup  # noqa: E402

BATCH = 5000
PER_CONVERSATION = 200


def fill_history(users, count: int, *, start: int) -> None:
    """`count` finished jobs (complete, error, cancelled), each with its two messages."""
    from django.utils import timezone

    from chat.models import Conversation, Message
    from generation.models import ImageJob

    now = timezone.now()
    done = 0
    while done < count:
        size = min(BATCH, count - done)
        conversations = Conversation.objects.bulk_create(
            [
                Conversation(owner=users[i % len(users)], title=f"history {start + done + i}")
                for i in range(0, size, PER_CONVERSATION)
            ]
        )
        messages = []
        for i in range(size):
            conversation = conversations[i // PER_CONVERSATION]
            messages.append(Message(conversation=conversation, role="user", content=f"prompt {i}"))
            messages.append(
                Message(conversation=conversation, role="assistant", content="Your image is ready.", metadata={})
            )
        messages = Message.objects.bulk_create(messages)
        jobs = []
        for i in range(size):
            n = start + done + i
            finished = now - timedelta(seconds=(count - done - i) * 3)
            status = ("complete", "complete", "complete", "error", "cancelled")[n % 5]
            jobs.append(
                ImageJob(
                    owner=users[i % len(users)],
                    conversation=conversations[i // PER_CONVERSATION],
                    message=messages[2 * i + 1],
                    prompt=f"prompt {n}",
                    model="demo",
                    width=(512, 768)[n % 2],
                    height=512,
                    steps=20,
                    guidance=7.0,
                    seed=n,
                    scheduler="euler",
                    status=status,
                    sequence=-(n + 1),  # finished long ago: before every queued job
                    attempts=1,
                    started_at=finished - timedelta(seconds=2 + n % 3),
                    heartbeat_at=finished,
                    finished_at=finished,
                )
            )
        ImageJob.objects.bulk_create(jobs)
        done += size


def analyse() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def timed(fn, repeat: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    fn()  # warm
    times, queries = [], 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        queries = len(captured)
    return {"ms": round(statistics.median(times) * 1000, 2), "queries": queries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="0,1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--postgres", help="a PostgreSQL server URL; the database imagegen_soak is made afresh")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    overrides = {"IMAGEGEN_BROADCAST_INTERVAL_SECONDS": "0", "REDIS_URL": None}
    if args.postgres:
        overrides["DATABASE_URL"] = fresh_postgres(args.postgres, "imagegen_soak")
    env = bench_env(**overrides)
    migrate(env)
    setup(env)
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from chat.services import conversation_create
    from generation import broadcasts, selectors
    from generation.models import ImageJob
    from generation.services import job_submit

    users = [get_user_model().objects.create_user(f"user{n}", password="bench-password-1") for n in range(5)]
    viewer = users[0]
    page = conversation_create(owner=viewer, title="the viewer's conversation")
    for n in range(20):
        job = job_submit(user=viewer, conversation=page, prompt=f"mine {n}", steps=20, width=512, height=512).jobs[0]
        if n < 10:
            ImageJob.objects.filter(pk=job.pk).update(status="complete")
    for user in users:
        chat = page if user == viewer else conversation_create(owner=user, title="waiting")
        for n in range(10 if user != viewer else 0):
            job_submit(user=user, conversation=chat, prompt=f"waiting {n}", steps=20, width=512, height=512).jobs[0]
    waiting = ImageJob.objects.filter(status="queued").count()
    client = Client(HTTP_HOST="localhost")
    client.force_login(viewer)
    url = reverse("chat:conversation", args=[page.pk])

    def snapshot():
        selectors.queue_version()
        selectors.user_active_jobs(user=viewer)
        selectors.service_status()

    checks = {
        "page": lambda: client.get(url),
        "snapshot": snapshot,
        "eta": selectors.queue_eta,
        "broadcast": broadcasts.queue_broadcast_run,
    }
    rows = {}
    filled = 0
    for level in levels:
        fill_history(users, level - filled, start=filled)
        filled = level
        analyse()
        rows[str(level)] = {name: timed(check, args.repeat) for name, check in checks.items()}
        row = rows[str(level)]
        print(
            f"{level:>7} finished: "
            + ", ".join(f"{name} {row[name]['ms']} ms / {row[name]['queries']} q" for name in checks),
            flush=True,
        )
    first, last = rows[str(levels[0])], rows[str(levels[-1])]
    ratios = {name: round(last[name]["ms"] / max(first[name]["ms"], 0.01), 2) for name in checks}
    print("deepest over emptiest: " + ", ".join(f"{name} {ratio}x" for name, ratio in ratios.items()))
    result = {
        "command": "bench/soak.py " + " ".join(sys.argv[1:]),
        "database": connection.vendor,
        "queued_jobs": waiting,
        "levels": rows,
        "deepest_over_emptiest": ratios,
        "queries_constant": all(first[name]["queries"] == last[name]["queries"] for name in checks),
    }
    name = "soak_postgres" if args.postgres else "soak"
    print(f"written to {write_result(name, result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
