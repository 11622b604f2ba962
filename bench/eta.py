"""ETA honesty: what a job is promised when it is submitted, against when it is ready.

Real processes, as production runs them, on a fresh database: a `gpu` cluster (the
production drain, with its start-up warm-up passes) and the `maintenance` cluster.
Only the device is simulated, by `SimulatedGpu` (IMAGEGEN_GENERATOR=bench.eta.SimulatedGpu),
which sleeps as a GPU would keep the worker waiting. A pass of P megapixels in all
(width x height x images) takes, times SCALE (2 by default), with a seeded noise of
NOISE per pass:

    prompt      0.05 + 0.02 x images s
    each step   0.012 + 0.055 P + 0.012 P^2 s     (kernel launches, pixels, attention)
    decode      0.03 + 0.10 P s                   (the VAE)

so the time is not in proportion to the steps (a fixed part), nor to the pixels (a
floor, and attention grows faster), as on a GPU. At SCALE 2 a 512x512 image of 20
steps takes 1.4 s and a 1024x1024 one of 30 steps 5.4 s. Its images are a gradient
with grain (bench/zero_cost.py), so the worker's PNG encoding costs what a photo's
would; loading the model takes 1 s x SCALE.

1. Start-up: the clusters start; the gpu worker loads the model and times its warm-up
   passes (`generation.worker.warm_up`).
2. First jobs: FIRST jobs of the five SHAPES (as many of each, shuffled) submitted at
   once, with no history: their promises come from the warm-up's measurement alone.
3. Backlog: once those are done (the estimator's 10-job warm-up), BACKLOG jobs (three
   of each shape, shuffled) submitted at once.
4. New shapes: once those are done, 10 jobs of five sizes and step counts that none of
   the jobs before ran (two of each, shuffled), submitted at once.
5. Arrivals (--arrivals N): jobs of the first five shapes arriving at random (Poisson,
   about as fast as the device works), so most promises are made while a job runs.

A job's promise is `estimated_seconds` from `queue_eta`, read right after its
`job_submit` (what the next queue broadcast sends); its actual time is `finished_at -
created_at`; the error is |promised - actual| / actual. The previous estimator
(seconds per step, medians per size, every job ahead counted from its start to its
image stored, whole seconds; `old_promises`, for one worker without batching as here)
promises the same jobs at the same moments, for comparison.

Last, in this process, on 200 finished jobs: the time to build the estimator
(`duration_estimator`), new and previous, and `queue_eta` with 20 and 2000 waiting.

    .venv/bin/python bench/eta.py [--scale 2] [--arrivals 15] [--backends embedded,postgres] [--seed 7]
"""

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import child_main, in_child, percentile, write_result  # noqa: E402
from bench._django import ROOT, bench_env, fresh_postgres, migrate, start_cluster, stop  # noqa: E402

