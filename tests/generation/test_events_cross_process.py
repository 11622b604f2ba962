"""Events travel from a real worker process to a consumer in this process.

On the SQLite run the layer is channels-lite (the embedded default); on the
PostgreSQL run it is channels-redis.
"""

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from generation.models import ImageJob
from tests.generation.test_consumer import _connect, _events_until, _submit, _user_with_chat
from tests.helpers import LAYER_DATABASES, start_cluster, stop

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.configured_layer,
    pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES),
]


async def test_a_real_gpu_worker_process_pushes_progress_and_completion_to_the_browser(tmp_path):
    alice, alice_chat = await _user_with_chat("alice")
    alice_ws, connected = await _connect(alice)
    assert connected
    await alice_ws.receive_json_from(timeout=5)
    job = await _submit(alice, alice_chat, "across processes")

    cluster = start_cluster("gpu", tmp_path, tmp_path / "gpu.log")
    try:
        seen = await _events_until(alice_ws, lambda e: e["type"] == "job.complete", timeout=150)
    except AssertionError:
        print((tmp_path / "gpu.log").read_text()[-4000:])
        raise
    finally:
        await sync_to_async(stop)(cluster)
        await alice_ws.disconnect()

    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    types = [e["type"] for e in seen]
    assert "job.progress" in types, (layer, types)
    progress = [e for e in seen if e["type"] == "job.progress"]
    assert progress[-1]["progress"] == 100
    assert seen[-1]["image_url"] == f"/jobs/{job.pk}/image.png"
    assert (await ImageJob.objects.aget(pk=job.pk)).status == "complete"
