"""The speed mode against eager: images per second and per-image latency of the bare
diffusers pipeline, the worker in eager mode and the worker in the speed mode, at 1 and
at 4 images a pass, each against the compute limit, in one run.

For each model shape a random-weight pipeline with the real model's layer sizes is
built offline (`sd15`: Stable Diffusion 1.5 at 512x512 and 25 steps; `sdxl`: Stable
Diffusion XL at 1024x1024 and 30 steps). The bare pipeline is diffusers' own
(`from_pretrained` in the family's dtype, `.to(device)`, called in a loop). Each worker
is a real `gpu` cluster (IMAGEGEN_MAX_BATCH=4) running the model registered twice,
`;eager` and `;speed`: the speed mode compiles while the model loads, which the worker
row reports with its load time. Each worker is warmed up (a pass of 1 and one of 4),
then runs a backlog of single-image passes (each job with its own guidance, so none
can share a pass) and one of four-image passes, timed from the first job's start to
the last one's finish. The latency is a job's median run time (its pass's duration).

The compute limit: the pipeline's FLOPs per image (counted with PyTorch's
FlopCounterMode over a one-step and a two-step call: text encoders, the UNet's
steps with both guidance halves, the VAE decode) over the GPU's dense fp16 peak
(the datasheet's, and a large fp16 matrix product measured here).

The speed mode's images are compared with the eager worker's (same prompts, seeds and
passes): the largest and the mean pixel difference. Graphs compiled while jobs ran
are read from the worker's row (the promise: 0).

Without a GPU it runs the `demo` model (`--shapes demo`, 256x256, 8 steps) on the CPU:
the same checks of images and compiles, and CPU timings that say nothing of a GPU.

    .venv/bin/python bench/gpu_speed.py --shapes sd15,sdxl
    .venv/bin/python bench/gpu_speed.py --shapes demo
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import wait_or_exit, write_result  # noqa: E402
from bench._django import ROOT, bench_env, migrate, setup, start_cluster, stop, user_with_conversation  # noqa: E402

SHAPES = {
    "demo": {"size": 256, "steps": 8, "guidance": 7.0, "b1": 6, "b4": 8},
    "sd15": {"size": 512, "steps": 25, "guidance": 7.0, "b1": 8, "b4": 16},
    "sdxl": {"size": 1024, "steps": 30, "guidance": 5.0, "b1": 3, "b4": 8},
}
DATASHEET_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense fp16/bf16 tensor cores
BATCH = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="sd15,sdxl", help="comma-separated: demo, sd15, sdxl")
    parser.add_argument("--out", help="also write each shape's result (JSON) in this folder")
    args = parser.parse_args()
    cache = Path(os.environ.get("IMAGEGEN_MODEL_CACHE", ROOT / "var" / "models"))
    env = bench_env(IMAGEGEN_MODEL_CACHE=str(cache), IMAGEGEN_MAX_BATCH=str(BATCH), IMAGEGEN_WORKER_BEAT_SECONDS="2")
    env.setdefault("IMAGEGEN_TIMEOUT_SECONDS", "1800")
    env.setdefault("IMAGEGEN_HARD_TIMEOUT_SECONDS", "3600")
    import torch

    cuda = torch.cuda.is_available()
    peak = gpu_peak() if cuda else {}
    shapes = args.shapes.split(",")
    results, paths = {}, {}
    for shape in shapes:  # the bare pipelines first: the workers' Django set-up is one
        started = time.perf_counter()
        paths[shape], results[shape] = bare_shape(shape, cache, cuda=cuda, peak=peak)
        results[shape]["bench_seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps({shape: results[shape]}), flush=True)
    models = ",".join(
        f"{shape}-eager={paths[shape]};eager,{shape}-speed={paths[shape]};speed={SHAPES[shape]['size']}"
        for shape in shapes
    )
    env["IMAGEGEN_MODELS"] = models
    migrate(env)
    setup(env)
    for shape in shapes:
        started = time.perf_counter()
        workers_shape(shape, results[shape], env, cuda=cuda, peak=peak)
        results[shape]["bench_seconds"] += round(time.perf_counter() - started, 1)
        print(json.dumps({shape: results[shape]}, indent=1), flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"gpu_speed_{shape}.json").write_text(json.dumps(results[shape], indent=2))
    result = {
        "command": "bench/gpu_speed.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "software": f"torch {torch.__version__}",
        "peak": peak,
        "shapes": results,
    }
    name = "gpu_speed" + ("" if cuda else "_cpu")
    print(f"written to {write_result(name, result).relative_to(ROOT)}")


def gpu_peak() -> dict:
    """The GPU's dense fp16 peak: its datasheet's and one measured on a large matrix product."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    measured = 10 * 2 * 8192**3 / (time.perf_counter() - started) / 1e12
    name = torch.cuda.get_device_name()
    datasheet = next((value for key, value in DATASHEET_TFLOPS.items() if key in name), None)
    return {"datasheet_tflops": datasheet, "measured_matmul_tflops": round(measured, 1)}


