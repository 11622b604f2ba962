"""The GPU worker's bookkeeping thread: it writes while the device makes images.

The device's thread only claims and generates. Everything that waits on a database,
a channel layer or a PNG encoder (progress, live previews, storing and completing
each image) is posted here and done on this thread, so the device never waits on
bookkeeping.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime

from django.db import connection

from generation import heartbeat, services, texts
from generation.models import ImageJob
from generation.outages import DATABASE, DISK, OUTAGES, drop_broken_connections, retry_while_down
from generation.pipeline import infotext, latents_preview
from generation.png import encode_png
from generation.registry import get_loras, model_family
from generation.request import GenerationRequest

logger = logging.getLogger(__name__)

FINISHED_BACKLOG = 2  # passes' images waiting to be recorded before the device waits for the bookkeeper
DISK_PATIENCE = 30.0  # seconds an image waits for a full disk before its job goes back to the queue


def copy_to_host(latents) -> tuple:
    """Start copying `latents` to the host without waiting for the device.

    Returns the host tensor and, on CUDA, an event that marks the copy's end: waiting
    on the copy in the step callback would stall the launch queue every preview.
    """
    import torch

    if not latents.is_cuda:
        return latents.detach().float().clone(), None
    host = torch.empty(latents.shape, dtype=latents.dtype, pin_memory=True)
    host.copy_(latents.detach(), non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied


def send_preview(job: ImageJob, step: int, latents) -> None:
    buffer = io.BytesIO()
    preview = latents_preview(latents, family=model_family(job.model), width=job.width, height=job.height)
    preview.save(buffer, format="JPEG", quality=70)
    data_url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    services.job_preview(job=job, step=step, image_data_url=data_url)


def record_image(
    job: ImageJob, image, request: GenerationRequest, *, now: datetime, stopped_at: int | None = None
) -> None:
    """Encode and store the image, complete the job, and tell the breaker. `stopped_at`:
    the step the job was interrupted at (its image is the one of that step)."""
    parameters = infotext(request, model_family(request.model), get_loras(), stopped_at=stopped_at)
    png = encode_png(image, parameters=parameters)
    stopped = (stopped_at, request.denoise_steps) if stopped_at is not None else None
    if services.job_complete(job_id=job.pk, png=png, now=now, stopped_at=stopped) is None:
        services.breaker_release_trial()  # cancelled meanwhile: no verdict
    else:
        services.breaker_record_success()


class Bookkeeper:
    """A thread that does the writing while the device makes images.

    Progress for a job coalesces: when the device is ahead, only the newest state is
    written (a persisted one if any of those it replaces was), and none once the
    job's image is waiting to be recorded. A cancel is noticed from the last progress
    write (its compare-and-set finds the job no longer processing), and so is an
    interrupt (the job is still processing, asked to stop). Finished images
    wait in a bounded backlog, so a device faster than the bookkeeper waits for it
    instead of holding many images in memory. Leaving the `with` block waits until
    everything is written. A failure to record an image fails that job alone; an
    outage of the database or the disk does not: the image waits for them.
    """

    def __init__(self, *, now: Callable[[], datetime], max_batch: int):
        self.now = now
        self._items: deque[tuple[str, ImageJob, dict]] = deque()
        self._changed = threading.Condition()
        self._active = 0
        self._finishing = 0
        self._closing = False
        self._cancelled: set[int] = set()
        self._interrupted: set[int] = set()
        self._backlog = FINISHED_BACKLOG * max_batch  # images of whole passes
        self._thread = threading.Thread(target=self._loop, name="bookkeeper", daemon=True)

    def __enter__(self) -> Bookkeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()

    @property
    def busy(self) -> bool:
        with self._changed:
            return bool(self._items or self._active)

    def wait_idle(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: not self._items and not self._active)

    def cancelled(self, job_id: int) -> bool:
        with self._changed:
            return job_id in self._cancelled

    def interrupted(self, job_id: int) -> bool:
        """An A1111 client asked the job to stop and keep its image (see `job_interrupt`)."""
        with self._changed:
            return job_id in self._interrupted

    def progress(self, job: ImageJob, *, step: int, total: int, persist: bool, push: bool, now: datetime) -> None:
        fields = {"step": step, "total": total, "persist": persist, "push": push, "now": now}
        with self._changed:
            waiting = next(
                (
                    index
                    for index, (kind, other, _) in enumerate(self._items)
                    if kind == "progress" and other.pk == job.pk
                ),
                None,
            )
            if waiting is not None:
                last = self._items[waiting][2]
                fields["persist"] = persist or last["persist"]
                fields["push"] = push or last["push"]
                self._items[waiting] = ("progress", job, fields)
            else:
                self._items.append(("progress", job, fields))
            self._changed.notify_all()

    def preview(self, rows: list[tuple[ImageJob, int]], step: int, latents) -> None:
        """Previews of a pass's jobs: `rows` pairs each job with its row in `latents`.

        Only a copy off the device is started here; this thread waits for it and
        makes the pictures.
        """
        host, copied = copy_to_host(latents)
        with self._changed:
            if not any(kind == "preview" for kind, *_ in self._items):  # a late preview is no use
                self._items.append(
                    ("preview", rows[0][0], {"rows": rows, "step": step, "latents": host, "copied": copied})
                )
                self._changed.notify_all()

    def finish(self, job: ImageJob, image, request: GenerationRequest, *, stopped_at: int | None = None) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._finishing < self._backlog)
            self._finishing += 1
            # Its completion says more than any progress still waiting to be written.
            for item in [item for item in self._items if item[0] == "progress" and item[1].pk == job.pk]:
                self._items.remove(item)
            self._items.append(("finish", job, {"image": image, "request": request, "stopped_at": stopped_at}))
            self._changed.notify_all()

    def _loop(self) -> None:
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._items or self._closing)
                    if not self._items:
                        return
                    kind, job, fields = self._items.popleft()
                    self._active += 1
                try:
                    self._write(kind, job, fields)
                finally:
                    with self._changed:
                        self._active -= 1
                        if kind == "finish":
                            self._finishing -= 1
                        self._changed.notify_all()
        finally:
            connection.close()  # this thread's own database connection

    def _give_up_waiting(self) -> Callable[[], bool]:
        """When an image stops waiting to be stored: the worker is told to stop, or the
        disk has been full for DISK_PATIENCE seconds (its job then goes back to its
        place; the worker claims nothing while the disk is nearly full). For the
        database it waits on, within the task's time."""
        started = time.monotonic()
        return lambda: heartbeat.stop_requested() or (OUTAGES.down(DISK) and time.monotonic() - started > DISK_PATIENCE)

    def _write(self, kind: str, job: ImageJob, fields: dict) -> None:
        try:
            if kind == "progress":
                state = services.job_progress(job=job, **fields)
                if state != services.RUNNING:
                    with self._changed:
                        (self._interrupted if state == services.INTERRUPTED else self._cancelled).add(job.pk)
            elif kind == "preview":
                if fields["copied"] is not None:
                    fields["copied"].synchronize()
                latents = fields["latents"].float()
                for each, row in fields["rows"]:
                    send_preview(each, fields["step"], latents[row : row + 1])
            else:
                # A made image is kept through an outage of the database or the disk,
                # and its job completed once they answer.
                with heartbeat.keep_alive([job.pk]):
                    retry_while_down(
                        lambda: record_image(
                            job, fields["image"], fields["request"], now=self.now(), stopped_at=fields["stopped_at"]
                        ),
                        doing=f"recording the image of job {job.pk}",
                        give_up=self._give_up_waiting(),
                    )
            if kind != "preview":
                OUTAGES.answered(DATABASE)
        except Exception as exc:
            outage = OUTAGES.failed(exc, doing=f"writing the {kind} of job {job.pk}")
            if outage is not None:
                # Progress and previews are only skipped: the next ones say more. An
                # image not recorded when told to stop leaves its job to the queue.
                drop_broken_connections()
                if kind == "finish" and outage == DISK:
                    try:
                        services.job_hand_back(job_id=job.pk)
                    except Exception:
                        logger.exception("Could not hand job %s back; the queue's guards will", job.pk)
                return
            logger.exception("Could not record the %s of job %s", kind, job.pk)
            if kind == "finish":
                try:
                    services.job_fail(job_id=job.pk, error=texts.FAILED_ERROR, detail=f"{type(exc).__name__}: {exc}")
                except Exception:
                    logger.exception("Could not fail job %s either; the guard will", job.pk)
