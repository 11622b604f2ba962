import time

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from chat.models import Message
from generation import services
from generation.models import ImageJob
from generation.registry import get_generator
from tests.helpers import start_cluster, stop, wait_for


class Observed:
    """The real demo generator, with a look at the database after every step."""

    def __init__(self, inner):
        self.inner = inner
        self.device = inner.device
        self.seen: list[tuple[int, int, int]] = []  # (step, job progress, message progress)

    def load(self, name):
        return self.inner.load(name)

    def needs_download(self, name):
        return self.inner.needs_download(name)

    def generate_batch(self, requests, on_step=None):
        def watching(step, total, latents):
            on_step(step, total, latents)
            # The worker writes on a thread of its own: wait (bounded) for this step to show.
            expected = step * 100 // total
            deadline = time.monotonic() + 10
            job = ImageJob.objects.select_related("message").get(status="processing")
            while job.progress < expected and time.monotonic() < deadline:
                time.sleep(0.01)
                job = ImageJob.objects.select_related("message").get(status="processing")
            self.seen.append((step, job.progress, job.message.metadata["progress"]))

        return self.inner.generate_batch(requests, watching)


def _submit(user, conversation, **params):
    params = {"steps": 10, "width": 128, "height": 128, "seed": 5, **params}
    return services.job_submit(user=user, conversation=conversation, prompt="a lighthouse at dusk", **params).jobs[0]


@pytest.mark.django_db(transaction=True)
def test_a_job_runs_end_to_end_with_the_demo_model_through_the_task_path(sync_q, monkeypatch, alice, alice_chat):
    observed = Observed(get_generator())
    monkeypatch.setattr("generation.worker.get_generator", lambda: observed)

    job = _submit(alice, alice_chat, negative_prompt="blurry")

    job.refresh_from_db()
    assert job.status == "complete", job.error_detail
    assert (job.progress, job.attempts) == (100, 1)
    assert job.started_at <= job.heartbeat_at <= job.finished_at
    message = Message.objects.get(pk=job.message_id)
    assert message.content == "Your image is ready."
    assert message.metadata["status"] == "complete"
    assert message.metadata["progress"] == 100
    assert message.metadata["image_url"] == reverse("generation:job_image", args=[job.pk])
    assert message.metadata["job_id"] == job.pk
    assert message.metadata["started_at"] and message.metadata["finished_at"]
    assert message.metadata["queue_position"] is None

    # Progress was persisted along the way, at least at every 10 %.
    persisted = [job_progress for _, job_progress, _ in observed.seen]
    assert persisted == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert [message_progress for *_, message_progress in observed.seen] == persisted

    with Image.open(job.image.path) as png:
        assert png.format == "PNG" and png.size == (128, 128)
        assert png.info["parameters"] == (
            "a lighthouse at dusk\nNegative prompt: blurry\n"
            "Steps: 10, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 128x128, Model: demo"
        )
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.std() > 1, "a real render, not a flat placeholder"


@pytest.mark.django_db(transaction=True)
def test_the_pipeline_stays_loaded_and_the_same_seed_gives_the_same_image(sync_q, monkeypatch, alice, alice_chat):
    generator = get_generator()
    loads_before = generator.loads
    first = _submit(alice, alice_chat, steps=4)
    second = _submit(alice, alice_chat, steps=4)
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == second.status == "complete"
    assert generator.loads - loads_before <= 1
    with Image.open(first.image.path) as a, Image.open(second.image.path) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.django_db(transaction=True)
def test_a_real_gpu_cluster_process_runs_the_queue_in_order(alice, alice_chat, bob, bob_chat, tmp_path):
    jobs = [
        _submit(alice, alice_chat, steps=3, width=64, height=64),
        _submit(bob, bob_chat, steps=3, width=64, height=64),
        _submit(alice, alice_chat, steps=3, width=64, height=64),
    ]
    cluster = start_cluster("gpu", tmp_path, tmp_path / "gpu.log")
    try:
        wait_for(
            lambda: ImageJob.objects.filter(status="complete").count() == 3,
            timeout=180,
            message="three jobs completed by the gpu cluster",
        )
    except AssertionError:
        print((tmp_path / "gpu.log").read_text()[-4000:])
        raise
    finally:
        stop(cluster)
    done = list(ImageJob.objects.order_by("started_at"))
    assert [job.pk for job in done] == [job.pk for job in jobs]
    assert all(job.attempts == 1 and job.image for job in done)
    assert (tmp_path / "media" / done[0].image.name).exists()
