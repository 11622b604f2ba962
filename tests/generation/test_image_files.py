"""An image becomes its job's file in the step that completes the job; nothing stray stays."""

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from generation import files, services
from generation.models import ImageJob
from tests.fakes import FakeGenerator
from tests.helpers import run_pass

PNG = b"\x89PNG\r\n\x1a\nnot really"


def _files(settings) -> set[str]:
    media = Path(settings.MEDIA_ROOT)
    return {path.relative_to(media).as_posix() for path in media.rglob("*") if path.is_file()}


def _crash_in_the_completing_transaction(monkeypatch):
    real = services.message_update

    def failing(message_id, **kwargs):
        if any("image_url" in image for image in (kwargs.get("metadata") or {}).get("images", {}).values()):
            raise RuntimeError("killed before the commit")
        return real(message_id, **kwargs)

    monkeypatch.setattr(services, "message_update", failing)
    return lambda: monkeypatch.setattr(services, "message_update", real)


def test_a_crash_before_the_completion_commits_leaves_no_final_file_and_the_rerun_uses_the_jobs_own_name(
    settings, submit, monkeypatch
):
    job = submit("a kite")
    services.job_claim(worker="gpu-1:1")
    restore = _crash_in_the_completing_transaction(monkeypatch)
    with pytest.raises(RuntimeError):
        services.job_complete(job_id=job.pk, png=PNG)
    restore()
    assert ImageJob.objects.get(pk=job.pk).status == "processing"
    assert _files(settings) == set()

    services.job_requeue_lost(job_id=job.pk, detail="worker died")
    services.job_claim(worker="gpu-2:1")
    services.job_complete(job_id=job.pk, png=PNG)

    job.refresh_from_db()
    assert job.status == "complete"
    assert job.image.name == files.final_name(job.pk) == f"images/jobs/{job.pk // 1000:05d}/job-{job.pk}.png"
    assert _files(settings) == {job.image.name}
    assert job.image.open("rb").read() == PNG


def test_a_rerun_replaces_a_final_file_a_crash_left_after_the_rename(settings, submit):
    job = submit("a kite")
    services.job_claim(worker="gpu-1:1")
    leftover = Path(settings.MEDIA_ROOT) / files.final_name(job.pk)
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"from the crashed run")

    services.job_complete(job_id=job.pk, png=PNG)

    assert _files(settings) == {files.final_name(job.pk)}
    assert leftover.read_bytes() == PNG


def test_a_job_cancelled_while_its_image_was_written_leaves_no_file(settings, submit):
    job = submit("a kite")
    services.job_claim(worker="gpu-1:1")
    services.job_cancel(job=job)
    assert services.job_complete(job_id=job.pk, png=PNG) is None
    assert _files(settings) == set()


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_the_sweep_removes_old_files_no_job_owns_and_keeps_the_rest(settings, submit, runner_for):
    owned = submit("owned")
    run_pass(runner_for(FakeGenerator()))
    owned.refresh_from_db()
    media = Path(settings.MEDIA_ROOT)
    stray_old = media / "images/2026/01/01/job-999_AbCdEf.png"
    stray_new = media / files.final_name(998)
    half_written = media / files.INCOMING_DIR / f"job-997-abc{files.INCOMING_SUFFIX}"
    for path in (stray_old, stray_new, half_written):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    for path in (stray_old, half_written, media / owned.image.name):
        _age(path, 7200)

    removed = files.remove_orphans(older_than=timezone.now() - timedelta(seconds=3600))

    assert len(removed) == 2
    assert _files(settings) == {owned.image.name, files.final_name(998)}


def test_deleting_a_conversation_removes_every_file_of_its_jobs_and_no_one_elses(
    settings, alice_chat, bob_chat, submit, runner_for, django_capture_on_commit_callbacks
):
    finished = submit("done")
    bobs = submit("bob's", conversation=bob_chat)
    run_pass(runner_for(FakeGenerator()))
    run_pass(runner_for(FakeGenerator()))
    crashed = submit("crashed twice")
    media = Path(settings.MEDIA_ROOT)
    for name in (files.final_name(crashed.pk), f"{files.INCOMING_DIR}/job-{crashed.pk}-1a2b{files.INCOMING_SUFFIX}"):
        (media / name).parent.mkdir(parents=True, exist_ok=True)
        (media / name).write_bytes(b"left by a crash")
    bobs.refresh_from_db()
    assert ImageJob.objects.get(pk=finished.pk).image

    with django_capture_on_commit_callbacks(execute=True):
        services.conversation_delete(conversation=alice_chat)

    assert _files(settings) == {bobs.image.name}


def test_files_younger_than_the_safety_age_are_kept_even_without_a_job(settings):
    path = Path(settings.MEDIA_ROOT) / files.final_name(5)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")
    assert files.remove_orphans(older_than=timezone.now() - timedelta(seconds=60)) == []
    assert path.exists()
