import io
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.utils import timezone
from PIL import Image

from generation.models import ImageJob
from tests.conftest import make_user
from tests.fakes import FakeGenerator
from tests.helpers import run_pass

COMMANDS = ["generate", "queue", "expire_stuck_jobs", "retry_failed", "build_demo_model", "model_pull", "api_key"]


def _run(*args, **options) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_explains_itself(name):
    parser = load_command_class("generation", name).create_parser("manage.py", name)
    assert len(parser.format_help()) > 100


@pytest.mark.django_db(transaction=True)
def test_generate_waits_with_a_progress_bar_and_prints_the_image_path(sync_q, monkeypatch, alice):
    generator = FakeGenerator()
    monkeypatch.setattr("generation.worker.get_generator", lambda: generator)

    out = _run("generate", "a comet over a lake", "--user", "alice", "--size", "128x96", "--steps", "4", "--wait")

    job = ImageJob.objects.get()
    assert (job.owner, job.width, job.height, job.steps) == (alice, 128, 96, 4)
    assert job.conversation.title == "Command line"
    assert out.strip().splitlines()[-1] == job.image.path
    assert Path(job.image.path).exists()


def test_generate_waiting_in_the_queue_shows_its_position_and_no_log_lines(
    alice, bob_chat, submit, caplog, monkeypatch
):
    monkeypatch.setattr(logging.getLogger("django-q"), "level", logging.NOTSET)
    caplog.set_level(logging.INFO)
    submit("somebody else's first", conversation=bob_chat)
    out = io.StringIO()
    with pytest.raises(CommandError, match="stays queued"):
        call_command("generate", "mine", "--user", "alice", "--wait", "--pickup-timeout", "1.2", stdout=out)
    assert "Queued: position 2, starts in" in out.getvalue()
    assert [record.getMessage() for record in caplog.records if record.name.startswith("django-q")] == []


def test_generate_without_a_worker_gives_up_clearly_and_leaves_the_job_queued(alice):
    with pytest.raises(CommandError, match="No worker started job .* within 0.5 s; it stays queued"):
        _run("generate", "nobody home", "--user", "alice", "--wait", "--pickup-timeout", "0.5")
    assert ImageJob.objects.get().status == "queued"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--size", "huge"], "--size must look like 512x512"),
        (["--size", "100x100"], "width: Width: 64-1024, a multiple of 8."),
        (["--steps", "0"], "steps: Steps: 1-100."),
        (["--model", "sdxl"], "model: Model: choose one from the list."),
        (["--user", "nobody"], "No user named 'nobody'"),
        (["--image", "/nonexistent.png"], "Cannot read /nonexistent.png"),
        (["--mask", "m.png"], "--mask, --strength and --upscale need --image"),
        (["--image", __file__], "--image: not an image that can be read"),
    ],
)
def test_generate_refuses_bad_input_with_a_clear_message(alice, args, message):
    with pytest.raises(CommandError, match=message):
        _run("generate", "x", *(args if "--user" in args else ["--user", "alice", *args]))
    assert not ImageJob.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_generate_edits_an_image_file_with_a_mask_and_a_strength(sync_q, monkeypatch, alice, tmp_path):
    generator = FakeGenerator()
    monkeypatch.setattr("generation.worker.get_generator", lambda: generator)
    Image.new("RGB", (96, 64), (10, 120, 200)).save(tmp_path / "photo.jpg")
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 48, 64))
    mask.save(tmp_path / "mask.png")

    out = _run(
        "generate", "a boat", "--user", "alice", "--image", str(tmp_path / "photo.jpg"),
        "--mask", str(tmp_path / "mask.png"), "--strength", "0.5", "--wait",
    )  # fmt: skip

    job = ImageJob.objects.get()
    assert (job.kind, job.strength, job.width, job.height) == ("inpaint", 0.5, 96, 64)
    with Image.open(job.mask_image.path) as stored:
        assert stored.getpixel((10, 10)) == 255 and stored.getpixel((80, 10)) == 0
    assert out.strip().splitlines()[-1] == job.image.path


def test_generate_uses_the_only_superuser_by_default(db):
    root = make_user("root")
    root.is_superuser = True
    root.save()
    _run("generate", "for root")
    assert ImageJob.objects.get().owner == root


def test_queue_prints_positions_and_etas_in_order(submit, bob_chat, runner_for):
    submit("done first")
    run_pass(runner_for(FakeGenerator()))
    submit("alice waits", steps=20, width=512, height=512)
    submit("bob waits", conversation=bob_chat)
    workers, *lines = _run("queue").splitlines()
    assert workers == "Live workers: 0"
    assert "Queue policy: fifo (first come, first served)" in lines
    lines = lines[lines.index("Queue policy: fifo (first come, first served)") + 1 :]
    assert lines[0].split()[:3] == ["POS", "JOB", "USER"]
    assert lines[1].split()[0:3][0] == "1" and "alice" in lines[1] and "alice waits" in lines[1]
    assert lines[2].split()[0] == "2" and "bob" in lines[2]


def test_queue_says_when_it_is_empty(db):
    assert "The queue is empty." in _run("queue")


def test_retry_failed_requeues_recent_failures(transactional_db, submit):
    from generation.worker import JobRunner

    job = submit("flaky")
    run_pass(JobRunner(FakeGenerator(failures=[RuntimeError("x")])))  # on the real clock
    assert "Would retry job" in _run("retry_failed", "--dry-run")
    assert ImageJob.objects.get(pk=job.pk).status == "error"
    assert "Retried 1 failed job(s)" in _run("retry_failed", "--minutes", "5")
    assert ImageJob.objects.get(pk=job.pk).status == "queued"


def test_build_demo_model_reports_where_it_is(settings, tmp_path):
    settings.IMAGEGEN_MODEL_CACHE = tmp_path
    out = _run("build_demo_model")
    assert "demo model ready in" in out
    assert (tmp_path / "demo-v1" / "model_index.json").exists()


def test_queue_shows_the_fair_order_the_policy_and_each_users_gpu_time(settings, submit, bob_chat):
    settings.IMAGEGEN_QUEUE_POLICY = "fair"
    alices = [submit(f"alice {n}", steps=20) for n in range(3)]
    ImageJob.objects.filter(pk=alices[0].pk).update(
        status="complete", started_at=timezone.now() - timedelta(seconds=6), finished_at=timezone.now()
    )
    submit("bob waits", conversation=bob_chat)
    output = _run("queue")
    assert "GPU time over the last hour: alice 100% (6 s, weight 1)" in output
    assert "Queue policy: fair (fair shares of GPU time)" in output
    rows = output.split("Queue policy: fair (fair shares of GPU time)\n", 1)[1].splitlines()[1:]
    # Alice's first had its turn: bob's one job comes before her second.
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    assert "bob waits" in rows[0] and "alice 1" in rows[1] and "alice 2" in rows[2]
