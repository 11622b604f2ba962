"""Submit burst: N concurrent HTTP submissions to the running server on PostgreSQL.

Starts daphne against a fresh PostgreSQL database (and Redis for the channel layer),
logs 20 users in, then fires N prompt submissions at once from N threads. Checks that
every job was persisted and that the queue positions are unique, 1..N; reports p50 and
p95 latency. No worker runs, so the jobs stay queued.

    .venv/bin/python bench/submit_burst.py [--requests 200]
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
    parser.add_argument("--pool", type=int, default=20, help="the web process's connection pool; 0 = none")
    args = parser.parse_args()

    import requests

    database = fresh_postgres(args.postgres, "imagegen_bench")
    env = bench_env(DATABASE_URL=database, REDIS_URL=args.redis, LOG_LEVEL="WARNING")
    migrate(env)
    setup(env)
    from django.contrib.auth import get_user_model

    from chat.services import conversation_create
    from generation.models import ImageJob
    from generation.selectors import queue_positions

    users = [get_user_model().objects.create_user(f"user{n}", password="bench-password-1") for n in range(USERS)]
    chats = [conversation_create(owner=user, title="burst").pk for user in users]

    web, base = start_web(Path(env["DATA_DIR"]) / "web.log", DATABASE_POOL_MAX_SIZE=str(args.pool))
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
    finally:
        stop(web)

    positions = sorted(queue_positions().values())
    result = {
        "command": "bench/submit_burst.py " + " ".join(sys.argv[1:]),
        "database": "PostgreSQL",
        "channel_layer": "channels-redis",
        "server": "one daphne process",
        "connection_pool": args.pool,
        "requests": args.requests,
        "created_201": statuses.count(201),
        "other_statuses": sorted(set(statuses) - {201}),
        "jobs_persisted": ImageJob.objects.count(),
        "positions_unique_1_to_n": positions == list(range(1, args.requests + 1)),
        "wall_seconds": round(wall, 2),
        "latency": summary_ms(latencies),
    }
    for key, value in result.items():
        print(f"{key:24} {value}")
    print(f"written to {write_result('submit_burst', result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
