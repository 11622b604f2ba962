"""Queue broadcast: the cost of telling every queued job its position, and of one event.

On PostgreSQL + Redis, queues N jobs (20 users), then times `queue_broadcast_run()`, the
maintenance cluster's coalesced broadcast (fresh positions and ETAs for all N jobs, the
metadata copies in one statement, one event per user), after the head of the queue
left it each time, so every position changes. In the same run, one event sent as the
product sends it (`events._send_many`) against a bare `async_to_sync(layer.group_send)`
per event, which builds a new loop (and a new Redis connection pool) each time.

    .venv/bin/python bench/broadcast.py [--jobs 200] [--repeat 5]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_result  # noqa: E402
from bench._django import ROOT, bench_env, fresh_postgres, migrate, setup, user_with_conversation  # noqa: E402

USERS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sends", type=int, default=300)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    database = fresh_postgres(args.postgres, "imagegen_bench_broadcast")
    env = bench_env(DATABASE_URL=database, REDIS_URL=args.redis, LOG_LEVEL="WARNING")
    migrate(env)
    setup(env)
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from generation import events
    from generation.broadcasts import queue_broadcast_run
    from generation.models import ImageJob
    from generation.services import job_submit

    chats = [user_with_conversation(f"user{n}", "broadcast") for n in range(USERS)]
    for n in range(args.jobs):
        user, conversation = chats[n % USERS]
        job_submit(user=user, conversation=conversation, prompt=f"job {n}", steps=4, width=64, height=64).jobs[0]

    broadcast = []
    for _ in range(args.repeat):
        head = ImageJob.objects.filter(status="queued").order_by("sequence").values_list("pk", flat=True)[0]
        ImageJob.objects.filter(pk=head).update(status="cancelled")
        started = time.perf_counter()
        queue_broadcast_run(sleep=lambda seconds: None)  # the work, not the pause between broadcasts
        broadcast.append(time.perf_counter() - started)

    layer = get_channel_layer()
    event = events.build_event("job.cancelled", job_id=1, status="cancelled")
    message = {"type": "event.forward", "event": event}
    started = time.perf_counter()
    for _ in range(args.sends):
        events._send_many([("user.0", event)])
    product = (time.perf_counter() - started) / args.sends
    started = time.perf_counter()
    for _ in range(args.sends):
        async_to_sync(layer.group_send)("user.0", message)
    bare = (time.perf_counter() - started) / args.sends

    result = {
        "command": "bench/broadcast.py " + " ".join(sys.argv[1:]),
        "database": "PostgreSQL",
        "channel_layer": "channels-redis",
        "queued_jobs": args.jobs,
        "broadcast_ms_median": round(statistics.median(broadcast) * 1000, 1),
        "broadcast_ms_min": round(min(broadcast) * 1000, 1),
        "one_event_ms_as_sent": round(product * 1000, 3),
        "one_event_ms_async_to_sync_each": round(bare * 1000, 3),
        "speed_up": round(bare / product, 1),
    }
    for key, value in result.items():
        print(f"{key:34} {value}")
    print(f"written to {write_result('broadcast', result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
