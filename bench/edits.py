"""Edits: the worker's overhead on image-to-image against the bare diffusers pipeline, and
4 edits in one pass against one at a time, in one run.

1. Bare: diffusers' image-to-image pipeline (built from the loaded model with
   `from_pipe`, as the worker builds it) called N times in a loop on the same source.
2. Worker, one at a time: N edit jobs (each with its own uploaded source) through
   `job_submit` and a real `gpu` cluster with IMAGEGEN_MAX_BATCH=1.
3. Worker, 4 a pass: the same N edits with IMAGEGEN_MAX_BATCH=4.

Each worker run is warmed up by one edit first, and timed from the first job's start
to the last one's finish. On a CPU it runs the `demo` model; `--sd15-shaped` runs a
random-weight model with Stable Diffusion 1.5's layer sizes (built offline), which
on a GPU does the real model's compute.

    .venv/bin/python bench/edits.py [--jobs 8] [--size 256] [--steps 20] [--strength 0.6]
    .venv/bin/python bench/edits.py --sd15-shaped --jobs 16 --size 512 --steps 25
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import wait_or_exit, write_result  # noqa: E402
from bench._django import ROOT, bench_env, migrate, setup, start_cluster, stop, user_with_conversation  # noqa: E402


def _source(size: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--sd15-shaped", action="store_true", help="an SD-1.5-shaped model instead of demo")
    args = parser.parse_args()

    model, overrides = "demo", {}
    if args.sd15_shaped:
        from generation.demo_model import random_pipeline_path

        cache = Path(os.environ.get("IMAGEGEN_MODEL_CACHE", ROOT / "var" / "models"))
        model = "sd15"
        overrides["IMAGEGEN_MODELS"] = f"sd15={random_pipeline_path(cache, 'sd15')}"
    env = bench_env(**overrides)
    migrate(env)
    setup(env)
    runs = {}
    runs["bare_seconds"], device = _bare(model, args)
    for batch in (1, 4):
        batch_env = {**env, "IMAGEGEN_MAX_BATCH": str(batch)}
        runs[f"worker_batch{batch}_seconds"] = _through_worker(batch_env, model, args, batch)

    bare, one, four = runs["bare_seconds"], runs["worker_batch1_seconds"], runs["worker_batch4_seconds"]
    result = {
        "command": "bench/edits.py " + " ".join(sys.argv[1:]),
        "model": model,
        "device": device,
        "jobs": args.jobs,
        "size": args.size,
        "steps": args.steps,
        "strength": args.strength,
        **{key: round(value, 3) for key, value in runs.items()},
        "bare_edits_per_minute": round(60 * args.jobs / bare, 2),
        "worker_edits_per_minute_batch1": round(60 * args.jobs / one, 2),
        "worker_edits_per_minute_batch4": round(60 * args.jobs / four, 2),
        "worker_over_bare": round(bare / one, 4),
        "batch4_over_batch1": round(one / four, 4),
    }
    for key, value in result.items():
        print(f"{key:32} {value}")
    name = "edits" + ("_sd15" if args.sd15_shaped else "")
    print(f"written to {write_result(name, result).relative_to(ROOT)}")


def _bare(model: str, args) -> tuple[float, str]:
    """The image-to-image pipeline alone, N calls, after one to warm up."""
    import torch

    from generation.registry import get_generator, model_limits
    from generation.request import pipeline_steps

    generator = get_generator()
    generator.load(model)
    pipe = generator.pipeline_for("img2img")
    source = _source(args.size, 0)

    def call():
        pipe(
            prompt="benchmark",
            image=source,
            strength=args.strength,
            num_inference_steps=pipeline_steps(args.steps, args.strength),
            guidance_scale=model_limits(model).default_guidance,
            generator=torch.Generator("cpu").manual_seed(1),
        )

    call()
    started = time.perf_counter()
    for _ in range(args.jobs):
        call()
    return time.perf_counter() - started, generator.device


def _through_worker(env: dict, model: str, args, batch: int) -> float:
    from generation.models import ImageJob
    from generation.services import job_submit

    user, conversation = user_with_conversation(username=f"bench{batch}", title=f"bench edits x{batch}")
    params = {"model": model, "steps": args.steps, "strength": args.strength, "kind": "img2img"}
    log = Path(env["DATA_DIR"]) / f"gpu-{batch}.log"
    cluster = start_cluster(env, "gpu", log)
    try:
        source = _source(args.size, 0)
        warm_id = job_submit(user=user, conversation=conversation, prompt="warm-up", source=source, **params).jobs[0].pk
        wait_or_exit(lambda: ImageJob.objects.get(pk=warm_id).status == "complete", 600, log)
        ids = []
        for index in range(args.jobs):
            submitted = job_submit(
                user=user, conversation=conversation, prompt="benchmark", source=_source(args.size, index), **params
            )
            ids.append(submitted.jobs[0].pk)
        wait_or_exit(lambda: ImageJob.objects.filter(pk__in=ids, status="complete").count() == len(ids), 3600, log)
    finally:
        stop(cluster)
    jobs = list(ImageJob.objects.filter(pk__in=ids))
    sizes = {job.batch_size for job in jobs}
    print(f"batch {batch}: passes of {sorted(sizes)} images")
    return (max(job.finished_at for job in jobs) - min(job.started_at for job in jobs)).total_seconds()


if __name__ == "__main__":
    main()