def bare_shape(shape: str, cache: Path, *, cuda: bool, peak: dict) -> tuple[Path, dict]:
    from generation.demo_model import random_pipeline_path

    spec = SHAPES[shape]
    built = time.perf_counter()
    if cuda:
        import torch

        with torch.device("cuda"):  # a GPU initialises the random weights in seconds
            path = random_pipeline_path(cache, shape)
    else:
        path = random_pipeline_path(cache, shape)
    out = {"params": {k: spec[k] for k in ("size", "steps", "guidance")}}
    out["build_seconds"] = round(time.perf_counter() - built, 1)
    out["bare"] = bare(path, spec, cuda=cuda)
    if cuda:
        out["flops_per_image"] = out["bare"].pop("flops_per_image")
        limit = peak.get("measured_matmul_tflops") or 0
        for key in ("b1", "b4"):
            out["bare"][key]["of_limit"] = of_limit(out["bare"][key], out["flops_per_image"], peak)
        out["compute_limit_images_per_second"] = round(limit * 1e12 / out["flops_per_image"], 2) if limit else None
    return path, out


def workers_shape(shape: str, out: dict, env: dict, *, cuda: bool, peak: dict) -> None:
    spec = SHAPES[shape]
    images = {}
    for mode in ("eager", "speed"):
        out[mode], images[mode] = worker(f"{shape}-{mode}", spec, env)
        if cuda:
            for key in ("b1", "b4"):
                out[mode][key]["of_limit"] = of_limit(out[mode][key], out["flops_per_image"], peak)
    out["speed_over_eager"] = {
        key: round(out["speed"][key]["images_per_second"] / out["eager"][key]["images_per_second"], 3)
        for key in ("b1", "b4")
    }
    out["batching_ratio"] = {
        mode: round(out[mode]["b4"]["images_per_second"] / out[mode]["b1"]["images_per_second"], 3)
        for mode in ("bare", "eager", "speed")
    }
    out["same_images"] = compare(images["eager"], images["speed"])


def of_limit(run: dict, flops: float, peak: dict) -> dict:
    achieved = run["images_per_second"] * flops / 1e12
    measured, datasheet = peak.get("measured_matmul_tflops"), peak.get("datasheet_tflops")
    return {
        "achieved_tflops": round(achieved, 1),
        "of_measured_peak": round(achieved / measured, 3) if measured else None,
        "of_datasheet_peak": round(achieved / datasheet, 3) if datasheet else None,
    }


def bare(path: Path, spec: dict, *, cuda: bool) -> dict:
    """diffusers' own pipeline, loaded and called in a loop."""
    import torch
    from diffusers import AutoPipelineForText2Image

    device = "cuda" if cuda else "cpu"
    dtype = torch.float16 if cuda else torch.float32
    pipe = AutoPipelineForText2Image.from_pretrained(str(path), dtype=dtype, local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)

    def call(n: int, steps: int = spec["steps"], seed: int = 0):
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
        return pipe(
            prompt=[f"a benchmark picture {seed + i}" for i in range(n)],
            num_inference_steps=steps,
            width=spec["size"],
            height=spec["size"],
            guidance_scale=spec["guidance"],
            generator=generators,
        )

    def sync():
        if cuda:
            torch.cuda.synchronize()

    out = {}
    call(1)
    call(BATCH)
    for key, per_pass, count in (("b1", 1, spec["b1"]), ("b4", BATCH, spec["b4"])):
        sync()
        started = time.perf_counter()
        for seed in range(0, count, per_pass):
            call(per_pass, seed=seed)
        sync()
        seconds = time.perf_counter() - started
        out[key] = {
            "images_per_second": round(count / seconds, 3),
            "latency_s": round(seconds / (count / per_pass), 3),
        }
    if cuda:
        from torch.utils.flop_counter import FlopCounterMode

        counted = []
        for steps in (1, 2):
            with FlopCounterMode(display=False) as counter:
                call(1, steps=steps)
            counted.append(counter.get_total_flops())
        per_step = counted[1] - counted[0]
        out["flops_per_image"] = (counted[0] - per_step) + spec["steps"] * per_step
    pipe.to("cpu")
    if cuda:
        torch.cuda.empty_cache()
    return out


