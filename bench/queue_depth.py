"""Queue depth: the GPU worker's own cost per job with 20, 200 and 2000 jobs waiting.

For each depth, on a fresh database: 20 users queue DEPTH + MEASURED jobs (512x512,
25 steps), then a real `gpu` cluster and the `maintenance` cluster (which sends the
queue broadcasts, as in production) start, and the worker runs the first MEASURED
jobs with the zero-cost generator (bench/zero_cost.py): every step callback, progress
write, event, PNG encoding and completion happens, but making the image costs
nothing, so what is measured is the worker alone. From the generator's own
timestamps:

- per-job time: from one job's generation starting to the next one's (claim,
  25 step callbacks with their progress writes and events, hand-off of the image);
- gap: from one job's generation ending to the next one's starting (what a GPU
  would wait between two images);
- finish: from a job's generation ending to its completion in the database (PNG
  encoding, storage, completion), done on the worker's finisher thread while the
  next image is made.

It also times in-process `job_submit` for the MEASURED jobs queued on top of DEPTH.

    .venv/bin/python bench/queue_depth.py [--depths 20,200,2000] [--measured 40] [--gpu-ms 0]
        [--backends embedded,postgres]
"""

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import child_main, in_child, percentile, write_result  # noqa: E402
from bench._django import ROOT, bench_env, fresh_postgres, migrate, start_cluster, stop  # noqa: E402

USERS = 20
PARAMS = {"steps": 25, "width": 512, "height": 512, "model": "demo"}


def run_one(backend: str, depth: int, measured: int, gpu_ms: float, postgres: str, redis: str) -> dict:
    """One depth on one backend, in a child process so each gets fresh settings."""
    return in_child(__file__, f"{backend} depth {depth}", backend, depth, measured, gpu_ms, postgres, redis)


def child(backend: str, depth: int, measured: int, gpu_ms: float, postgres: str, redis: str) -> dict:
    overrides = {"LOG_LEVEL": "WARNING", "IMAGEGEN_GENERATOR": "bench.zero_cost.ZeroCostGenerator"}
    if backend == "postgres":
        overrides["DATABASE_URL"] = fresh_postgres(postgres, "imagegen_bench_depth")
        overrides["REDIS_URL"] = redis
        import redis as redis_client

        redis_client.Redis.from_url(redis).flushdb()
    env = bench_env(**overrides)
    timings = Path(env["DATA_DIR"]) / "timings.txt"
    env["IMAGEGEN_BENCH_TIMINGS"] = str(timings)
    env["IMAGEGEN_BENCH_GPU_MS"] = str(gpu_ms)
    migrate(env)
    from bench._django import setup

    setup(env)
    from django.contrib.auth import get_user_model

    from chat.services import conversation_create
    from generation.models import ImageJob
    from generation.services import job_submit

    users = [get_user_model().objects.create_user(f"user{n}", password="bench-password-1") for n in range(USERS)]
    chats = [conversation_create(owner=user, title="depth") for user in users]
    for n in range(depth):
        job_submit(user=users[n % USERS], conversation=chats[n % USERS], prompt=f"waiting {n}", **PARAMS).jobs[0]
    started = time.perf_counter()
    head = []
    for n in range(measured):
        job = job_submit(user=users[n % USERS], conversation=chats[n % USERS], prompt=f"measured {n}", **PARAMS).jobs[0]
        head.append(job.pk)
    submit_seconds = time.perf_counter() - started
    # The measured jobs go first: they take the queue's head.
    from generation.models import QueueTicket

    first = ImageJob.objects.order_by("sequence").first().sequence
    for offset, pk in enumerate(head):
        ImageJob.objects.filter(pk=pk).update(sequence=first - len(head) + offset)
    del QueueTicket

    data = Path(env["DATA_DIR"])
    maintenance = start_cluster(env, "maintenance", data / "maintenance.log")
    gpu = start_cluster(env, "gpu", data / "gpu.log")
    try:
        deadline = time.monotonic() + 600
        while ImageJob.objects.filter(pk__in=head, status="complete").count() < len(head):
            if time.monotonic() > deadline:
                raise SystemExit((data / "gpu.log").read_text()[-3000:])
            time.sleep(0.2)
    finally:
        stop(gpu)
        stop(maintenance)
    calls = [tuple(map(float, line.split())) for line in timings.read_text().split("\n") if line]
    calls = calls[1 : len(head)]  # the measured jobs; the first includes the worker's start-up
    per_job = [(b[0] - a[0]) * 1000 for a, b in zip(calls, calls[1:], strict=False)]
    gaps = [(b[0] - a[1]) * 1000 for a, b in zip(calls, calls[1:], strict=False)]
    jobs = list(ImageJob.objects.filter(pk__in=head).order_by("started_at"))
    ends = [datetime.fromtimestamp(end, tz=UTC) for _, end in calls]
    finish = [(job.finished_at - end).total_seconds() * 1000 for job, end in zip(jobs[1:], ends, strict=False)]
    return {
        "backend": backend,
        "depth": depth,
        "measured_jobs": len(per_job),
        "per_job_ms_p50": round(statistics.median(per_job), 2),
        "per_job_ms_p95": round(percentile(per_job, 95), 2),
        "gap_ms_p50": round(statistics.median(gaps), 2),
        "gap_ms_p95": round(percentile(gaps, 95), 2),
        "finish_ms_p50": round(statistics.median(finish), 2),
        "submits_per_second": round(measured / submit_seconds, 1),
    }


def main() -> None:
    if child_main(child, str, int, int, float, str, str):
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="20,200,2000")
    parser.add_argument("--measured", type=int, default=40)
    parser.add_argument("--gpu-ms", type=float, default=0, help="per-image sleep of the generator (0: none)")
    parser.add_argument("--backends", default="embedded,postgres")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()

    rows = []
    for backend in args.backends.split(","):
        for depth in map(int, args.depths.split(",")):
            row = run_one(backend, depth, args.measured, args.gpu_ms, args.postgres, args.redis)
            print("  ".join(f"{key}={value}" for key, value in row.items()), flush=True)
            rows.append(row)
    by_backend = {}
    for row in rows:
        by_backend.setdefault(row["backend"], []).append(row)
    ratios = {  # the deepest queue's per-job p50 over the shallowest one's
        backend: round(
            max(group, key=lambda r: r["depth"])["per_job_ms_p50"]
            / min(group, key=lambda r: r["depth"])["per_job_ms_p50"],
            3,
        )
        for backend, group in by_backend.items()
    }
    result = {
        "command": "bench/queue_depth.py " + " ".join(sys.argv[1:]),
        "generator": "bench.zero_cost.ZeroCostGenerator" + (f" sleeping {args.gpu_ms:g} ms" if args.gpu_ms else ""),
        "params": PARAMS,
        "rows": rows,
        "per_job_p50_deepest_over_shallowest": ratios,
    }
    name = "queue_depth" + (f"_gpu{args.gpu_ms:g}ms" if args.gpu_ms else "")
    print(f"written to {write_result(name, result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
