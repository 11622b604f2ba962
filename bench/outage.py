"""Outages: what a PostgreSQL restart, a Redis restart and a 30 s PostgreSQL outage cost.

Each scenario runs the production processes (web with its pool, `gpu` and
`maintenance` clusters) on a PostgreSQL and a Redis of their own
(tests/outage_stack.py), queues JOBS jobs from 3 users (the zero-cost generator
sleeping GPU_MS per image), and stops the server while a job is in flight. Printed
per scenario: jobs lost (not complete), failed and run twice; the seconds from the
server's return to the next job started and completed; `/healthz` (polled every
0.5 s): its slowest answer, its answers while the server was down, and the seconds
from the return to its first 200. The Outage lines of the logs are counted too.

    .venv/bin/python bench/outage.py [--jobs 18] [--gpu-ms 600] [--scenarios postgres:5,redis:5,postgres:30]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_result  # noqa: E402
from bench._django import ROOT, bench_env, setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=18)
    parser.add_argument("--gpu-ms", type=int, default=600, help="per-image sleep of the generator")
    parser.add_argument("--scenarios", default="postgres:5,redis:5,postgres:30", help="kind:seconds, comma-separated")
    args = parser.parse_args()
    setup(bench_env())  # tests/outage_stack.py reads Django's settings for its helpers
    from tests.outage_stack import run_outages

    rows = []
    for scenario in args.scenarios.split(","):
        kind, _, seconds = scenario.partition(":")
        report = run_outages([(kind, float(seconds))], jobs=args.jobs, gpu_ms=args.gpu_ms)
        (outage,) = report["outages"]
        statuses = sorted({status for status, _ in outage["health_during"]})
        row = {
            "scenario": f"{kind} down {float(seconds):g} s",
            "jobs": report["jobs"],
            "lost": report["jobs"] - report["complete"],
            "failed": report["failed"],
            "run_twice": report["passes"] - report["jobs"],
            "pngs": report["pngs"],
            "next_started_after_s": outage["next_started_after_s"],
            "next_completed_after_s": outage["next_completed_after_s"],
            "healthz_during": statuses,
            "healthz_slowest_s": report["health_max_s"],
            "healthz_200_after_s": outage["health_200_after_s"],
            "outage_log_lines": {
                name: sum(1 for line in log.splitlines() if "Outage" in line) for name, log in report["logs"].items()
            },
            "tracebacks": {name: log.count("Traceback") for name, log in report["logs"].items()},
        }
        rows.append(row)
        print("  ".join(f"{key}={value}" for key, value in row.items()), flush=True)
    result = {
        "command": "bench/outage.py " + " ".join(sys.argv[1:]),
        "generator": f"bench.zero_cost.ZeroCostGenerator sleeping {args.gpu_ms} ms per image",
        "rows": rows,
    }
    print(f"written to {write_result('outage', result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
