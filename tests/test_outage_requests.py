"""While the database is away, requests get a clear 503 quickly, and the web process
recovers by itself when it returns.

Pages answer with a sentence, the composer gets its form back with the prompt in it,
the two APIs answer 503 with `Retry-After` in their own error shapes, and a WebSocket is
closed for the page to open again. Each outage is logged once, not once per request.
"""

import base64
import logging
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from asgiref.sync import async_to_sync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator
from django.db.utils import OperationalError
from django.test import Client
from django.urls import path, reverse

from chat.models import Message
from generation.api import OUTAGE_RETRY_AFTER
from generation.consumers import CLOSE_TRY_AGAIN
from generation.models import ImageJob
from generation.outages import DATABASE, OUTAGES
from imagegen_site import urls as site_urls
from imagegen_site.asgi import Handler, application
from imagegen_site.middleware import DATABASE_AWAY, PROMPT_KEPT
from tests.helpers import BASE_DIR, start_web, stop, wait_for, worker_env
from tests.servers import in_postgres_pass

AWAY = OperationalError("connection failed: connection refused")


def _away(*args, **kwargs):
    raise AWAY


@pytest.fixture(autouse=True)
def _no_outage_before_or_after():
    """OUTAGES is the process's: every test starts and ends with the database answering."""
    OUTAGES.answered(DATABASE)
    yield
    OUTAGES.answered(DATABASE)


def _outage_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("Outage")]


# --- Settings --------------------------------------------------------------------

POOL = """
import django
django.setup()
from django.db import connection
from psycopg_pool import ConnectionPool
pool = connection.pool
checks = pool._check == ConnectionPool.check_connection
print(pool.kwargs["connect_timeout"], pool.timeout, pool.reconnect_timeout, checks)
"""


def _settings_child(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    clean = {"PATH": "/usr/bin:/bin", "IMAGEGEN_ENV_FILE": "", "SECRET_KEY": "k", **env}
    clean["DJANGO_SETTINGS_MODULE"] = "imagegen_site.settings"
    return subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=clean, capture_output=True, text=True)


def test_the_web_process_pool_fails_fast_and_checks_each_connection_it_lends():
    pooled = {"DATABASE_URL": "postgres://u@db:5432/app", "DATABASE_POOL_MAX_SIZE": "20"}
    assert _settings_child(pooled, POOL).stdout.split() == ["3", "3.0", "3.0", "True"]
    slower = {**pooled, "DATABASE_CONNECT_TIMEOUT": "5", "DATABASE_POOL_TIMEOUT": "4"}
    assert _settings_child(slower, POOL).stdout.split() == ["5", "4.0", "4.0", "True"]
    # A connect_timeout in the URL wins.
    in_url = {**pooled, "DATABASE_URL": "postgres://u@db:5432/app?connect_timeout=10"}
    assert _settings_child(in_url, POOL).stdout.split()[0] == "10"


@pytest.mark.parametrize(
    "value,message",
    [("1", "DATABASE_CONNECT_TIMEOUT must be at least 2"), ("soon", "DATABASE_CONNECT_TIMEOUT must be an integer")],
)
def test_a_bad_connect_timeout_fails_loudly(value, message):
    env = {"DATABASE_URL": "postgres://u@db:5432/app", "DATABASE_CONNECT_TIMEOUT": value}
    result = _settings_child(env, "import imagegen_site.settings")
    assert result.returncode != 0 and message in result.stderr


# --- Pages -----------------------------------------------------------------------


def test_a_page_that_cannot_reach_the_database_answers_503_and_logs_the_outage_once(
    alice, alice_chat, monkeypatch, caplog
):
    client = Client()
    client.force_login(alice)
    caplog.set_level(logging.WARNING)
    with monkeypatch.context() as patched:
        patched.setattr("chat.selectors.conversation_list", _away)
        for _ in range(3):
            response = client.get(reverse("chat:home"))
            assert response.status_code == 503
            assert DATABASE_AWAY in response.content.decode()
            assert response["Content-Type"].startswith("text/html")
    assert not any(record.exc_info for record in caplog.records)
    assert len(_outage_lines(caplog)) == 1 and "the database cannot be reached" in _outage_lines(caplog)[0]

    # The database answers again: the page works, and the outage's end is logged.
    assert client.get(reverse("chat:home")).status_code == 200
    assert not OUTAGES.down(DATABASE)
    assert _outage_lines(caplog)[1].startswith("Outage over: the database answers again")