def worker(model: str, spec: dict, env: dict) -> tuple[dict, dict]:
    """The model's jobs through a real `gpu` cluster; its timings and its images."""
    from django.db import connections, transaction

    from generation.models import ImageJob, Worker
    from generation.services import job_submit

    user, conversation = user_with_conversation(username=f"bench-{model}")
    params = {"width": spec["size"], "height": spec["size"], "steps": spec["steps"], "model": model}

    def submit(prompt: str, seed: int, guidance: float) -> int:
        job = job_submit(
            user=user, conversation=conversation, prompt=prompt, seed=seed, guidance=guidance, **params
        ).jobs[0]
        return job.pk

    def done(ids) -> bool:
        return ImageJob.objects.filter(pk__in=ids, status="complete").count() == len(ids)

    log = Path(env["DATA_DIR"]) / "gpu.log"
    cluster = start_cluster(env, "gpu", log)
    out, images = {}, {}
    try:
        loading = time.perf_counter()
        warm = [submit("warm-up", 0, spec["guidance"])]
        wait_or_exit(lambda: done(warm), 1500, log)
        out["first_job_seconds"] = round(time.perf_counter() - loading, 1)
        with transaction.atomic():
            warm = [submit(f"warm-up {n}", n, spec["guidance"]) for n in range(BATCH)]
        wait_or_exit(lambda: done(warm), 900, log)
        for key, count in (("b1", spec["b1"]), ("b4", spec["b4"])):
            with transaction.atomic():  # the whole backlog appears at once
                ids = [
                    # Single passes: each its own guidance, so no two can share one.
                    submit(f"a benchmark picture {n}", 1000 + n, spec["guidance"] + (n / 1000 if key == "b1" else 0))
                    for n in range(count)
                ]
            wait_or_exit(lambda ids=ids: done(ids), 1800, log)
            jobs = list(ImageJob.objects.filter(pk__in=ids).order_by("pk"))
            seconds = (max(j.finished_at for j in jobs) - min(j.started_at for j in jobs)).total_seconds()
            out[key] = {
                "images_per_second": round(count / seconds, 3),
                "latency_s": round(statistics.median((j.finished_at - j.started_at).total_seconds() for j in jobs), 3),
                "pass_sizes": sorted({j.batch_size for j in jobs}),
            }
            images[key] = [j.image.path for j in jobs]
        time.sleep(float(os.environ.get("IMAGEGEN_WORKER_BEAT_SECONDS", "5")) + 1)  # the row's next beat
        row = Worker.objects.filter(loaded_model=model).order_by("-last_seen_at").values().first() or {}
        out["worker"] = {
            key: row.get(key) for key in ("loaded_model", "gpu_memory", "load_seconds", "speed", "compiled_in_jobs")
        }
    finally:
        stop(cluster)
        connections.close_all()
    return out, images


def compare(eager: dict, speed: dict) -> dict:
    import numpy as np
    from PIL import Image

    diffs = []
    for key in eager:
        for a, b in zip(eager[key], speed[key], strict=True):
            pa = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
            pb = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
            diffs.append(np.abs(pa - pb))
    every = np.concatenate([d.ravel() for d in diffs])
    return {
        "images": len(diffs),
        "max_pixel_difference": int(every.max()),
        "mean_pixel_difference": round(float(every.mean()), 4),
        "share_of_pixels_within_2": round(float((every <= 2).mean()), 4),
    }


if __name__ == "__main__":
    main()