MODEL = "demo"
# (width, height, steps): small, medium, large, portrait, few steps.
SHAPES = [(512, 512, 20), (768, 768, 25), (1024, 1024, 30), (512, 768, 30), (640, 640, 15)]
# Sizes and step counts none of the jobs before ran: what the fit makes of them.
NEW_SHAPES = [(384, 384, 40), (576, 576, 35), (640, 512, 28), (896, 896, 20), (1024, 768, 18)]
# With --device demo the real demo model runs on this machine's CPU, at half the sides
# (a CPU is slower than a GPU, and the demo model's cost grows with the pixels the same way).
DEMO_SHAPES = [(w // 2, h // 2, s) for w, h, s in SHAPES]
DEMO_NEW_SHAPES = [(w // 2, h // 2, s) for w, h, s in NEW_SHAPES]
FIRST = 10
BACKLOG = 15
NOISE = 0.02


# --- The simulated device ----------------------------------------------------------------


def gpu_seconds(width: int, height: int, steps: int, images: int = 1) -> tuple[float, float, float]:
    """(before the steps, each step, after the steps) of a pass, unscaled and without noise."""
    megapixels = width * height * images / 1e6
    return (
        0.05 + 0.02 * images,
        0.012 + 0.055 * megapixels + 0.012 * megapixels**2,
        0.03 + 0.10 * megapixels,
    )


def true_seconds(width: int, height: int, steps: int, scale: float) -> float:
    head, step, tail = gpu_seconds(width, height, steps)
    return scale * (head + steps * step + tail)


class SimulatedGpu:
    """A device that takes as long as `gpu_seconds` says (times IMAGEGEN_BENCH_GPU_SCALE).

    It implements `generation.request.ImageGenerator` (batching included), keeps a
    model "loaded" and tells how long loading it took, as the diffusers generator does.
    """

    def __init__(self, registry=None, *, cache_dir=None, device="auto", max_batch=0):
        import torch

        self.device = "cpu" if device == "auto" else device
        self.scale = float(os.environ.get("IMAGEGEN_BENCH_GPU_SCALE", "2"))
        self.loaded_model = None
        self.load_seconds: dict[str, float] = {}
        self._torch = torch
        self._pictures = {}

    def load(self, name):
        if self.loaded_model != name:
            started = time.perf_counter()
            time.sleep(1.0 * self.scale)
            self.loaded_model = name
            self.load_seconds[name] = time.perf_counter() - started
        return None

    def needs_download(self, name):
        return False

    def generate_batch(self, requests, on_step=None):
        from bench.zero_cost import picture

        self.load(requests[0].model)
        first = requests[0]
        head, step, tail = gpu_seconds(first.width, first.height, first.steps, len(requests))
        noise = max(0.9, random.Random(first.seed * 7919 + first.steps).gauss(1.0, NOISE))
        size = (first.width, first.height)
        if size not in self._pictures:
            self._pictures[size] = picture(*size)
        latents = self._torch.zeros(len(requests), 4, first.height // 8, first.width // 8)
        time.sleep(head * self.scale * noise)
        stopped = set()
        for done in range(1, first.steps + 1):
            time.sleep(step * self.scale * noise)
            if on_step is not None:
                stopped.update(on_step(done, first.steps, latents) or ())
            if len(stopped) == len(requests):
                break
        time.sleep(tail * self.scale * noise)
        return [self._pictures[size].copy() for _ in requests]


# --- The previous estimator, as it was (one worker, no batching) -------------------------


def old_duration_estimator(*, history: int = 200):
    """The estimator before the fit: seconds per step of whole started..finished spans,
    medians per model, size and pass size, scaled by pixels for a new size."""
    from statistics import median

    from django.conf import settings

    from generation.models import ImageJob
    from generation.request import TXT2IMG, denoise_steps

    recent = (
        ImageJob.objects.filter(status="complete", started_at__isnull=False, finished_at__isnull=False)
        .order_by("-finished_at")
        .values_list(
            "model", "kind", "width", "height", "steps", "strength", "batch_size", "started_at", "finished_at"
        )[:history]
    )
    per_pass, per_size, per_model, overall = {}, {}, {}, []
    for model, kind, width, height, steps, strength, batch, started, finished in recent:
        ran = denoise_steps(steps, strength if kind != TXT2IMG else None)
        per_step = max((finished - started).total_seconds(), 0.0) / max(ran, 1)
        per_pass.setdefault((model, kind, width, height, batch), []).append(per_step)
        per_image = per_step / max(batch, 1)
        per_size.setdefault((model, kind, width, height), []).append(per_image)
        if kind == TXT2IMG:
            per_megapixel = per_image / (width * height / 1e6)
            per_model.setdefault(model, []).append(per_megapixel)
            overall.append(per_megapixel)
    default = settings.IMAGEGEN_DEFAULT_SECONDS_PER_STEP / (512 * 512 / 1e6)

    def per_step(model, kind, width, height, batch):
        if per_pass.get((model, kind, width, height, batch)):
            return median(per_pass[(model, kind, width, height, batch)])
        if batch == 1 and (model, kind, width, height) in per_size:
            return median(per_size[(model, kind, width, height)])
        scaled = per_model.get(model) or overall
        return (median(scaled) if scaled else default) * (width * height / 1e6)

    return lambda model, width, height, steps, batch=1, kind=TXT2IMG: (
        per_step(model, kind, width, height, batch) * steps
    )


def old_promises() -> dict[int, int]:
    """job id -> the previous `queue_eta`'s `estimated_seconds` (FIFO, one worker)."""
    from generation.models import ImageJob

    estimate = old_duration_estimator()
    clock = 0.0
    fields = ("pk", "model", "width", "height", "steps", "progress")
    for job in ImageJob.objects.filter(status="processing").values(*fields):
        clock += estimate(job["model"], job["width"], job["height"], job["steps"]) * (100 - job["progress"]) / 100
    promises = {}
    for job in ImageJob.objects.filter(status="queued").order_by("-priority", "sequence").values(*fields):
        clock += estimate(job["model"], job["width"], job["height"], job["steps"])
        promises[job["pk"]] = round(clock)
    return promises


# --- The run -----------------------------------------------------------------------------


def submit_and_promise(user, chat, shape, n: int) -> dict:
    from django.db import transaction

    from generation.selectors import queue_eta
    from generation.services import job_submit

    width, height, steps = shape
    # Read in the submission's transaction: an idle worker could claim the job first.
    with transaction.atomic():
        job = job_submit(
            user=user,
            conversation=chat,
            prompt=f"job {n}",
            model=MODEL,
            width=width,
            height=height,
            steps=steps,
            seed=n,
        ).jobs[0]
        promised = next(entry for entry in queue_eta() if entry["job_id"] == job.pk)["estimated_seconds"]
        old = old_promises()[job.pk]
    return {"job_id": job.pk, "shape": shape, "promised": promised, "old_promised": old}


def wait_done(records: list[dict], log: Path, timeout: float = 900) -> None:
    from generation.models import ImageJob

    ids = [r["job_id"] for r in records]
    deadline = time.monotonic() + timeout
    while ImageJob.objects.filter(pk__in=ids, status="complete").count() < len(ids):
        if time.monotonic() > deadline or ImageJob.objects.filter(pk__in=ids, status="error").exists():
            raise SystemExit(f"jobs did not complete; gpu log:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    times = {
        pk: (finished - created).total_seconds()
        for pk, created, finished in ImageJob.objects.filter(pk__in=ids).values_list("pk", "created_at", "finished_at")
    }
    for record in records:
        record["actual"] = round(times[record["job_id"]], 3)


def errors(records: list[dict], key: str) -> dict:
    relative = [abs(r[key] - r["actual"]) / r["actual"] for r in records]
    signed = [(r[key] - r["actual"]) / r["actual"] for r in records]  # > 0: promised too long
    return {
        "n": len(records),
        "p50_pct": round(percentile(relative, 50) * 100, 1),
        "p90_pct": round(percentile(relative, 90) * 100, 1),
        "max_pct": round(max(relative) * 100, 1),
        "signed_p50_pct": round(percentile(signed, 50) * 100, 1),
        "too_long_share": round(sum(s > 0 for s in signed) / len(signed), 2),
    }


def report(records: list[dict]) -> dict:
    return {"new": errors(records, "promised"), "old": errors(records, "old_promised")}


def child(backend: str, scale: float, arrivals: int, seed: int, postgres: str, redis: str, device: str) -> dict:
    overrides = {"LOG_LEVEL": "WARNING", "IMAGEGEN_WARMUP": "1"}
    if device == "simulated":
        overrides |= {"IMAGEGEN_GENERATOR": "bench.eta.SimulatedGpu", "IMAGEGEN_BENCH_GPU_SCALE": str(scale)}
    shapes_run, shapes_new = (SHAPES, NEW_SHAPES) if device == "simulated" else (DEMO_SHAPES, DEMO_NEW_SHAPES)
    if backend == "postgres":
        overrides["DATABASE_URL"] = fresh_postgres(postgres, "imagegen_bench_eta")
        overrides["REDIS_URL"] = redis
        import redis as redis_client

        redis_client.Redis.from_url(redis).flushdb()
    env = bench_env(**overrides)
    migrate(env)
    from bench._django import setup, user_with_conversation

    setup(env)
    from generation.models import ImageJob, Worker

    rng = random.Random(seed)
    user, chat = user_with_conversation("eta", title="eta")
    data = Path(env["DATA_DIR"])
    log = data / "gpu.log"
    maintenance = start_cluster(env, "maintenance", data / "maintenance.log")
    started = time.monotonic()
    gpu = start_cluster(env, "gpu", log)
    result = {"backend": backend}
    try:
        # 1. Start-up: the worker's row says what its warm-up measured.
        deadline = time.monotonic() + 300
        while not (row := Worker.objects.filter(loaded_model=MODEL).exclude(warmup={}).first()):
            if time.monotonic() > deadline or gpu.poll() is not None:
                raise SystemExit(f"no warm-up; gpu log:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        measured = row.warmup[MODEL]
        result["warm_up"] = {
            "ready_after_start_s": round(time.monotonic() - started, 1),
            "passes_s": measured["seconds"],
            "measured": {
                key: round(measured[key], 4) for key in ("overhead", "overhead_per_mp", "step", "step_per_mp")
            },
        }

        # 2. The first jobs: no history.
        shapes = [shapes_run[n % len(shapes_run)] for n in range(FIRST)]
        rng.shuffle(shapes)
        first = [submit_and_promise(user, chat, shape, n) for n, shape in enumerate(shapes)]
        wait_done(first, log)

        # 3. The backlog, after those 10 jobs.
        shapes = [shapes_run[n % len(shapes_run)] for n in range(BACKLOG)]
        rng.shuffle(shapes)
        backlog = [submit_and_promise(user, chat, shape, FIRST + n) for n, shape in enumerate(shapes)]
        wait_done(backlog, log)

        # 4. Sizes and steps never run before.
        shapes = shapes_new * 2
        rng.shuffle(shapes)
        unseen = [submit_and_promise(user, chat, shape, FIRST + 2 * BACKLOG + n) for n, shape in enumerate(shapes)]
        wait_done(unseen, log)

        # 5. Random arrivals.
        arriving = []
        if device == "simulated":
            mean = statistics.fmean(true_seconds(*shape, scale) for shape in SHAPES)
        else:  # a job's own time: the backlog's last one waited for all of them
            mean = max(job["actual"] for job in backlog) / BACKLOG
        for n in range(arrivals):
            time.sleep(rng.expovariate(1 / mean))
            arriving.append(submit_and_promise(user, chat, rng.choice(shapes_run), 100 + n))
        wait_done(arriving, log)
    finally:
        stop(gpu)
        stop(maintenance)
    result.update(
        first_jobs=report(first),
        backlog=report(backlog),
        new_shapes=report(unseen),
        **({"arrivals": report(arriving)} if arriving else {}),
        jobs={"first": first, "backlog": backlog, "new_shapes": unseen, "arrivals": arriving},
    )
    if device == "simulated":
        result["true_seconds"] = {
            f"{w}x{h}x{s}": round(true_seconds(w, h, s, scale), 2) for w, h, s in SHAPES + NEW_SHAPES
        }
    result["cost"] = estimator_cost(user, chat, rng)
    assert not ImageJob.objects.filter(status="error").exists()
    return result


def estimator_cost(user, chat, rng: random.Random) -> dict:
    """Milliseconds to build the estimator and to run `queue_eta`, on 200 finished jobs."""
    from django.utils import timezone

    from generation.models import ImageJob
    from generation.selectors import duration_estimator, queue_eta
    from generation.services import job_submit

    now = timezone.now()
    done = ImageJob.objects.filter(status="complete").count()
    for n in range(200 - done):
        width, height, steps = rng.choice(SHAPES)
        job = job_submit(
            user=user, conversation=chat, prompt=f"history {n}", model=MODEL, width=width, height=height, steps=steps
        ).jobs[0]
        start = now - timedelta(seconds=10 * (200 - n))
        ImageJob.objects.filter(pk=job.pk).update(
            status="complete", worker="bench:1", started_at=start, finished_at=start + timedelta(seconds=3)
        )

    def ms(call, repeat: int) -> float:
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            call()
            times.append((time.perf_counter() - began) * 1000)
        return round(statistics.median(times), 2)

    cost = {
        "history": ImageJob.objects.filter(status="complete").count(),
        "build_estimator_ms": {"new": ms(duration_estimator, 30), "old": ms(old_duration_estimator, 30)},
    }
    for depth in (20, 2000):
        while (waiting := ImageJob.objects.filter(status="queued").count()) < depth:
            width, height, steps = rng.choice(SHAPES)
            count = min(8, depth - waiting)
            job_submit(
                user=user,
                conversation=chat,
                prompt="waiting",
                model=MODEL,
                width=width,
                height=height,
                steps=steps,
                count=count,
            )
        cost[f"queue_eta_ms_{depth}_waiting"] = ms(queue_eta, 5 if depth > 100 else 30)
    return cost


def main() -> None:
    if child_main(child, str, float, int, int, str, str, str):
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=2.0, help="the simulated device's times, multiplied")
    parser.add_argument(
        "--device",
        choices=["simulated", "demo"],
        default="simulated",
        help="the simulated GPU, or the real demo model on this CPU (half-size shapes)",
    )
    parser.add_argument("--arrivals", type=int, default=15, help="jobs arriving at random after the backlog")
    parser.add_argument("--backends", default="embedded")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()

    rows = []
    for backend in args.backends.split(","):
        row = in_child(
            __file__, backend, backend, args.scale, args.arrivals, args.seed, args.postgres, args.redis, args.device
        )
        rows.append(row)
        print(f"{backend}: warm-up {row['warm_up']}")
        for phase in ("first_jobs", "backlog", "new_shapes", "arrivals"):
            if phase in row:
                new, old = row[phase]["new"], row[phase]["old"]
                print(
                    f"  {phase:10} new p50 {new['p50_pct']:6.1f} % p90 {new['p90_pct']:6.1f} % signed p50 "
                    f"{new['signed_p50_pct']:6.1f} %   old p50 {old['p50_pct']:6.1f} % p90 {old['p90_pct']:6.1f} % "
                    f"signed p50 {old['signed_p50_pct']:6.1f} %",
                    flush=True,
                )
        print(f"  cost {row['cost']}")
    result = {
        "command": "bench/eta.py " + " ".join(sys.argv[1:]),
        "generator": (
            f"bench.eta.SimulatedGpu at scale {args.scale:g}"
            if args.device == "simulated"
            else "the demo model on the CPU"
        ),
        "shapes": SHAPES if args.device == "simulated" else DEMO_SHAPES,
        "rows": rows,
    }
    name = "eta" if args.device == "simulated" else "eta_demo_cpu"
    print(f"written to {write_result(name, result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
