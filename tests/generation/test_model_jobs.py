"""Jobs for every model family through the real worker: the PNG, live progress, previews, cancel."""

import base64
import io
import time

import pytest
from django.urls import reverse
from PIL import Image

from chat.models import Message
from generation import events, services, worker
from generation.models import ImageJob
from generation.registry import get_generator, model_limits
from generation.selectors import duration_estimator
from tests.fakes import FakeGenerator
from tests.helpers import run_pass, wait_for

FAMILY_INFOTEXT = {
    "demo": "CFG scale: 4.5",
    "tiny-sdxl": "CFG scale: 4.5",
    "tiny-sd3": "CFG scale: 4.5",
    "tiny-flux": "CFG scale: 1, Distilled CFG Scale: 4.5",
}


@pytest.fixture
def sent(monkeypatch):
    """The events that went out, after their commits, as the browsers get them."""
    seen = []
    monkeypatch.setattr(events, "_send_many", lambda messages: seen.extend(event for _, event in messages))
    return seen


@pytest.fixture
def tiny(registered, tiny_models):
    return registered(**{name: path for name, path in tiny_models.items() if name != "demo"})


def _submit(user, conversation, model, **params):
    params = {"steps": 2, "width": 64, "height": 64, "seed": 7, "guidance": 4.5, **params}
    return services.job_submit(user=user, conversation=conversation, prompt="a lighthouse", model=model, **params).jobs[
        0
    ]


