"""Where image files live, and how they become a job's file.

A finished PNG is first written under a temporary name in `images/incoming/`; it takes
its final name, which depends only on the job (`images/jobs/<id/1000>/job-<id>.png`),
inside the transaction that completes the job. So a crash before that transaction
leaves only an incoming file (removed by the sweep), and a job run again after a crash
overwrites its own name instead of adding `job-N_<random>.png` beside it.
Files are on the local disk (FileSystemStorage): the rename is what makes this atomic.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import Storage

IMAGES_DIR = "images"
INCOMING_DIR = f"{IMAGES_DIR}/incoming"
INCOMING_SUFFIX = ".part"
SWEEP_BATCH = 500


def disk_nearly_full() -> bool:
    """Whether the images' disk has less free space than IMAGEGEN_MIN_FREE_DISK_MB (a statvfs)."""
    from django.conf import settings

    minimum = settings.IMAGEGEN_MIN_FREE_DISK_MB * 2**20
    if not minimum:
        return False
    folder = Path(settings.MEDIA_ROOT)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free < minimum


def storage() -> Storage:
    from generation.models import ImageJob

    return ImageJob._meta.get_field("image").storage


def final_name(job_id: int, part: str = "") -> str:
    """A job's image; with `part` ("source", "mask") an edit's own copy of its input."""
    suffix = f"-{part}" if part else ""
    return f"{IMAGES_DIR}/jobs/{job_id // 1000:05d}/job-{job_id}{suffix}.png"


EDIT_PARTS = ("source", "mask")


def write_part(job_id: int, part: str, png: bytes) -> str:
    """Store an edit's source or mask under its job's name (whole, or not at all); returns the name."""
    store = storage()
    name = final_name(job_id, part)
    target = Path(store.path(name))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{secrets.token_hex(4)}{INCOMING_SUFFIX}")
    try:
        partial.write_bytes(png)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return name


def open_image(name: str):
    """A stored image, read whole (the file is closed when this returns)."""
    from PIL import Image

    with storage().open(name, "rb") as file:
        image = Image.open(file)
        image.load()
    return image


def write_incoming(job_id: int, png: bytes) -> str:
    """Write a finished PNG under a temporary name; returns that name. A write that
    fails (a full disk) leaves no partial file behind."""
    name = f"{INCOMING_DIR}/job-{job_id}-{secrets.token_hex(6)}{INCOMING_SUFFIX}"
    try:
        return storage().save(name, ContentFile(png))
    except OSError:
        discard(name)
        raise


def place(incoming: str, job_id: int) -> str:
    """Give an incoming file the job's final name (replacing a leftover); returns that name."""
    store = storage()
    name = final_name(job_id)
    target = Path(store.path(name))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(store.path(incoming), target)
    return name


def discard(name: str) -> None:
    try:
        storage().delete(name)
    except OSError:
        pass  # already gone: nothing to do


def delete_job_files(*, job_ids: Iterable[int], names: Iterable[str] = ()) -> None:
    """Remove every file of these jobs: their recorded names, their final names, incoming ones."""
    store = storage()
    incoming = Path(store.path(INCOMING_DIR))
    for name in names:
        if name:
            discard(name)
    for job_id in job_ids:
        discard(final_name(job_id))
        for part in EDIT_PARTS:
            discard(final_name(job_id, part))
        if incoming.is_dir():
            for path in incoming.glob(f"job-{job_id}-*{INCOMING_SUFFIX}"):
                path.unlink(missing_ok=True)


def remove_orphans(*, older_than: datetime) -> list[str]:
    """Delete image files that no job owns and that were last written before `older_than`.

    The age keeps the sweep away from a file whose job is being completed right now
    (an incoming file, or a final one whose transaction has not committed yet).
    Returns the names removed.
    """
    from generation.models import ImageJob

    store = storage()
    root = Path(store.path(IMAGES_DIR))
    if not root.is_dir():
        return []
    media = Path(store.path(""))
    cutoff = older_than.timestamp()
    old = [
        path.relative_to(media).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.stat().st_mtime < cutoff
    ]
    removed = []
    for start in range(0, len(old), SWEEP_BATCH):
        batch = old[start : start + SWEEP_BATCH]
        owned = set()
        for field in ("image", "source_image", "mask_image"):
            owned.update(ImageJob.objects.filter(**{f"{field}__in": batch}).values_list(field, flat=True))
        for name in batch:
            if name not in owned:
                discard(name)
                removed.append(name)
    return removed
