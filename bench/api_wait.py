"""API wait: N OpenAI-API requests waiting at once for their images, on PostgreSQL.

Starts daphne against a fresh PostgreSQL database (channels-redis for the layer), makes
20 users with an API key each, and sends N `POST /v1/images/generations` requests at
once (64x64), from N client threads. The images come from the zero-cost generator
(bench/zero_cost.py) sleeping --gpu-ms per image, a busy device that leaves the CPU
free: on a shared 2-core machine the demo model's own CPU time would measure the
machine, not the wait (--demo uses it anyway). No worker runs at first, so
every request waits in the queue; once all N jobs are queued (and 5 s later) the `gpu` cluster starts
and works through them. Meanwhile it samples the web process's thread count and its
PostgreSQL connections (matched by client port). Checks that every request got its
image and reports the peaks.

    .venv/bin/python bench/api_wait.py [--requests 200]
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import summary_ms, write_result  # noqa: E402
from bench._django import bench_env, fresh_postgres, migrate, setup, start_cluster, start_web, stop  # noqa: E402

USERS = 20


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def cpu_seconds_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def tcp_ports_of(pid: int) -> set[int]:
    """The local TCP ports of a process's sockets (/proc, Linux)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--database", default="imagegen_bench_api")
    parser.add_argument("--pool", type=int, default=20, help="the web process's connection pool; 0 = none")
    parser.add_argument("--gpu-ms", type=float, default=50, help="the zero-cost generator's time per image")
    parser.add_argument("--demo", action="store_true", help="the demo model (CPU) instead of the zero-cost generator")
    args = parser.parse_args()

    import psycopg
    import requests

    database = fresh_postgres(args.postgres, args.database)
    generator = {} if args.demo else {"IMAGEGEN_GENERATOR": "bench.zero_cost.ZeroCostGenerator"}
    env = bench_env(
        DATABASE_URL=database,
        REDIS_URL=args.redis,
        LOG_LEVEL="WARNING",
        IMAGEGEN_BENCH_GPU_MS=str(args.gpu_ms),
        **generator,
    )
    migrate(env)
    setup(env)
    from django.conf import settings

    from generation.api.auth import api_key_create
    from generation.models import ImageJob
    from tests.conftest import make_user

    keys = [api_key_create(owner=make_user(f"user{n}"))[1] for n in range(USERS)]
    data_dir = Path(env["DATA_DIR"])
    web, base = start_web(data_dir / "web.log", DATABASE_POOL_MAX_SIZE=str(args.pool))
    from tests.helpers import web_processes

    (server,) = web_processes(web)  # the one daphne process serving
    gpu = None
    samples: list[tuple[float, int, int, int]] = []  # (t, threads, connections, in flight)
    in_flight = 0
    lock = threading.Lock()
    sampling = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        with psycopg.connect(database, autocommit=True) as db:
            while not sampling.is_set():
                ports = list(tcp_ports_of(server))
                row = db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND client_port = ANY(%s)",
                    [args.database, ports],
                ).fetchone()
                with lock:
                    waiting = in_flight
                samples.append((time.perf_counter() - started, threads_of(server), row[0], waiting))
                time.sleep(0.1)

    try:
        idle_threads = threads_of(server)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        barrier = threading.Barrier(args.requests)
        latencies: list[float] = []
        outcomes: list[tuple[int, int]] = []

        def ask(n: int) -> None:
            nonlocal in_flight
            headers = {"Authorization": f"Bearer {keys[n % USERS]}"}
            body = {"prompt": f"waiting {n}", "size": "64x64", "model": "demo"}
            barrier.wait()
            with lock:
                in_flight += 1
            begun = time.perf_counter()
            response = requests.post(f"{base}/v1/images/generations", json=body, headers=headers, timeout=None)
            elapsed = time.perf_counter() - begun
            with lock:
                in_flight -= 1
                latencies.append(elapsed)
                images = len(response.json().get("data", [])) if response.status_code == 200 else 0
                outcomes.append((response.status_code, images))

        clients = [threading.Thread(target=ask, args=(n,)) for n in range(args.requests)]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 120
        while ImageJob.objects.count() < args.requests and time.monotonic() < deadline:
            time.sleep(0.2)
        queued_after = round(time.perf_counter() - started, 2)
        cpu_before = cpu_seconds_of(server)
        time.sleep(5)  # everything waits: nothing runs yet
        hold_cpu = cpu_seconds_of(server) - cpu_before
        held = [s for s in samples if s[0] >= queued_after]
        gpu = start_cluster({**env, "IMAGEGEN_LOCK_DIR": str(data_dir / "locks")}, "gpu", data_dir / "gpu.log")
        for client in clients:
            client.join()
        wall = time.perf_counter() - started
    finally:
        sampling.set()
        if gpu is not None:
            stop(gpu)
        stop(web)

    result = {
        "command": "bench/api_wait.py " + " ".join(sys.argv[1:]),
        "database": "PostgreSQL",
        "channel_layer": "channels-redis",
        "server": "one daphne process",
        "connection_pool": args.pool,
        "api_db_threads": settings.IMAGEGEN_API_DB_THREADS,
        "generator": "demo model (CPU)" if args.demo else f"zero-cost, sleeping {args.gpu_ms:g} ms per image",
        "requests": args.requests,
        "answered_200_with_an_image": outcomes.count((200, 1)),
        "other_outcomes": sorted(set(outcomes) - {(200, 1)}),
        "jobs_complete": ImageJob.objects.filter(status="complete").count(),
        "all_queued_after_seconds": queued_after,
        "waiting_at_once_max": max(s[3] for s in samples),
        "web_threads_idle": idle_threads,
        "web_threads_while_all_wait_max": max((s[1] for s in held), default=None),
        "web_threads_max": max(s[1] for s in samples),
        "web_db_connections_while_all_wait_max": max((s[2] for s in held), default=None),
        "web_db_connections_max": max(s[2] for s in samples),
        "web_cpu_seconds_per_second_while_all_wait": round(hold_cpu / 5, 3),
        "wall_seconds": round(wall, 2),
        "latency": summary_ms(latencies),
    }
    for key, value in result.items():
        print(f"{key:40} {value}")
    print(f"written to {write_result('api_wait', result).relative_to(Path(__file__).resolve().parent.parent)}")


if __name__ == "__main__":
    main()
