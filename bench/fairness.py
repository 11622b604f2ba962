"""Fair queue policy: waits, fairness, ETA promises and claim cost, `fifo` against `fair`.

Each policy runs in processes of its own, with IMAGEGEN_QUEUE_POLICY set and a fresh
database. The product's own code decides everything: `job_submit` queues, `jobs_claim`
(one image a pass) picks what runs, `job_complete` records it, `queue_eta` promises.
Only the GPU is simulated, in a discrete-event simulation on a virtual clock: a job
runs for its true GPU seconds (COST_PER_STEP seconds a step at 512x512, scaled by
pixels, times a seeded noise of NOISE), and is claimed and completed with `now=` on
that clock, so `duration_estimator` learns from its history as in production. Before
the measured parts the estimator is warmed with WARMUP jobs of the five SHAPES.

1. Burst: a heavy user queues 8 SDXL-sized jobs, 4 light users queue 3 small ones
   each a few seconds later. Per user: wait (submitted to started) p50/p95 and GPU
   seconds; Jain's index of GPU seconds per weight over the window in which every
   user has a job pending; the light users' mean wait.
2. ETA: 4 users submit jobs of the five SHAPES at random (Poisson arrivals, about as
   fast as the GPU works, so a backlog comes and goes). At each submission the job's
   `estimated_seconds` from `queue_eta` (with the running job's progress persisted by
   deciles, as the worker does) is compared with its simulated finish:
   |promised - actual| / actual. The burst's promises are reported too.
3. Claim cost: in real time, `jobs_claim` then `job_complete` for MEASURED jobs on top
   of 20 and 2000 waiting (20 users; the queue is filled with `job_submit`, eight
   images a prompt).

    .venv/bin/python bench/fairness.py [--policies fifo,fair] [--backends embedded,postgres]
        [--depths 20,2000] [--measured 40] [--arrivals 60] [--seed 7]
"""

import argparse
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import child_main, in_child, percentile, write_result  # noqa: E402
from bench._django import ROOT, bench_env, fresh_postgres, migrate, setup  # noqa: E402

MODEL = "demo"
COST_PER_STEP = 0.5  # GPU seconds a step at 512x512; linear in pixels
NOISE = 0.03  # the standard deviation of a run's time, as a share of it
# (width, height, steps): small, medium, SDXL-sized, portrait, few steps.
SHAPES = [(512, 512, 20), (768, 768, 25), (1024, 1024, 30), (512, 768, 30), (640, 640, 15)]
HEAVY, LIGHT = (1024, 1024, 30), (512, 512, 20)
HEAVY_JOBS, LIGHT_USERS, LIGHT_JOBS = 8, 4, 3
WARMUP = 10
ETA_USERS = 4


def true_seconds(width: int, height: int, steps: int, rng: random.Random) -> float:
    return COST_PER_STEP * steps * (width * height) / (512 * 512) * max(0.8, rng.gauss(1.0, NOISE))


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else float("nan")


def errors_summary(errors: list[float]) -> dict:
    return {
        "n": len(errors),
        "p50_pct": round(percentile(errors, 50) * 100, 1),
        "p90_pct": round(percentile(errors, 90) * 100, 1),
        "max_pct": round(max(errors) * 100, 1) if errors else float("nan"),
    }


