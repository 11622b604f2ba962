"""Scale-out: images per second with 1, 2 and 3 `gpu` clusters sharing PostgreSQL + Redis.

For each worker count, on a fresh database: that many `gpu` clusters start, each as if
on a machine of its own (its own IMAGEGEN_LOCK_DIR, the same IMAGEGEN_DEVICE), with the
`maintenance` cluster beside them as in production. Once every worker has registered,
5 users queue JOBS jobs (64x64, 2 steps) in one transaction, so all of them appear at
once, and the clusters drain the queue. The generator is the zero-cost one
(bench/zero_cost.py) sleeping GPU_MS per image: a device that is busy while the CPU is
free, so what is measured is how well the workers share one queue, not this machine's
cores. Throughput is JOBS over the time from the commit to the last completion.

    .venv/bin/python bench/scale_out.py [--workers 1,2,3] [--jobs 60] [--gpu-ms 200]
        [--postgres postgres://postgres@127.0.0.1:5432] [--redis redis://127.0.0.1:6379/9]
"""

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import child_main, in_child, write_result  # noqa: E402
from bench._django import ROOT, bench_env, fresh_postgres, migrate, start_cluster, stop  # noqa: E402

USERS = 5
PARAMS = {"steps": 2, "width": 64, "height": 64, "model": "demo"}


def run_one(workers: int, jobs: int, gpu_ms: float, postgres: str, redis: str) -> dict:
    """One worker count, in a child process so each gets fresh settings."""
    return in_child(__file__, f"{workers} workers", workers, jobs, gpu_ms, postgres, redis)


def child(workers: int, jobs: int, gpu_ms: float, postgres: str, redis: str) -> dict:
    import redis as redis_client

    redis_client.Redis.from_url(redis).flushdb()
    env = bench_env(
        LOG_LEVEL="WARNING",
        IMAGEGEN_GENERATOR="bench.zero_cost.ZeroCostGenerator",
        IMAGEGEN_BENCH_GPU_MS=str(gpu_ms),
        IMAGEGEN_DEVICE="cuda:0",
        DATABASE_URL=fresh_postgres(postgres, "imagegen_bench_scale"),
        REDIS_URL=redis,
    )
    migrate(env)
    from bench._django import setup

    setup(env)
    from django.db import transaction
    from django.utils import timezone

    from bench._django import user_with_conversation
    from generation.models import ImageJob
    from generation.selectors import workers_live
    from generation.services import job_submit

    chats = [user_with_conversation(f"user{n}", "scale")[1] for n in range(USERS)]
    data = Path(env["DATA_DIR"])
    clusters = [start_cluster(env, "maintenance", data / "maintenance.log")]
    for n in range(workers):
        machine = {**env, "IMAGEGEN_LOCK_DIR": str(data / f"machine-{n}" / "locks")}
        clusters.append(start_cluster(machine, "gpu", data / f"gpu-{n}.log"))
    try:
        deadline = time.monotonic() + 120
        while workers_live().count() < workers:
            if time.monotonic() > deadline:
                raise SystemExit((data / "gpu-0.log").read_text()[-3000:])
            time.sleep(0.2)
        with transaction.atomic():
            for n in range(jobs):
                chat = chats[n % USERS]
                job_submit(user=chat.owner, conversation=chat, prompt=f"job {n}", **PARAMS).jobs[0]
        committed = timezone.now()
        deadline = time.monotonic() + 600
        while ImageJob.objects.filter(status="complete").count() < jobs:
            if time.monotonic() > deadline:
                raise SystemExit((data / "gpu-0.log").read_text()[-3000:])
            time.sleep(0.1)
    finally:
        for cluster in clusters:
            stop(cluster)
    done = list(ImageJob.objects.values_list("worker", "attempts", "finished_at"))
    seconds = (max(finished for _, _, finished in done) - committed).total_seconds()
    per_worker = Counter(worker for worker, _, _ in done)
    return {
        "workers": workers,
        "jobs": jobs,
        "seconds": round(seconds, 2),
        "images_per_second": round(jobs / seconds, 2),
        "jobs_per_worker": sorted(per_worker.values(), reverse=True),
        "ran_more_than_once": sum(1 for _, attempts, _ in done if attempts > 1),
    }


def main() -> None:
    if child_main(child, int, int, float, str, str):
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--gpu-ms", type=float, default=200, help="per-image sleep of the generator")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args()

    rows = []
    for workers in map(int, args.workers.split(",")):
        row = run_one(workers, args.jobs, args.gpu_ms, args.postgres, args.redis)
        rows.append(row)
        row["ratio_to_first"] = round(row["images_per_second"] / rows[0]["images_per_second"], 2)
        print("  ".join(f"{key}={value}" for key, value in row.items()), flush=True)
    ideal = 1000 / args.gpu_ms
    result = {
        "command": "bench/scale_out.py " + " ".join(sys.argv[1:]),
        "generator": f"bench.zero_cost.ZeroCostGenerator sleeping {args.gpu_ms:g} ms per image",
        "params": PARAMS,
        "users": USERS,
        "one_device_ceiling_images_per_second": round(ideal, 2),
        "rows": rows,
    }
    print(f"written to {write_result('scale_out', result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
