"""GPU worker processes: their names, registration and beats.

A worker is a row (`generation.models.Worker`) that its process keeps beating
(`generation.heartbeat`). That row and its beat are the one way a dead worker is
told: a job whose worker stopped beating goes back to its place in the queue
(`generation.services.jobs_requeue_from_dead_workers`), wherever it ran.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path

from django.utils import timezone

from generation.models import ImageJob, Worker


def worker_name() -> str:
    """What a job records as its worker, and what its worker row is called: "host:pid"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_register(*, name: str, device: str, max_batch: int = 1, now: datetime | None = None) -> Worker:
    """Record a worker process as started (a restarted pid on the same host starts afresh)."""
    now = now or timezone.now()
    host, _, pid = name.rpartition(":")
    worker, _ = Worker.objects.update_or_create(
        name=name,
        defaults={
            "host": host,
            "pid": int(pid),
            "device": device,
            "max_batch": max_batch,
            "started_at": now,
            "last_seen_at": now,
            "stopping": False,
        },
    )
    return worker


def worker_beat(
    *,
    name: str,
    device: str,
    max_batch: int = 1,
    loading_job_ids: list[int] | None = None,
    stopping: bool = False,
    model_state: dict | None = None,
    now: datetime | None = None,
) -> None:
    """A worker is alive (and maybe stopping); the jobs whose model it is loading are too.

    `model_state` holds the Worker fields that say what it has loaded (`model_state()`).
    """
    now = now or timezone.now()
    changes = {"last_seen_at": now, "device": device, "max_batch": max_batch, "stopping": stopping}
    changes.update(model_state or {})
    if not Worker.objects.filter(name=name).update(**changes):
        worker_register(name=name, device=device, max_batch=max_batch, now=now)  # its row was pruned meanwhile
    if loading_job_ids:
        ImageJob.objects.filter(pk__in=loading_job_ids, status=ImageJob.Status.PROCESSING, worker=name).update(
            heartbeat_at=now
        )


# Model -> what this process's warm-up measured of it (`generation.worker.warm_up`): its
# row says so at every beat, so a row made again (pruned, or emptied by a test) keeps it.
_warm_ups: dict[str, dict] = {}


def worker_record_warmup(*, name: str, model: str, measured: dict, generator=None) -> None:
    """Keep what the warm-up passes measured of `model` on the worker's row (the ETA's
    default for the model), with what its generator holds now."""
    _warm_ups[model] = measured
    changes = model_state(generator) if generator is not None else {"warmup": dict(_warm_ups)}
    Worker.objects.filter(name=name).update(**changes)


def model_state(generator) -> dict:
    """What a worker's generator holds, as its Worker row keeps it (a generator that
    keeps no model, as the benchmarks' stand-in, holds nothing)."""
    speed = getattr(generator, "speed", None)
    memory = generator.memory() if hasattr(generator, "memory") else {}
    measured = {"warmup": dict(_warm_ups)} if _warm_ups else {}
    return {
        **measured,
        "loaded_model": getattr(generator, "loaded_model", None) or "",
        "gpu_memory": memory.get("reserved"),
        "load_seconds": {name: round(seconds, 2) for name, seconds in getattr(generator, "load_seconds", {}).items()},
        "speed": (
            f"{speed.graphs} graphs compiled in {speed.compile_seconds:.1f} s for passes of "
            + ", ".join(f"{n}×{w}×{h}" for n, w, h in sorted(speed.shapes))
            if speed is not None
            else ""
        )[:300],
        "compiled_in_jobs": getattr(generator, "compiled_in_passes", 0),
    }


def process_is_gone(host: str, pid: int) -> bool:
    """True when `pid` names a process on `host` (this machine) that no longer runs.

    Used for the worker rows of this host: a worker killed here is dead at once,
    without waiting for its beat to go stale.
    """
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A killed process whose parent died too can stay a zombie when nothing reaps it
    # (pid 1 in many containers): it still answers kill(0) but runs nothing.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}