class Simulation:
    """One GPU worker on a virtual clock (seconds since `base`), driving the product's services."""

    def __init__(self, rng: random.Random):
        from django.utils import timezone

        self.rng = rng
        self.base = timezone.now()
        self.clock = 0.0
        self.png = tiny_png()

    def at(self, seconds: float):
        return self.base + timedelta(seconds=seconds)

    def run(self, arrivals: list[tuple[float, object, object, tuple[int, int, int]]]) -> list[dict]:
        """Submit `arrivals` (virtual time, user, conversation, shape) and run them all.

        Returns one record per job: who, shape, submitted/started/finished (virtual
        seconds), the promise `queue_eta` made at submission.
        """
        from generation.models import ImageJob
        from generation.selectors import queue_eta
        from generation.services import job_complete, job_progress, job_submit, jobs_claim

        pending = sorted(arrivals, key=lambda arrival: arrival[0])
        records: dict[int, dict] = {}
        queued = 0
        running = None  # (job, record, persisted step)
        while pending or queued or running:
            next_arrival = pending[0][0] if pending else float("inf")
            if running is None and queued:
                (job,) = jobs_claim(worker="sim", now=self.at(self.clock), max_batch=1)
                record = records[job.pk]
                record["started"] = self.clock
                record["finished"] = self.clock + record["gpu_seconds"]
                running, queued = (job, record, 0), queued - 1
            elif running is not None and running[1]["finished"] <= next_arrival:
                job, record, _ = running
                self.clock = record["finished"]
                if job_complete(job_id=job.pk, png=self.png, now=self.at(self.clock)) is None:
                    raise SystemExit(f"job {job.pk} was not processing")
                running = None
            else:
                when, user, conversation, (width, height, steps) = pending.pop(0)
                self.clock = max(self.clock, when)
                if running is not None:
                    running = self.persist_progress(*running, job_progress)
                job = job_submit(
                    user=user,
                    conversation=conversation,
                    prompt=f"job {len(records)}",
                    model=MODEL,
                    width=width,
                    height=height,
                    steps=steps,
                    seed=len(records),
                ).jobs[0]
                # Submitted at this moment of the virtual clock, as the ETA's arrival rates read it.
                ImageJob.objects.filter(pk=job.pk).update(created_at=self.at(self.clock))
                promise = next(entry for entry in queue_eta(now=self.at(self.clock)) if entry["job_id"] == job.pk)
                records[job.pk] = {
                    "user": user.username,
                    "owner_id": user.pk,
                    "shape": (width, height, steps),
                    "submitted": self.clock,
                    "gpu_seconds": true_seconds(width, height, steps, self.rng),
                    "promised_start": promise["estimated_start_seconds"],
                    "promised": promise["estimated_seconds"],
                }
                queued += 1
        left = ImageJob.objects.exclude(status=ImageJob.Status.COMPLETE).count()
        if left:
            raise SystemExit(f"{left} jobs did not complete")
        return list(records.values())

    def persist_progress(self, job, record, persisted: int, job_progress):
        """The running job's progress as the worker persists it: at each 10 % it crosses."""
        steps = record["shape"][2]
        done = int((self.clock - record["started"]) / record["gpu_seconds"] * steps)
        decile = done * 100 // steps // 10
        if decile > persisted * 100 // steps // 10:
            first = next(step for step in range(steps + 1) if step * 100 // steps // 10 == decile)
            job_progress(job=job, step=first, total=steps, persist=True, push=False, now=self.at(self.clock))
            persisted = first
        return job, record, persisted


def tiny_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(out, format="PNG")
    return out.getvalue()


def users_with_chats(names: list[str]) -> list[tuple[object, object]]:
    from bench._django import user_with_conversation

    return [user_with_conversation(name, title="fairness") for name in names]


def backlogged_window(records: list[dict], users: list[str]) -> tuple[float, float]:
    """From the moment every user has a job pending to the first moment one has none."""
    start = max(min(r["submitted"] for r in records if r["user"] == user) for user in users)
    end = float("inf")
    for user in users:
        # The stretch of time around `start` in which the user always has a job pending.
        spans = sorted((r["submitted"], r["finished"]) for r in records if r["user"] == user)
        begun, covered = spans[0]
        for submitted, finished in spans[1:]:
            if submitted > covered:
                if covered >= start:
                    break
                begun = submitted
            covered = max(covered, finished)
        end = min(end, covered if begun <= start else start)
    return start, end


def burst_report(records: list[dict], weights: dict[int, float]) -> dict:
    users = list(dict.fromkeys(r["user"] for r in records))
    start, end = backlogged_window(records, users)
    per_user = {}
    shares = []
    for user in users:
        mine = [r for r in records if r["user"] == user]
        waits = [r["started"] - r["submitted"] for r in mine]
        inside = sum(max(0.0, min(r["finished"], end) - max(r["started"], start)) for r in mine)
        shares.append(inside / weights.get(mine[0]["owner_id"], 1.0))
        per_user[user] = {
            "jobs": len(mine),
            "wait_p50_s": round(percentile(waits, 50), 1),
            "wait_p95_s": round(percentile(waits, 95), 1),
            "gpu_seconds": round(sum(r["gpu_seconds"] for r in mine), 1),
            "gpu_seconds_in_window": round(inside, 1),
        }
    light = [r["started"] - r["submitted"] for r in records if r["user"] != "heavy"]
    heavy = [r["started"] - r["submitted"] for r in records if r["user"] == "heavy"]
    return {
        "per_user": per_user,
        "light_mean_wait_s": round(statistics.fmean(light), 1),
        "heavy_mean_wait_s": round(statistics.fmean(heavy), 1),
        "makespan_s": round(max(r["finished"] for r in records) - min(r["submitted"] for r in records), 1),
        "backlogged_window_s": [round(start, 1), round(end, 1)],
        "jain_in_window": round(jain(shares), 3),
    }


def eta_report(records: list[dict]) -> dict:
    def error(r):
        return abs(r["promised"] - (r["finished"] - r["submitted"])) / (r["finished"] - r["submitted"])

    def overtaken(r):  # by a job submitted after it that started before it
        return any(o["submitted"] > r["submitted"] and o["started"] < r["started"] for o in records)

    kept = [r for r in records if not overtaken(r)]
    waits = [r["started"] - r["submitted"] for r in records]
    start_errors = [abs(r["promised_start"] - (r["started"] - r["submitted"])) for r in records]

    def signed(r):  # > 0: ready later than promised
        return ((r["finished"] - r["submitted"]) - r["promised"]) / (r["finished"] - r["submitted"])

    return {
        **errors_summary([error(r) for r in records]),
        "later_than_promised_share": round(sum(signed(r) > 0 for r in records) / len(records), 3),
        "signed_error_p10_p50_p90_pct": [
            round(percentile([signed(r) for r in records], q) * 100, 1) for q in (10, 50, 90)
        ],
        "overtaken_share": round(1 - len(kept) / len(records), 3),
        "not_overtaken": errors_summary([error(r) for r in kept]),
        "behind_others": errors_summary([error(r) for r in records if r["promised_start"] > 0]),
        "start_error_p50_s": round(percentile(start_errors, 50), 1),
        "wait_p50_s": round(percentile(waits, 50), 1),
        "wait_p95_s": round(percentile(waits, 95), 1),
    }


def child_env(backend: str, policy: str, postgres: str, redis: str, database: str) -> dict[str, str]:
    overrides = {"LOG_LEVEL": "WARNING", "IMAGEGEN_QUEUE_POLICY": policy}
    if backend == "postgres":
        overrides["DATABASE_URL"] = fresh_postgres(postgres, database)
        overrides["REDIS_URL"] = redis
        import redis as redis_client

        redis_client.Redis.from_url(redis).flushdb()
    env = bench_env(**overrides)
    migrate(env)
    setup(env)
    return env


def simulate(backend: str, policy: str, arrivals: int, seed: int, postgres: str, redis: str) -> dict:
    """Parts 1 and 2 on one fresh database, one after the other."""
    child_env(backend, policy, postgres, redis, f"imagegen_bench_fair_sim_{policy}")
    from generation.fairness import gpu_shares
    from generation.models import QueueWeight

    rng = random.Random(seed)
    sim = Simulation(rng)
    (warm,) = users_with_chats(["warmup"])
    sim.run([(n * 1.0, *warm, SHAPES[n % len(SHAPES)]) for n in range(WARMUP)])

    # 1. A heavy user's backlog, then four light users.
    heavy = users_with_chats(["heavy"])[0]
    lights = users_with_chats([f"light{n}" for n in range(1, LIGHT_USERS + 1)])
    begin = sim.clock + 60
    burst = [(begin + n * 0.1, *heavy, HEAVY) for n in range(HEAVY_JOBS)]
    burst += [(begin + 5 + n + job * 0.1, *light, LIGHT) for n, light in enumerate(lights) for job in range(LIGHT_JOBS)]
    burst_records = sim.run(burst)
    weights = dict(QueueWeight.objects.values_list("owner_id", "weight"))
    # The admin's GPU time per user, read over the burst alone, against the simulation's.
    hours = (sim.clock - begin + 1) / 3600
    shown = {row["username"]: row["seconds"] for row in gpu_shares(now=sim.at(sim.clock), hours=hours)}

    # 2. A mixed backlog: Poisson arrivals about as fast as the GPU works.
    mixed_users = users_with_chats([f"user{n}" for n in range(1, ETA_USERS + 1)])
    mean_seconds = statistics.fmean(true_seconds(*shape, random.Random(0)) for shape in SHAPES)
    when, mixed = sim.clock + 60, []
    for _ in range(arrivals):
        when += rng.expovariate(1 / mean_seconds)
        mixed.append((when, *rng.choice(mixed_users), rng.choice(SHAPES)))
    mixed_records = sim.run(mixed)
    return {
        "backend": backend,
        "policy": policy,
        "burst": burst_report(burst_records, weights),
        "admin_gpu_seconds": {user: round(seconds, 1) for user, seconds in shown.items()},
        "burst_eta": eta_report(burst_records),
        "mixed_eta": eta_report(mixed_records),
    }


def claim_cost(backend: str, policy: str, depths: str, measured: int, postgres: str, redis: str) -> dict:
    """Part 3 in real time: claim and complete `measured` jobs on top of each depth."""
    child_env(backend, policy, postgres, redis, f"imagegen_bench_fair_depth_{policy}")
    from generation.models import ImageJob
    from generation.services import job_complete, job_submit, jobs_claim

    users = users_with_chats([f"user{n}" for n in range(20)])
    png = tiny_png()
    shape = {"model": MODEL, "width": 512, "height": 512, "steps": 25}
    rows = []
    submitted = 0
    for depth in sorted(map(int, depths.split(","))):
        started = time.perf_counter()
        prompts = 0
        while (waiting := ImageJob.objects.filter(status="queued").count()) < depth + measured:
            user, chat = users[submitted % len(users)]
            count = min(8, depth + measured - waiting)
            job_submit(user=user, conversation=chat, prompt=f"waiting {submitted}", count=count, **shape)
            submitted, prompts = submitted + 1, prompts + 1
        submit_seconds = time.perf_counter() - started
        claims, completes = [], []
        for _ in range(measured):
            started = time.perf_counter()
            (job,) = jobs_claim(worker="bench", max_batch=1)
            claimed = time.perf_counter()
            job_complete(job_id=job.pk, png=png)
            claims.append(claimed - started)
            completes.append(time.perf_counter() - claimed)
        per_job = [a + b for a, b in zip(claims, completes, strict=True)]
        rows.append(
            {
                "backend": backend,
                "policy": policy,
                "depth": depth,
                "claim_ms_p50": round(statistics.median(claims) * 1000, 2),
                "claim_ms_p95": round(percentile(claims, 95) * 1000, 2),
                "per_job_ms_p50": round(statistics.median(per_job) * 1000, 2),
                "per_job_ms_p95": round(percentile(per_job, 95) * 1000, 2),
                "prompts_submitted_per_second": round(prompts / submit_seconds, 1) if prompts else None,
            }
        )
    return {"rows": rows}


def child(
    part: str,
    backend: str,
    policy: str,
    depths: str,
    measured: int,
    arrivals: int,
    seed: int,
    postgres: str,
    redis: str,
) -> dict:
    if part == "simulate":
        return simulate(backend, policy, arrivals, seed, postgres, redis)
    return claim_cost(backend, policy, depths, measured, postgres, redis)


def print_tables(sims: list[dict], costs: list[dict]) -> None:
    for sim in sims:
        print(f"\n{sim['backend']}, {sim['policy']}: burst")
        print(f"  {'user':8} {'jobs':>4} {'wait p50':>9} {'wait p95':>9} {'GPU s':>7}")
        for user, row in sim["burst"]["per_user"].items():
            print(
                f"  {user:8} {row['jobs']:>4} {row['wait_p50_s']:>8.1f}s {row['wait_p95_s']:>8.1f}s"
                f" {row['gpu_seconds']:>7.1f}"
            )
    print(
        f"\n{'backend':9} {'policy':6} {'light wait':>10} {'heavy wait':>10} {'Jain':>6} {'window':>13}"
        f" {'ETA burst p50/p90':>18} {'ETA mixed p50/p90':>18}"
    )
    for sim in sims:
        burst, b_eta, m_eta = sim["burst"], sim["burst_eta"], sim["mixed_eta"]
        window = "{:.0f}-{:.0f}s".format(*burst["backlogged_window_s"])
        print(
            f"{sim['backend']:9} {sim['policy']:6}"
            f" {burst['light_mean_wait_s']:>9.1f}s {burst['heavy_mean_wait_s']:>9.1f}s"
            f" {burst['jain_in_window']:>6.3f} {window:>13}"
            f" {b_eta['p50_pct']:>8.1f}/{b_eta['p90_pct']:.1f} %"
            f" {m_eta['p50_pct']:>8.1f}/{m_eta['p90_pct']:.1f} %"
        )
    print(f"\n{'backend':9} {'policy':6} {'depth':>5} {'claim p50':>10} {'claim+complete p50':>19} {'p95':>8}")
    for row in costs:
        print(
            f"{row['backend']:9} {row['policy']:6} {row['depth']:>5} {row['claim_ms_p50']:>8.2f}ms"
            f" {row['per_job_ms_p50']:>17.2f}ms {row['per_job_ms_p95']:>6.2f}ms"
        )


def main() -> None:
    if child_main(child, str, str, str, str, int, int, int, str, str):
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="fifo,fair")
    parser.add_argument("--backends", default="embedded")
    parser.add_argument("--depths", default="20,2000")
    parser.add_argument("--measured", type=int, default=40)
    parser.add_argument("--arrivals", type=int, default=60, help="jobs of the mixed backlog")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()

    started = time.monotonic()
    sims, costs = [], []
    for backend in args.backends.split(","):
        for policy in args.policies.split(","):
            common = (backend, policy, args.depths, args.measured, args.arrivals, args.seed, args.postgres, args.redis)
            sims.append(in_child(__file__, f"{backend} {policy} simulation", "simulate", *common))
            costs += in_child(__file__, f"{backend} {policy} claim cost", "claim", *common)["rows"]
    print_tables(sims, costs)
    ratios = {}
    for row in costs:
        group = [r for r in costs if (r["backend"], r["policy"]) == (row["backend"], row["policy"])]
        deep, shallow = max(group, key=lambda r: r["depth"]), min(group, key=lambda r: r["depth"])
        ratios[f"{row['backend']} {row['policy']}"] = {
            "claim": round(deep["claim_ms_p50"] / shallow["claim_ms_p50"], 3),
            "claim_and_complete": round(deep["per_job_ms_p50"] / shallow["per_job_ms_p50"], 3),
        }
    print("\ndeepest over shallowest, p50:", ratios)
    result = {
        "command": "bench/fairness.py " + " ".join(sys.argv[1:]),
        "machine_note": "2-core VM, shared with other work; PostgreSQL and Redis on the same machine",
        "cost_model": {
            "seconds_per_step_at_512x512": COST_PER_STEP,
            "scaling": "linear in pixels",
            "noise_sd": NOISE,
            "shapes": SHAPES,
            "warmup_jobs": WARMUP,
        },
        "burst": {"heavy": [HEAVY_JOBS, HEAVY], "light": [LIGHT_USERS, LIGHT_JOBS, LIGHT]},
        "simulations": sims,
        "claim_cost": costs,
        "claim_cost_deepest_over_shallowest": ratios,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print(f"written to {write_result('fairness', result).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
