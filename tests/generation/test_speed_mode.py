"""The speed mode and idle unload, through the real worker: the same images as eager in
every family, nothing compiled once the model has loaded, a model freed when idle and
loaded again for the next job (its card says so, its ETA counts the load), and what
the operators see (the worker's row, the admin, `/metrics`, `manage.py queue`)."""

import time

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from chat.models import Message
from generation import events, heartbeat, pipeline, selectors
from generation.models import ImageJob, Worker
from generation.pipeline import DiffusersGenerator
from generation.registry import get_generator
from generation.sources import parse_spec
from tests.helpers import run_pass
from tests.servers import model_only

FAMILIES = ["demo", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-kontext"]


def _pixels(job: ImageJob) -> np.ndarray:
    job.refresh_from_db()
    assert job.status == "complete", job.error_detail
    with Image.open(job.image.path) as png:
        return np.asarray(png.convert("RGB"), dtype=int)


@model_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_speed_mode_makes_the_eager_images_and_compiles_only_while_loading(
    family, registered, tiny_models, sync_q, submit
):
    source = str(tiny_models[family])
    registered(eager=f"{source};eager", fast=f"{source};speed=64")
    params = {"width": 64, "height": 64, "steps": 4, "guidance": 4.0, "seed": 11}

    eager = _pixels(submit("a lighthouse", model="eager", **params))
    fast = _pixels(submit("a lighthouse", model="fast", **params))

    generator = get_generator()
    report = generator.speed
    assert report is not None and report.graphs >= 1, "the denoiser was compiled while the model loaded"
    assert report.shapes == {(1, 64, 64)}
    assert any(step.startswith("compiled") for step in report.steps)
    assert any(step.startswith("fused QKV") for step in report.steps)
    difference = np.abs(eager - fast)
    assert difference.max() <= 2, f"the speed mode's image differs by up to {difference.max()} levels"
    assert difference.mean() < 0.05

    # More jobs of the compiled shape, and one of another: nothing is compiled for them.
    submit("a lighthouse in fog", model="fast", **{**params, "seed": 12})
    submit("a wider lighthouse", model="fast", **{**params, "width": 96})
    assert generator.compiled_in_passes == 0
    assert generator.fast_passes == 2, "the compiled shape ran its compiled code; the other ran eagerly"
    assert generator.loads == 2  # eager, then fast: never a reload


def test_the_speed_option_is_read_with_clear_errors(tiny_models):
    spec = parse_spec("/models/x;speed=1024,832x1216")
    assert (spec.speed, spec.speed_sizes) == (True, ((1024, 1024), (832, 1216)))
    assert parse_spec("/models/x;eager").speed is False
    assert parse_spec("/models/x").speed is None
    for text, message in [
        ("/m;speed;eager", "asks for both speed and eager"),
        ("/m;offload;speed", "asks for both offload and speed"),
        ("/m;speed=100", "multiples of 8"),
        ("/m;speed=64,128,256,512,768", "at most 4"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_spec(text)

    from generation.loading import ModelRegistry

    registry = ModelRegistry(
        {"sd": str(tiny_models["demo"]), "xl": str(tiny_models["tiny-sdxl"]), "mem": f"{tiny_models['demo']};offload"}
    )
    # On by default only on CUDA, where it was measured faster with the same images (SD 1.x).
    assert registry.get("sd").speed("cuda") and not registry.get("sd").speed("cpu")
    assert not registry.get("xl").speed("cuda")
    assert not registry.get("mem").speed("cuda")
    assert not registry.get("demo").speed("cuda"), "the tiny demo model is not worth compiling"


class Watched(DiffusersGenerator):
    """The real generator; while a model loads, the job's card is fetched as a reload would."""

    def __init__(self, *args, client, **kwargs):
        super().__init__(*args, **kwargs)
        self.client = client
        self.cards: list[str] = []

    def load(self, name, **kwargs):
        if self.loaded_model != name:
            job = ImageJob.objects.get(status="processing")
            self.cards.append(self.client.get(reverse("generation:job_card", args=[job.pk])).content.decode())
        return super().load(name, **kwargs)


@pytest.fixture
def slow_disk(monkeypatch):
    """Loading a model takes a second more, as from a slow disk: a load shows in an ETA."""
    real = pipeline.load_pipeline

    def slow(*args, **kwargs):
        time.sleep(1.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_pipeline", slow)


@pytest.fixture
def sent(monkeypatch):
    found = []
    real = events.send_to_user

    def record(user_id, event_type, **fields):
        found.append({"type": event_type, **fields})
        return real(user_id, event_type, **fields)

    monkeypatch.setattr(events, "send_to_user", record)
    return found


@pytest.mark.django_db(transaction=True)
def test_an_idle_worker_frees_its_model_and_the_next_job_loads_it_again_with_its_card_saying_so(
    settings, registered, runner_for, submit, client, alice, slow_disk, sent
):
    registry = registered()
    settings.IMAGEGEN_UNLOAD_AFTER_SECONDS = 1.0
    settings.IMAGEGEN_WORKER_BEAT_SECONDS = 600  # the test beats by hand
    client.force_login(alice)
    generator = Watched(registry, cache_dir=settings.IMAGEGEN_MODEL_CACHE, device="cpu", client=client)
    beat = heartbeat.start(device="cpu", generator=generator)
    try:
        first = submit("the first image")
        run_pass(runner_for(generator))
        assert ImageJob.objects.get(pk=first.pk).status == "complete"
        beat.beat()
        row = Worker.objects.get(name=beat.name)
        assert row.loaded_model == "demo" and row.load_seconds["demo"] >= 1.2

        waiting = submit("queued while idle")
        time.sleep(1.1)
        assert not beat.unload_when_idle(), "a queued job keeps the model loaded"
        run_pass(runner_for(generator))
        assert generator.loaded_model == "demo"

        assert not beat.unload_when_idle(), "the drain just ended: not idle long enough"
        time.sleep(1.1)
        assert beat.unload_when_idle()
        assert generator.loaded_model is None and generator.unloads == 1
        beat.beat()
        assert Worker.objects.get(name=beat.name).loaded_model == ""

        # The next job's ETA counts the load; its card says the model is loading.
        later = submit("after a quiet spell")
        (entry,) = selectors.queue_eta()
        estimate = selectors.duration_estimator()
        run = selectors.pass_seconds(estimate, later, 1)
        assert entry["estimated_start_seconds"] == selectors.eta_seconds(row.load_seconds["demo"])
        assert entry["estimated_seconds"] == selectors.eta_seconds(row.load_seconds["demo"] + run)
        run_pass(runner_for(generator))
    finally:
        heartbeat.stop()

    assert generator.loads == 2
    assert len(generator.cards) == 2
    assert "Loading model…" in generator.cards[1] and 'data-loading="1"' in generator.cards[1]
    assert {"type": "job.loading", "job_id": later.pk, "model": "demo"} in sent
    assert ImageJob.objects.get(pk=later.pk).status == "complete"
    assert Message.objects.get(pk=later.message_id).metadata["loading"] is False
    assert ImageJob.objects.get(pk=waiting.pk).status == "complete"


@pytest.mark.django_db
def test_a_processing_jobs_eta_counts_its_models_load(submit):
    job = submit("loading now")
    ImageJob.objects.filter(pk=job.pk).update(status="processing", worker="gpu-a:1", progress=0)
    Worker.objects.create(
        name="gpu-a:1",
        host="gpu-a",
        pid=1,
        device="cuda",
        started_at=job.created_at,
        last_seen_at=job.created_at,
        loaded_model="",
        load_seconds={"demo": 40.0},
    )
    job.refresh_from_db()
    plain = selectors.job_remaining_seconds(job=job)
    assert selectors.job_live_states(jobs=[job])[job.pk]["estimated_seconds"] == plain + 40
    Worker.objects.filter(name="gpu-a:1").update(loaded_model="demo")
    assert selectors.job_live_states(jobs=[job])[job.pk]["estimated_seconds"] == plain


@pytest.mark.django_db
def test_operators_see_what_each_worker_holds_and_its_gpu_memory(client, django_user_model, capsys):
    from django.utils import timezone

    now = timezone.now()
    Worker.objects.create(
        name="gpu-a:7",
        host="gpu-a",
        pid=7,
        device="cuda:0",
        started_at=now,
        last_seen_at=now,
        loaded_model="sdxl",
        gpu_memory=23 * 2**30,
        load_seconds={"sdxl": 163.9},
        speed="2 graphs compiled in 148.3 s for passes of 1×1024×1024, 4×1024×1024",
    )
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-the-admin-1")
    client.force_login(admin)
    page = client.get(reverse("admin:generation_worker_changelist")).content.decode()
    assert "sdxl" in page and "23.0 GiB" in page
    detail = client.get(reverse("admin:generation_worker_change", args=[Worker.objects.get().pk])).content.decode()
    assert "2 graphs compiled in 148.3 s" in detail

    samples = {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").content.decode())
        for sample in family.samples
    }
    assert samples["imagegen_worker_model_loaded[('model', 'sdxl'), ('worker', 'gpu-a:7')]"] == 1
    assert samples["imagegen_worker_gpu_memory_bytes[('device', 'cuda:0'), ('worker', 'gpu-a:7')]"] == 23 * 2**30

    call_command("queue")
    assert "gpu-a:7 on cuda:0" in (out := capsys.readouterr().out)
    assert "holds sdxl, 23.0 GiB of GPU memory" in out
