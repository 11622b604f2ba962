"""Static files under ASGI: WhiteNoise runs in the async path, so an async view after it
(an API request waiting for its image) keeps no thread."""

import pytest
from asgiref.sync import iscoroutinefunction
from django.test import AsyncClient

from imagegen_site.middleware import StaticFilesMiddleware


async def _view(request):
    from django.http import HttpResponse

    return HttpResponse("from the view")


def test_the_middleware_is_async_in_an_async_chain_and_sync_in_a_sync_one():
    assert iscoroutinefunction(StaticFilesMiddleware(_view))
    assert not iscoroutinefunction(StaticFilesMiddleware(lambda request: None))


@pytest.mark.anyio
async def test_it_serves_static_files_and_passes_everything_else_on(settings, tmp_path):
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "probe.css").write_text("body { color: red; }")
    settings.STATIC_ROOT = tmp_path
    client = AsyncClient()

    served = await client.get("/static/css/probe.css")
    passed_on = await client.get("/v1/models")  # no key: the API view's own 401

    assert served.status_code == 200
    assert b"".join(served.streaming_content) == b"body { color: red; }"
    assert passed_on.status_code == 401 and passed_on.json()["error"]["code"] == "invalid_api_key"
