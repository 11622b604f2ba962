"""The API tests' stack: the real web server (daphne) and a real `gpu` cluster with the
demo model, against the test database, for a whole module."""

import pytest
from django.conf import settings

from generation.api.auth import api_key_create
from generation.demo_model import demo_pipeline_path
from tests.conftest import make_user
from tests.helpers import start_cluster, start_web, stop


@pytest.fixture(scope="module")
def api_stack(django_db_setup, tmp_path_factory, tiny_loras):
    """daphne and a gpu cluster. Besides `demo` they know `tiny`: the same weights as a
    plain diffusers folder, a second model to choose; and the tiny LoRAs. "[slow]", "[hang]" and "[fail]" in
    a prompt drive the test generator (tests/faults.py)."""
    data_dir = tmp_path_factory.mktemp("api")
    tiny = demo_pipeline_path(settings.IMAGEGEN_MODEL_CACHE)
    env = {
        "IMAGEGEN_LOCK_DIR": str(data_dir / "locks"),
        "IMAGEGEN_GENERATOR": "tests.faults.FaultyGenerator",
        "IMAGEGEN_MODELS": f"tiny={tiny}",
        "IMAGEGEN_LORA_DIR": str(tiny_loras),  # tests/conftest.py TINY_LORAS
        "IMAGEGEN_API_POLL_SECONDS": "0.1",
        "LOG_LEVEL": "WARNING",
        # Fewer page threads than the requests that wait at once in test_waiting_requests.
        "WEB_THREADS": "2",
    }
    web, url = start_web(data_dir, data_dir / "web.log", **env)
    gpu = start_cluster("gpu", data_dir, data_dir / "gpu.log", **env)
    try:
        yield {"url": url, "data_dir": data_dir, "web": web}
    finally:
        stop(gpu)
        stop(web)


@pytest.fixture
def key_for():
    """A user with an API key: (user, key)."""

    def make(username: str, name: str = ""):
        user = make_user(username)
        _, key = api_key_create(owner=user, name=name)
        return user, key

    return make