def test_the_composer_gets_its_form_back_with_the_prompt_and_the_sentence(alice, alice_chat, monkeypatch):
    client = Client()
    client.force_login(alice)
    url = reverse("chat:job_submit", args=[alice_chat.pk])
    monkeypatch.setattr("generation.services.job_submit", _away)
    response = client.post(url, {"prompt": "a lighthouse at dusk", "steps": "7"}, headers={"X-Requested-With": "fetch"})
    assert response.status_code == 503
    html = response.content.decode()
    # The shape the composer swaps in for a refused prompt (static/js/chat/composer.js).
    assert 'id="prompt-form"' in html and f'action="{url}"' in html
    assert PROMPT_KEPT in html
    assert "a lighthouse at dusk</textarea>" in html and 'value="7"' in html
    assert not Message.objects.exists() and not ImageJob.objects.exists()

    # Without the page's script, the form post gets the error page.
    response = client.post(url, {"prompt": "a lighthouse at dusk"})
    assert response.status_code == 503 and DATABASE_AWAY in response.content.decode()


def test_an_error_that_is_no_outage_is_still_a_server_error(alice, alice_chat, monkeypatch):
    client = Client()
    client.force_login(alice)
    monkeypatch.setattr("chat.selectors.conversation_list", lambda **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        client.get(reverse("chat:home"))


def sync_view(request):
    raise AWAY


async def async_view(request):
    raise AWAY


# The site's own URLs too: the error page links to them.
urlpatterns = [path("sync/", sync_view), path("async/", async_view), *site_urls.urlpatterns]


async def _ask(handler: Handler, url: str) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": url,
        "raw_path": url.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    app = ApplicationCommunicator(handler, scope)
    await app.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await app.receive_output(timeout=30)
    body = await app.receive_output(timeout=30)
    await app.wait(timeout=30)
    return start["status"], body.get("body", b"")


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("url", ["/sync/", "/async/"])
def test_sync_and_async_views_answer_503_through_the_web_servers_handler(url):
    status, body = async_to_sync(_ask)(Handler(), url)
    assert status == 503
    assert DATABASE_AWAY in body.decode()


# --- APIs ------------------------------------------------------------------------


def test_the_openai_api_answers_503_with_retry_after_in_openai_shape(monkeypatch):
    monkeypatch.setattr("generation.api.openai.api_key_authenticate", _away)
    response = Client().post(
        "/v1/images/generations",
        {"prompt": "a lighthouse"},
        content_type="application/json",
        headers={"Authorization": "Bearer ig_some-key"},
    )
    assert response.status_code == 503
    assert response["Retry-After"] == str(OUTAGE_RETRY_AFTER)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error" and error["code"] == "service_unavailable"
    assert "cannot reach its database" in error["message"]


def test_the_a1111_api_answers_503_with_retry_after_in_a1111_shape(monkeypatch):
    monkeypatch.setattr("generation.api.a1111.api_key_authenticate", _away)
    credentials = base64.b64encode(b"alice:ig_some-key").decode()
    response = Client().post(
        "/sdapi/v1/txt2img",
        {"prompt": "a lighthouse"},
        content_type="application/json",
        headers={"Authorization": f"Basic {credentials}"},
    )
    assert response.status_code == 503
    assert response["Retry-After"] == str(OUTAGE_RETRY_AFTER)
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    assert "cannot reach its database" in body["detail"]


# --- The WebSocket ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.django_db(transaction=True)
async def test_a_socket_whose_snapshot_cannot_be_read_is_closed_for_the_page_to_open_again(alice, monkeypatch):
    @sync_to_async
    def session_cookie() -> bytes:
        client = Client()
        client.force_login(alice)
        return f"sessionid={client.cookies['sessionid'].value}".encode()

    headers = [(b"origin", b"http://localhost"), (b"cookie", await session_cookie())]
    monkeypatch.setattr("generation.selectors.queue_version", _away)
    communicator = WebsocketCommunicator(application, "/ws/events/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_TRY_AGAIN}
    assert OUTAGES.down(DATABASE)
    await communicator.wait(timeout=5)


# --- The real web server, with PostgreSQL stopped and started -------------------

SETUP = """
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command

from chat.services import conversation_create
from generation.api.auth import api_key_create

call_command("migrate", verbosity=0)
if "channels" in settings.DATABASES:
    call_command("migrate", database="channels", verbosity=0)
alice = get_user_model().objects.create_user(username="alice", password="alice-secret-pw")
_, key = api_key_create(owner=alice, name="script")
print(conversation_create(owner=alice, title="Alice's pictures").pk, key)
"""
COUNT = "from chat.models import Message; from generation.models import ImageJob; "
COUNT += "print(Message.objects.count(), ImageJob.objects.count())"
# A request must get its answer this quickly while PostgreSQL is down.
QUICK = 5.0


def _manage_shell(env: dict, code: str) -> list[str]:
    command = [sys.executable, "manage.py", "shell", "-c", code]
    result = subprocess.run(command, env=env, cwd=BASE_DIR, check=True, capture_output=True, text=True)
    return result.stdout.splitlines()[-1].split()  # what `code` printed last


def _log_in(url: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{url}/login/", timeout=30).raise_for_status()
    form = {"username": "alice", "password": "alice-secret-pw", "csrfmiddlewaretoken": session.cookies["csrftoken"]}
    response = session.post(f"{url}/login/", data=form, timeout=30, allow_redirects=False)
    assert response.status_code == 302, response.text[:500]
    return session


def _timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _websocket_status(url: str, session: requests.Session) -> str:
    """The status line the server answers a WebSocket handshake with."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(
            (
                f"GET /ws/events/ HTTP/1.1\r\nHost: {address.netloc}\r\nOrigin: {url}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Cookie: sessionid={session.cookies['sessionid']}\r\n\r\n"
            ).encode()
        )
        return sock.makefile("rb").readline().decode().strip()


@in_postgres_pass
def test_while_postgresql_is_down_requests_get_a_quick_503_and_the_server_recovers_without_a_restart(
    tmp_path, throwaway_postgres
):
    # Without Redis, events go through a channels-lite file of this test's own.
    stack = {"DATABASE_URL": throwaway_postgres.url, "CHANNELS_SQLITE_PATH": str(tmp_path / "channels.sqlite3")}
    env = worker_env(tmp_path, **stack)
    conversation_id, key = _manage_shell(env, SETUP)
    log = tmp_path / "web.log"
    web, url = start_web(tmp_path, log, DATABASE_POOL_MAX_SIZE="20", **stack)
    page = f"{url}/conversations/{conversation_id}/"
    submit = f"{url}/conversations/{conversation_id}/submit/"
    openai = f"{url}/v1/images/generations"
    txt2img = f"{url}/sdapi/v1/txt2img"
    try:
        session = _log_in(url)
        fetch = {"X-Requested-With": "fetch"}
        prompt = {"prompt": "a lighthouse at dusk", "csrfmiddlewaretoken": session.cookies["csrftoken"]}
        assert session.get(page, timeout=30).status_code == 200
        assert _websocket_status(url, session).startswith("HTTP/1.1 101")

        before = len(log.read_text().splitlines())
        throwaway_postgres.stop()

        response, took = _timed(lambda: session.get(page, timeout=30))
        print(f"page: {response.status_code} after {took:.2f} s")
        assert response.status_code == 503 and took < QUICK
        assert DATABASE_AWAY in response.text

        response, took = _timed(lambda: session.post(submit, data=prompt, headers=fetch, timeout=30))
        print(f"submit: {response.status_code} after {took:.2f} s")
        assert response.status_code == 503 and took < QUICK
        assert PROMPT_KEPT in response.text and "a lighthouse at dusk" in response.text

        bearer = {"Authorization": f"Bearer {key}"}
        response, took = _timed(lambda: requests.post(openai, json={"prompt": "a boat"}, headers=bearer, timeout=30))
        print(f"OpenAI API: {response.status_code} after {took:.2f} s")
        assert response.status_code == 503 and took < QUICK
        assert response.headers["Retry-After"] == str(OUTAGE_RETRY_AFTER)
        assert response.json()["error"]["code"] == "service_unavailable"

        response, took = _timed(
            lambda: requests.post(txt2img, json={"prompt": "a boat"}, auth=("alice", key), timeout=30)
        )
        print(f"A1111 API: {response.status_code} after {took:.2f} s")
        assert response.status_code == 503 and took < QUICK
        assert response.headers["Retry-After"] == str(OUTAGE_RETRY_AFTER)
        assert set(response.json()) == {"error", "detail", "body", "errors"}

        status, took = _timed(lambda: _websocket_status(url, session))
        print(f"WebSocket: {status} after {took:.2f} s")
        assert not status.startswith("HTTP/1.1 101") and took < QUICK

        throwaway_postgres.start()
        back = time.monotonic()

        def page_answers():
            return session.get(page, timeout=30).status_code == 200

        wait_for(page_answers, timeout=10, interval=0.1, message="the page after PostgreSQL returned")
        print(f"page: 200 again {time.monotonic() - back:.2f} s after PostgreSQL answered")
        # Nothing the refused requests asked for was made.
        assert _manage_shell(env, COUNT) == ["0", "0"]
        response = session.post(submit, data=prompt, headers=fetch, timeout=30)
        assert response.status_code == 201, response.text[:500]
        assert _websocket_status(url, session).startswith("HTTP/1.1 101")

        during = log.read_text().splitlines()[before:]
        assert not any("Traceback" in line for line in during), "\n".join(during)
        outage = [line for line in during if "Outage: the database cannot be reached" in line]
        assert len(outage) == 1, "\n".join(during)
        assert any("Outage over: the database answers again" in line for line in during), "\n".join(during)

        # A quick restart breaks every idle connection of the pool at once. The first
        # request to find them has the pool drop them all: at most that one fails.
        def get_page(_) -> int:
            return requests.get(page, cookies=session.cookies, timeout=30).status_code

        with ThreadPoolExecutor(max_workers=8) as threads:
            assert set(threads.map(get_page, range(32))) == {200}
        throwaway_postgres.stop()
        throwaway_postgres.start()
        codes = [session.get(page, timeout=30).status_code for _ in range(4)]
        print(f"after a quick restart: {codes}")
        assert codes in ([200] * 4, [503] + [200] * 3)
    finally:
        stop(web)
