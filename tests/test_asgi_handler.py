"""The web process's request handler: page requests run on a bounded set of threads,
with everything Django's middleware does to them, and a burst waits its turn."""

import asyncio
import threading

from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator

from imagegen_site.asgi import Handler


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _ask(handler: Handler, method: str, path: str, body: bytes = b"", headers=None) -> tuple[int, dict, bytes]:
    app = ApplicationCommunicator(handler, _scope(method, path, headers))
    await app.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await app.receive_output(timeout=30)
    content = b""
    while True:
        message = await app.receive_output(timeout=30)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    await app.wait(timeout=30)
    response_headers = {}
    for name, value in start["headers"]:
        response_headers.setdefault(name.decode().lower(), []).append(value.decode())
    return start["status"], response_headers, content


def test_a_page_request_gets_all_that_the_middleware_does():
    handler = Handler()
    status, headers, content = async_to_sync(_ask)(handler, "GET", "/login/")
    assert status == 200 and b"Log in" in content
    assert headers["x-frame-options"] == ["DENY"]
    assert headers["x-content-type-options"] == ["nosniff"]
    assert any(cookie.startswith("csrftoken=") for cookie in headers["set-cookie"])
    # A form posted without its CSRF token is refused.
    form = [(b"content-type", b"application/x-www-form-urlencoded")]
    status, _, _ = async_to_sync(_ask)(handler, "POST", "/login/", b"username=a&password=b", form)
    assert status == 403
    # Signed out, a page sends you to the log-in page; a missing slash is added.
    status, headers, _ = async_to_sync(_ask)(handler, "GET", "/")
    assert status == 302 and headers["location"] == ["/login/?next=/"]
    status, headers, _ = async_to_sync(_ask)(handler, "GET", "/login")
    assert status == 301 and headers["location"] == ["/login/"]
    status, _, content = async_to_sync(_ask)(handler, "GET", "/no-such-page/")
    assert status == 404


def test_a_burst_of_page_requests_is_served_by_at_most_web_threads_threads(settings):
    settings.WEB_THREADS = 2
    handler = Handler()
    serve = handler.sync_handler.get_response
    threads = set()

    def get_response(request):
        threads.add(threading.current_thread().name)
        return serve(request)

    handler.sync_handler.get_response = get_response

    async def burst():
        return await asyncio.gather(*[_ask(handler, "GET", "/login/") for _ in range(30)])

    answers = async_to_sync(burst)()
    assert [status for status, _, _ in answers] == [200] * 30
    # Django alone would have started a thread for each of the 30.
    assert 1 <= len(threads) <= 2, threads
