"""Worker memory: the resident set size of a worker process across many demo jobs.

Runs jobs through the worker's own path (JobRunner: device lock, claim, demo pipeline,
progress, PNG, completion) in this process and samples RSS every few jobs. Reports the
first and last samples and the least-squares slope over the second half.

    .venv/bin/python bench/worker_memory.py [--jobs 500] [--size 64] [--steps 4]
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_result  # noqa: E402
from bench._django import ROOT, bench_env, migrate, setup, user_with_conversation  # noqa: E402


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points) or 1.0
    return num / den


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--every", type=int, default=25)
    args = parser.parse_args()
    env = bench_env()
    migrate(env)
    setup(env)
    from generation.models import ImageJob
    from generation.services import job_submit
    from generation.worker import JobRunner

    user, conversation = user_with_conversation(title="memory")
    runner = JobRunner()
    samples: list[tuple[int, float]] = []
    started = time.perf_counter()
    for n in range(1, args.jobs + 1):
        # Prompts and seeds vary, as they do in real use.
        job_submit(
            user=user,
            conversation=conversation,
            prompt=f"job {n} " * (n % 7 + 1),
            seed=n,
            steps=args.steps,
            width=args.size,
            height=args.size,
        ).jobs[0]
        runner.run_queue(budget=0)
        if n == 1 or n % args.every == 0:
            samples.append((n, rss_mb()))
    elapsed = time.perf_counter() - started
    assert ImageJob.objects.filter(status="complete").count() == args.jobs
    second_half = [point for point in samples if point[0] > args.jobs / 2]
    result = {
        "command": "bench/worker_memory.py " + " ".join(sys.argv[1:]),
        "jobs": args.jobs,
        "params": {"size": args.size, "steps": args.steps},
        "seconds": round(elapsed, 1),
        "rss_mb_after_first_job": round(samples[0][1], 1),
        "rss_mb_at_half": round(second_half[0][1], 1),
        "rss_mb_at_end": round(samples[-1][1], 1),
        "slope_mb_per_100_jobs_second_half": round(slope(second_half) * 100, 3),
        "samples": [(n, round(mb, 1)) for n, mb in samples],
    }
    for key, value in result.items():
        if key != "samples":
            print(f"{key:36} {value}")
    print(f"written to {write_result('worker_memory', result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
