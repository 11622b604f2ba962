"""Worker overhead: a backlog of N jobs through the real worker path against the raw
pipeline called N times in a loop, same model and parameters, in one run.

The system run submits N jobs at once to a real `gpu` cluster (warmed up by one job
first) and measures from the first job's start to the last one's finish; the raw run
calls the same ImageGenerator.generate N times. Reports the throughput ratio (system / raw)
and the idle gaps between consecutive jobs.

On a CPU it runs the `demo` model (SD 1.x). `--model sdxl|sd3|flux` runs the tiny
random-weight pipeline of that family instead (built once, offline: SDXL's two text
encoders and size conditioning, SD3's joint transformer and 16-channel latents, Flux's
packed latents and T5), through the same worker; `--model sd15` is `demo`.
`--sd15-shaped` builds (once, offline) a pipeline with Stable Diffusion 1.5's layer
sizes and random weights and runs that instead: on a GPU, in fp16, at 512x512 and 25
steps it does the real model's compute.

    .venv/bin/python bench/worker_overhead.py [--jobs 10] [--size 512] [--steps 20]
    .venv/bin/python bench/worker_overhead.py --model flux --jobs 10 --size 256 --steps 8
    .venv/bin/python bench/worker_overhead.py --sd15-shaped --jobs 20 --size 512 --steps 25
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import wait_or_exit, write_result  # noqa: E402
from bench._django import ROOT, bench_env, migrate, setup, start_cluster, stop, user_with_conversation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--redis", help="a Redis URL: channel layer and broker on Redis (default: embedded)")
    parser.add_argument("--sd15-shaped", action="store_true", help="an SD-1.5-shaped model instead of demo")
    parser.add_argument(
        "--model", choices=["sd15", "sdxl", "sd3", "flux"], help="the tiny model of this family (sd15: demo)"
    )
    args = parser.parse_args()

    model = "demo"
    overrides = {}
    cache = Path(os.environ.get("IMAGEGEN_MODEL_CACHE", ROOT / "var" / "models"))
    if args.model not in (None, "sd15"):
        from generation.demo_model import random_pipeline_path

        model = f"tiny-{args.model}"
        overrides["IMAGEGEN_MODELS"] = f"{model}={random_pipeline_path(cache, model)}"
    if args.sd15_shaped:
        from generation.demo_model import random_pipeline_path

        model = "sd15"
        path = random_pipeline_path(cache, "sd15")
        overrides["IMAGEGEN_MODELS"] = f"sd15={path}"
    if args.redis:
        overrides["REDIS_URL"] = args.redis
    env = bench_env(**overrides)
    migrate(env)
    setup(env)
    from generation.models import ImageJob
    from generation.registry import get_generator, model_limits
    from generation.request import GenerationRequest
    from generation.services import job_submit

    guidance = model_limits(model).default_guidance
    params = {"steps": args.steps, "width": args.size, "height": args.size, "seed": 1234, "model": model}
    params["guidance"] = guidance
    request = GenerationRequest(prompt="benchmark", negative_prompt="", **params)

    # Raw: the pipeline in a loop, warmed up by one call.
    generator = get_generator()
    generator.generate(request)
    started = time.perf_counter()
    for _ in range(args.jobs):
        generator.generate(request)
    raw_seconds = time.perf_counter() - started

    # System: the same jobs through job_submit, the broker and a real gpu cluster.
    user, conversation = user_with_conversation(title="bench")
    log = Path(env["DATA_DIR"]) / "gpu.log"
    cluster = start_cluster(env, "gpu", log)
    try:
        warm = job_submit(user=user, conversation=conversation, prompt="warm-up", **params).jobs[0]
        wait_or_exit(lambda: ImageJob.objects.get(pk=warm.pk).status == "complete", 300, log)
        ids = [
            job_submit(user=user, conversation=conversation, prompt="benchmark", **params).jobs[0].pk
            for _ in range(args.jobs)
        ]
        wait_or_exit(lambda: ImageJob.objects.filter(pk__in=ids, status="complete").count() == len(ids), 3600, log)
    finally:
        stop(cluster)
    jobs = list(ImageJob.objects.filter(pk__in=ids).order_by("started_at"))
    system_seconds = (jobs[-1].finished_at - jobs[0].started_at).total_seconds()
    gaps = [(b.started_at - a.finished_at).total_seconds() * 1000 for a, b in zip(jobs, jobs[1:], strict=False)]
    busy = [(job.finished_at - job.started_at).total_seconds() for job in jobs]

    result = {
        "command": "bench/worker_overhead.py " + " ".join(sys.argv[1:]),
        "model": model,
        "params": params,
        "jobs": args.jobs,
        "device": generator.device,
        "layer_and_broker": "Redis" if args.redis else "embedded (SQLite)",
        "raw_seconds": round(raw_seconds, 3),
        "system_seconds": round(system_seconds, 3),
        "raw_jobs_per_minute": round(60 * args.jobs / raw_seconds, 2),
        "system_jobs_per_minute": round(60 * args.jobs / system_seconds, 2),
        "throughput_ratio": round(raw_seconds / system_seconds, 4),
        "gap_ms_median": round(statistics.median(gaps), 1) if gaps else None,
        "gap_ms_max": round(max(gaps), 1) if gaps else None,
        "job_seconds_median": round(statistics.median(busy), 3),
    }
    for key, value in result.items():
        print(f"{key:24} {value}")
    family = f"_{args.model}" if args.model else ""
    name = "worker_overhead" + family + ("_sd15" if args.sd15_shaped else "") + ("_redis" if args.redis else "")
    print(f"written to {write_result(name, result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
