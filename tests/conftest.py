import os

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from chat.services import conversation_create
from generation import heartbeat, services
from generation.outages import OUTAGES
from generation.worker import JobRunner
from tests.fakes import FakeClock
from tests.servers import ThrowawayPostgres, ThrowawayRedis

IN_MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The worker processes the tests start skip the start-up warm-up passes (a few seconds
# of the demo model on a CPU, and passes that the generators' logs would count) unless
# a stack asks for them, as the browser tests' stack does (tests/e2e/conftest.py).
os.environ.setdefault("IMAGEGEN_WARMUP", "0")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """The test databases, and on PostgreSQL no stray session left when they are dropped.

    Threads that ran ORM code for async tests (asgiref's executors) keep their own
    connections open until the process ends, which would stop the test database from
    being dropped at the end of the run.
    """
    yield
    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(autouse=True)
def _isolated(settings, tmp_path, request):
    """Images and device locks go to a fresh folder per test; events stay in-process.

    Tests marked `configured_layer` use the channel layer the settings configure
    (channels-lite without Redis, channels-redis with it) instead.
    """
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.IMAGEGEN_LOCK_DIR = tmp_path / "locks"
    # Queue broadcasts run inline where tasks do (sync_q): no pause between them.
    settings.IMAGEGEN_BROADCAST_INTERVAL_SECONDS = 0
    if not request.node.get_closest_marker("configured_layer"):
        settings.CHANNEL_LAYERS = IN_MEMORY_LAYER
    yield
    # A task run in-process registered this process as a worker: its beat stops with the test.
    heartbeat.stop()
    # An outage a test made is over for the next one (silence after an outage proves nothing).
    OUTAGES.forget()


def make_user(username: str):
    return get_user_model().objects.create_user(username=username, password=f"{username}-secret-pw")


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def alice_chat(alice):
    return conversation_create(owner=alice, title="Alice's pictures")


@pytest.fixture
def bob_chat(bob):
    return conversation_create(owner=bob, title="Bob's pictures")


@pytest.fixture
def throwaway_postgres():
    """A PostgreSQL of the test's own, running, to stop and start at will (tests/servers.py)."""
    server = ThrowawayPostgres()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def throwaway_redis():
    """A Redis of the test's own, running, to stop and start at will."""
    server = ThrowawayRedis()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def fake_clock():
    return FakeClock()


@pytest.fixture
def runner_for(fake_clock, transactional_db):
    """A JobRunner on the fake clock. Its bookkeeping thread writes on a connection of
    its own, which sees only committed rows: hence a transactional database."""

    def make(generator):
        return JobRunner(generator, clock=fake_clock.clock, now=fake_clock.now, sleep=fake_clock.sleep)

    return make


@pytest.fixture
def submit(alice_chat):
    def submit_job(prompt="a lighthouse at dusk", conversation=None, **params):
        conversation = conversation or alice_chat
        params.setdefault("steps", 4)
        params.setdefault("width", 64)
        params.setdefault("height", 64)
        return services.job_submit(user=conversation.owner, conversation=conversation, prompt=prompt, **params).jobs[0]

    return submit_job


@pytest.fixture
def sync_q(monkeypatch):
    """django-q2 runs tasks in-process, at once, through the real task path."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)


@pytest.fixture(scope="session")
def tiny_models():
    """name -> folder of the tiny random pipelines of each family, built once in the model cache."""
    from django.conf import settings as django_settings

    from generation.demo_model import TINY_FAMILIES, demo_pipeline_path, random_pipeline_path

    cache = django_settings.IMAGEGEN_MODEL_CACHE
    return {"demo": demo_pipeline_path(cache)} | {shape: random_pipeline_path(cache, shape) for shape in TINY_FAMILIES}


# The LoRAs the tests install: name -> (the tiny model they are made for, seed).
TINY_LORAS = {"style": ("demo", 1), "grain": ("demo", 2), "ink": ("demo", 3), "xl-style": ("tiny-sdxl", 4)}


@pytest.fixture(scope="session")
def tiny_loras(tiny_models):
    """A folder of random LoRAs (TINY_LORAS) for the tiny models, built once in the model cache."""
    from django.conf import settings as django_settings

    from generation.demo_model import build_random_lora

    folder = django_settings.IMAGEGEN_MODEL_CACHE / "test-loras-v1"
    for name, (model, seed) in TINY_LORAS.items():
        path = folder / f"{name}.safetensors"
        if not path.exists():
            build_random_lora(path, tiny_models[model], seed=seed)
    return folder


@pytest.fixture
def loras_installed(settings, tiny_loras):
    """IMAGEGEN_LORA_DIR is the tiny LoRAs' folder for this test; the registries are rebuilt."""
    from generation import registry

    settings.IMAGEGEN_LORA_DIR = tiny_loras
    registry.get_loras.cache_clear()
    registry.get_generator.cache_clear()
    yield registry.get_loras()
    registry.get_loras.cache_clear()
    registry.get_generator.cache_clear()


@pytest.fixture
def registered(settings, tiny_models):
    """Register models (name -> IMAGEGEN_MODELS source) for this test; the registry and generator are rebuilt."""
    from generation import registry

    def register(**models):
        settings.IMAGEGEN_MODELS = {name: str(source) for name, source in models.items()}
        registry.get_registry.cache_clear()
        registry.get_generator.cache_clear()
        return registry.get_registry()

    yield register
    settings.IMAGEGEN_MODELS = {}
    registry.get_registry.cache_clear()
    registry.get_generator.cache_clear()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face Hub cache for this test, with the network off (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