class StepByStep:
    """The real generator, waiting after each step until the worker has written it.

    The worker drops progress still unwritten when the image is done (the completion
    says more); waiting makes every step's progress observable.
    """

    def __init__(self, inner):
        self.inner = inner
        self.device = inner.device

    def load(self, name):
        return self.inner.load(name)

    def needs_download(self, name):
        return self.inner.needs_download(name)

    def generate_batch(self, requests, on_step=None):
        def waiting(step, total, latents):
            on_step(step, total, latents)
            wait_for(
                lambda: ImageJob.objects.filter(status="processing", progress__gte=step * 100 // total).exists(),
                timeout=10,
                interval=0.01,
                message=f"step {step} written",
            )

        return self.inner.generate_batch(requests, waiting)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", list(FAMILY_INFOTEXT))
def test_a_job_of_each_family_makes_a_png_with_progress_and_a_preview(
    model, tiny, sync_q, sent, monkeypatch, alice, alice_chat
):
    stepping = StepByStep(get_generator())
    monkeypatch.setattr("generation.worker.get_generator", lambda: stepping)
    monkeypatch.setattr(worker, "PREVIEW_INTERVAL", 0)  # a preview at every step but the last
    negative = "" if model == "tiny-flux" else "fog"

    job = _submit(alice, alice_chat, model, negative_prompt=negative, steps=3)

    job.refresh_from_db()
    assert job.status == "complete", job.error_detail
    with Image.open(job.image.path) as png:
        assert png.size == (64, 64)
        negative_line = "Negative prompt: fog\n" if negative else ""
        assert png.info["parameters"] == (
            f"a lighthouse\n{negative_line}Steps: 3, Sampler: Euler, {FAMILY_INFOTEXT[model]}, "
            f"Seed: 7, Size: 64x64, Model: {model}"
        )
    mine = [event for event in sent if event.get("job_id") == job.pk]
    steps = [event["step"] for event in mine if event["type"] == "job.progress"]
    assert steps[0] == 0 and 1 in steps and steps[-1] == 3
    previews = [event for event in mine if event["type"] == "job.preview"]
    assert previews, "a live preview was sent"
    data = base64.b64decode(previews[0]["image"].split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "JPEG" and picture.size == (8, 8)
    assert mine[-1]["type"] == "job.complete"


class CancelAtFirstStep:
    """The real generator; the job's owner cancels it as its first step ends."""

    def __init__(self, inner):
        self.inner = inner
        self.device = inner.device
        self.steps: list[int] = []

    def load(self, name):
        return self.inner.load(name)

    def needs_download(self, name):
        return self.inner.needs_download(name)

    def generate_batch(self, requests, on_step=None):
        def cancelling(step, total, latents):
            self.steps.append(step)
            if step == 1:
                services.job_cancel(job=ImageJob.objects.get(status="processing"))
            on_step(step, total, latents)
            if step == 1:
                time.sleep(1)  # the worker notices a cancel from its own next write, on its other thread

        return self.inner.generate_batch(requests, cancelling)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_a_running_job_of_each_family_can_be_cancelled(model, tiny, sync_q, monkeypatch, alice, alice_chat, settings):
    cancelling = CancelAtFirstStep(get_generator())
    monkeypatch.setattr("generation.worker.get_generator", lambda: cancelling)

    job = _submit(alice, alice_chat, model, steps=6)

    job.refresh_from_db()
    assert job.status == "cancelled"
    assert not job.image and not any(settings.MEDIA_ROOT.rglob("*.png"))
    assert len(cancelling.steps) < 6


@pytest.mark.django_db
def test_the_form_takes_each_models_bounds_and_defaults_from_its_family(tiny, alice, alice_chat):
    from django.core.exceptions import ValidationError

    flux = _submit(alice, alice_chat, "tiny-flux", width=None, height=None, steps=None, guidance=None, scheduler="")
    assert (flux.width, flux.height, flux.steps, flux.guidance, flux.scheduler) == (1024, 1024, 28, 3.5, "euler")
    assert model_limits("tiny-sdxl").default_size == 1024
    assert model_limits("demo").max_size == 1024

    with pytest.raises(ValidationError) as refused:
        _submit(alice, alice_chat, "tiny-flux", width=72, negative_prompt="rain")
    assert refused.value.message_dict == {
        "width": ["Width: 64-2048, a multiple of 16."],
        "negative_prompt": ["Negative prompt: Flux.1 models do not use one. Please leave it empty."],
    }
    with pytest.raises(ValidationError) as refused:
        _submit(alice, alice_chat, "tiny-sd3", scheduler="dpmpp_2m")
    assert refused.value.message_dict == {"scheduler": ["Sampler: Stable Diffusion 3 models use Euler, Heun."]}
    assert _submit(alice, alice_chat, "tiny-sdxl", width=72, scheduler="dpmpp_2m").width == 72


class Downloading(FakeGenerator):
    """A generator whose model must be downloaded first: the card is looked at meanwhile."""

    def __init__(self, client):
        super().__init__()
        self.client = client
        self.cards: list[str] = []

    def needs_download(self, name):
        return True

    def load(self, name):
        job = ImageJob.objects.get(status="processing")
        self.cards.append(self.client.get(reverse("generation:job_card", args=[job.pk])).content.decode())


@pytest.mark.django_db(transaction=True)
def test_a_model_being_downloaded_shows_on_the_card_and_goes_out_live(runner_for, submit, sent, client, alice):
    client.force_login(alice)
    job = submit("first image of a new model")
    generator = Downloading(client)

    runner_for(generator).run_queue(budget=60)

    assert "Downloading model…" in generator.cards[0]
    assert "data-downloading" in generator.cards[0]
    assert {"type": "job.downloading", "job_id": job.pk, "model": "demo"} in sent
    job.refresh_from_db()
    assert job.status == "complete"
    assert Message.objects.get(pk=job.message_id).metadata["downloading"] is False


@pytest.mark.django_db
def test_a_model_that_is_not_here_fails_its_job_clearly_and_leaves_the_breaker_closed(
    registered, runner_for, submit, tmp_path, settings
):
    registered(gone=str(tmp_path / "nowhere"))
    from generation.models import CircuitBreaker
    from generation.registry import get_generator as real_generator

    jobs = [submit("needs a missing model", model="gone") for _ in range(settings.IMAGEGEN_BREAKER_THRESHOLD)]
    runner = runner_for(real_generator())
    for _ in jobs:
        run_pass(runner)

    for job in jobs:
        job.refresh_from_db()
        assert job.status == "error"
        assert job.error.startswith("This model is not available on the server yet.")
        assert "'gone'" in job.error_detail and "nowhere" in job.error_detail
    breaker = CircuitBreaker.objects.filter(name=CircuitBreaker.GENERATION).first()
    assert breaker is None or breaker.state == CircuitBreaker.State.CLOSED


@pytest.mark.django_db
def test_the_eta_is_learned_per_model(submit, tiny):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    for model, seconds in (("demo", 2), ("tiny-flux", 20)):
        job = submit(model=model, steps=10, width=64, height=64)
        ImageJob.objects.filter(pk=job.pk).update(
            status="complete", started_at=now - timedelta(seconds=seconds), finished_at=now
        )
    estimate = duration_estimator()
    assert estimate("demo", 64, 64, 10) == pytest.approx(2)
    assert estimate("tiny-flux", 64, 64, 10) == pytest.approx(20)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_jobs_of_a_family_share_a_pass_each_with_its_own_preview_and_image(
    model, tiny, sent, monkeypatch, settings, submit, runner_for
):
    settings.IMAGEGEN_MAX_BATCH = 2
    monkeypatch.setattr(worker, "PREVIEW_INTERVAL", 0)
    jobs = [submit(f"image {seed}", model=model, seed=seed, steps=3) for seed in (1, 2)]

    runner_for(get_generator()).run_queue(budget=60)

    for job in jobs:
        job.refresh_from_db()
        assert (job.status, job.batch_size) == ("complete", 2)
        assert any(e["type"] == "job.preview" and e["job_id"] == job.pk for e in sent)
    with Image.open(jobs[0].image.path) as a, Image.open(jobs[1].image.path) as b:
        assert a.tobytes() != b.tobytes()
