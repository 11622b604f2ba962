"""Submit burst: N concurrent HTTP submissions to the running server on PostgreSQL.

Starts the web server (scripts/web.py) against a fresh PostgreSQL database (and Redis
for the channel layer), logs 20 users in, then fires N prompt submissions at once from
N threads. Checks that every job was persisted and that the queue positions are
unique, 1..N; reports p50 and p95 latency. No worker runs, so the jobs stay queued.
Runs once per number of web processes in --processes; each server takes --bursts
bursts, each on an empty queue. The first burst meets a server that has just started
(its database connections and templates are made on the way); the others show the
server as it runs.

    .venv/bin/python bench/submit_burst.py [--requests 200] [--processes 1,2] [--bursts 3]
"""

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import summary_ms, write_result  # noqa: E402
from bench._django import ROOT, bench_env, fresh_postgres, migrate, setup, start_web, stop  # noqa: E402

USERS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--pool", type=int, default=20, help="each web process's connection pool; 0 = none")
    parser.add_argument("--processes", default="1,2", help="web processes to compare, in one run (default 1,2)")
    parser.add_argument("--bursts", type=int, default=3, help="bursts per server, each on an empty queue")
    args = parser.parse_args()

    import requests

    database = fresh_postgres(args.postgres, "imagegen_bench")
    env = bench_env(DATABASE_URL=database, REDIS_URL=args.redis, LOG_LEVEL="WARNING")
    migrate(env)
    setup(env)
    from django.contrib.auth import get_user_model

    from chat.models import Message
    from chat.services import conversation_create
    from generation.models import ImageJob
    from generation.selectors import queue_positions

    users = [get_user_model().objects.create_user(f"user{n}", password="bench-password-1") for n in range(USERS)]
    chats = [conversation_create(owner=user, title="burst").pk for user in users]

    def empty_queue() -> None:
        ImageJob.objects.all().delete()
        Message.objects.all().delete()

    def check(burst: dict) -> dict:
        positions = sorted(queue_positions().values())
        return {
            **burst,
            "jobs_persisted": ImageJob.objects.count(),
            "positions_unique_1_to_n": positions == list(range(1, args.requests + 1)),
        }

    runs = {}
    for processes in [int(value) for value in args.processes.split(",")]:
        bursts = _bursts(args, env, processes, chats, requests, empty_queue, check)
        p95s = [burst["latency"]["p95_ms"] for burst in bursts]
        runs[f"{processes}_process"] = {
            "first_burst_p95_ms": p95s[0],
            "later_bursts_p95_ms": p95s[1:],
            "bursts": bursts,
        }

    result = {
        "command": "bench/submit_burst.py " + " ".join(sys.argv[1:]),
        "database": "PostgreSQL",
        "channel_layer": "channels-redis",
        "server": "scripts/web.py: daphne processes sharing one port",
        "connection_pool": args.pool,
        "requests": args.requests,
        **runs,
    }
    for key, value in result.items():
        print(f"{key:24} {value}")
    print(f"written to {write_result('submit_burst', result).relative_to(ROOT)}")


def _bursts(args, env, processes, chats, requests, empty_queue, check) -> list[dict]:
    log = Path(env["DATA_DIR"]) / f"web-{processes}.log"
    web, base = start_web(log, DATABASE_POOL_MAX_SIZE=str(args.pool), WEB_PROCESSES=str(processes))
    try:
        cookies = []
        for n in range(USERS):
            session = requests.Session()
            session.get(f"{base}/login/")
            token = session.cookies["csrftoken"]
            session.post(
                f"{base}/login/",
                data={"username": f"user{n}", "password": "bench-password-1", "csrfmiddlewaretoken": token},
            )
            cookies.append(session.cookies.get_dict())
        # Every process has served a request before the burst (their first costs more).
        for _ in range(4 * processes):
            requests.get(f"{base}/login/", timeout=30)
        bursts = []
        for _ in range(args.bursts):
            empty_queue()
            bursts.append(check(_burst(args, base, chats, cookies, requests)))
    finally:
        stop(web)
    return bursts


def _burst(args, base, chats, cookies, requests) -> dict:
    """One burst of simultaneous submissions; what the clients saw."""
    barrier = threading.Barrier(args.requests)
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        user = n % USERS
        jar = cookies[user]
        url = f"{base}/conversations/{chats[user]}/submit/"
        data = {"prompt": f"burst {n}", "csrfmiddlewaretoken": jar["csrftoken"], "steps": "20"}
        barrier.wait()
        started = time.perf_counter()
        response = requests.post(url, data=data, cookies=jar, headers={"X-Requested-With": "fetch"}, timeout=120)
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            statuses.append(response.status_code)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(args.requests)]
    wall = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall
    return {
        "created_201": statuses.count(201),
        "other_statuses": sorted(set(statuses) - {201}),
        "wall_seconds": round(wall, 2),
        "latency": summary_ms(latencies),
    }


if __name__ == "__main__":
    main()
