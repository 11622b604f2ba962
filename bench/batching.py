"""Micro-batching: the same backlog through the real worker with B = 1 and with B = 4
images per pass, in one run; images per second and the ratio.

For each B a real `gpu` cluster is started with IMAGEGEN_MAX_BATCH=B and warmed up (one
pass); then the backlog (N jobs from 4 users, different prompts and seeds, the same
model, size, steps and guidance, so any four can share a pass) is queued at once, in
one transaction, and timed from the first job's start to the last job's finish. For
reference, the raw pipeline is timed too: N images one at a time, and N images four at
a time (ImageGenerator.generate_batch), in this process.

On a CPU it runs the `demo` model (noise, the real compute of its tiny shape).
`--sd15-shaped` builds (once, offline) a pipeline with Stable Diffusion 1.5's layer
sizes and random weights; on a GPU, in fp16, at 512x512 and 25 steps it does the real
model's compute.

    .venv/bin/python bench/batching.py [--jobs 16] [--size 256] [--steps 20]
    .venv/bin/python bench/batching.py --sd15-shaped --jobs 32 --size 512 --steps 25
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import wait_or_exit, write_result  # noqa: E402
from bench._django import ROOT, bench_env, migrate, setup, start_cluster, stop  # noqa: E402

USERS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="the batch size compared with 1 (default 4)")
    parser.add_argument("--sd15-shaped", action="store_true", help="an SD-1.5-shaped model instead of demo")
    args = parser.parse_args()

    model = "demo"
    overrides = {}
    if args.sd15_shaped:
        from generation.demo_model import random_pipeline_path

        model = "sd15"
        path = random_pipeline_path(Path(os.environ.get("IMAGEGEN_MODEL_CACHE", ROOT / "var" / "models")), "sd15")
        overrides["IMAGEGEN_MODELS"] = f"sd15={path}"
    env = bench_env(**overrides)
    migrate(env)
    setup(env)
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from chat.services import conversation_create
    from generation.models import ImageJob
    from generation.registry import get_generator
    from generation.request import GenerationRequest
    from generation.services import job_submit

    params = {"steps": args.steps, "width": args.size, "height": args.size, "model": model, "guidance": 7.0}
    chats = []
    for n in range(USERS):
        user = get_user_model().objects.create_user(f"bench{n}", password="bench-password-1")
        chats.append((user, conversation_create(owner=user, title="bench")))

    # Raw: the pipeline in this process, one image at a time and B at a time.
    generator = get_generator()
    requests = [
        GenerationRequest(prompt=f"a benchmark picture {n}", negative_prompt="", seed=1000 + n, **params)
        for n in range(args.jobs)
    ]
    generator.generate_batch(requests[: args.batch])  # warm-up
    started = time.perf_counter()
    for request in requests:
        generator.generate(request)
    raw_single = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, args.jobs, args.batch):
        generator.generate_batch(requests[start : start + args.batch])
    raw_batched = time.perf_counter() - started

    runs = {}
    for batch in (1, args.batch):
        log = Path(env["DATA_DIR"]) / f"gpu-{batch}.log"
        cluster = start_cluster({**env, "IMAGEGEN_MAX_BATCH": str(batch)}, "gpu", log)
        try:
            warm = [_submit(job_submit, chats[n % USERS], f"warm-up {n}", n, params) for n in range(batch)]
            wait_or_exit(
                lambda ids=warm: ImageJob.objects.filter(pk__in=ids, status="complete").count() == len(ids), 600, log
            )
            with transaction.atomic():  # the whole backlog appears at once
                ids = [
                    _submit(job_submit, chats[n % USERS], f"a benchmark picture {n}", 1000 + n, params)
                    for n in range(args.jobs)
                ]
            wait_or_exit(
                lambda ids=ids: ImageJob.objects.filter(pk__in=ids, status="complete").count() == len(ids), 3600, log
            )
        finally:
            stop(cluster)
        jobs = list(ImageJob.objects.filter(pk__in=ids))
        first = min(job.started_at for job in jobs)
        last = max(job.finished_at for job in jobs)
        seconds = (last - first).total_seconds()
        runs[batch] = {
            "seconds": round(seconds, 3),
            "images_per_second": round(args.jobs / seconds, 3),
            "passes": len({job.batch for job in jobs}),
            "pass_sizes": sorted({job.batch_size for job in jobs}),
        }

    result = {
        "command": "bench/batching.py " + " ".join(sys.argv[1:]),
        "model": model,
        "params": params,
        "jobs": args.jobs,
        "device": generator.device,
        "raw_images_per_second_b1": round(args.jobs / raw_single, 3),
        f"raw_images_per_second_b{args.batch}": round(args.jobs / raw_batched, 3),
        "raw_ratio": round(raw_single / raw_batched, 3),
        "system_b1": runs[1],
        f"system_b{args.batch}": runs[args.batch],
        "system_ratio": round(runs[args.batch]["images_per_second"] / runs[1]["images_per_second"], 3),
    }
    for key, value in result.items():
        print(f"{key:30} {value}")
    name = "batching" + ("_sd15" if args.sd15_shaped else "")
    print(f"written to {write_result(name, result).relative_to(ROOT)}")


def _all_complete(job_model, ids: list[int]) -> bool:
    return job_model.objects.filter(pk__in=ids, status="complete").count() == len(ids)


def _submit(job_submit, chat, prompt: str, seed: int, params: dict) -> int:
    user, conversation = chat
    return job_submit(user=user, conversation=conversation, prompt=prompt, seed=seed, **params).jobs[0].pk


if __name__ == "__main__":
    main()
