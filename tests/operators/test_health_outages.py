"""/healthz of the real web server while PostgreSQL or Redis is away, and what it leaves behind.

A load balancer asks often and gives up after a second or two: the answer must come
quickly while a dependency is down, turn back to 200 soon after it returns, log each
outage once rather than once per request, and leave no task, thread or poll loop
running in the web process once given.
"""

import base64
import os
import re
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import requests

from tests.helpers import BASE_DIR, start_web, stop, wait_for, web_processes, worker_env
from tests.servers import in_postgres_pass, in_sqlite_pass

# A worker registered once stays live for the whole test: no cluster needs to run.
WORKER_LIVE_SECONDS = "3600"
WEB_THREADS = "4"
ALICE_PASSWORD = "alice-secret-pw"
PREPARE = f"""
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command

from generation import workers

call_command("migrate", verbosity=0)
if "channels" in settings.DATABASES:
    call_command("migrate", database="channels", verbosity=0)
workers.worker_register(name="gpu-a:1", device="cuda:0")
get_user_model().objects.create_user(username="alice", password="{ALICE_PASSWORD}")
"""
# daphne's access log: one line per request or WebSocket event, by design.
ACCESS_LOG = re.compile(r"^\S+ - - \[")


def _embedded(data_dir, **extra) -> dict[str, str]:
    """The embedded defaults (SQLite, channels-lite, django-q2's ORM broker) in `data_dir`."""
    return {
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "SQLITE_PATH": str(data_dir / "db.sqlite3"),
        "CHANNELS_SQLITE_PATH": str(data_dir / "channels.sqlite3"),
        **extra,
    }


def _start(data_dir, stack: dict[str, str]):
    """Migrate the stack's databases, register one live gpu worker and alice, start the web server."""
    env = worker_env(data_dir, **stack)
    subprocess.run([sys.executable, "manage.py", "shell", "-c", PREPARE], env=env, cwd=BASE_DIR, check=True)
    settings = {"IMAGEGEN_WORKER_DEAD_AFTER_SECONDS": WORKER_LIVE_SECONDS, "WEB_THREADS": WEB_THREADS, **stack}
    return start_web(data_dir, data_dir / "web.log", **settings)


def _healthz(url: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    response = requests.get(f"{url}/healthz", timeout=30)
    return response.status_code, response.json(), time.monotonic() - started


def _failing(body: dict) -> set[str]:
    return {name for name, check in body["checks"].items() if not check["ok"]}


def _lines(log) -> list[str]:
    """The web log's lines, less the access log."""
    return [line for line in log.read_text().splitlines() if not ACCESS_LOG.match(line)]


def _log_in(url: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{url}/login/", timeout=10)
    credentials = {"username": "alice", "password": ALICE_PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]}
    session.post(f"{url}/login/", data=credentials, headers={"Referer": f"{url}/login/"}, timeout=10)
    return session


def _open_page_socket(url: str, session: requests.Session) -> socket.socket:
    """What an open page holds: its WebSocket for live events, accepted by the server."""
    address = urlsplit(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    cookies = "; ".join(f"{name}={value}" for name, value in session.cookies.items())
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/events/ HTTP/1.1\r\nHost: {address.netloc}\r\nOrigin: {url}\r\nCookie: {cookies}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key}\r\n\r\n".encode()
    )
    answer = sock.recv(1024)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def _quick_and_failing(url: str, *, failing: set[str], answering: set[str]) -> None:
    for _ in range(5):
        status, body, took = _healthz(url)
        assert status == 503
        assert took < 2, f"/healthz took {took:.1f} s"
        assert failing <= _failing(body) and not answering & _failing(body), body
        assert "://" not in str(body)


def _through_an_outage(url: str, log, server, *, name: str, failing: set[str], answering: set[str]) -> None:
    """Stop `server`: /healthz is quick and names what failed; start it: 200 soon; the log
    has a line or two about it and no traceback."""
    before = len(_lines(log))
    server.stop()
    _quick_and_failing(url, failing=failing, answering=answering)
    server.start()
    back = time.monotonic()
    wait_for(lambda: _healthz(url)[0] == 200, timeout=10, interval=0.1, message=f"200 after {name} returned")
    print(f"{name}: 200 again {time.monotonic() - back:.1f} s after it answered")
    during = _lines(log)[before:]
    assert len(during) <= 3, "\n".join(during)
    assert not any("Traceback" in line for line in during), "\n".join(during)


@in_postgres_pass
def test_healthz_answers_503_within_two_seconds_while_postgres_or_redis_is_down_and_200_soon_after(
    tmp_path, throwaway_postgres, throwaway_redis
):
    stack = {"DATABASE_URL": throwaway_postgres.url, "REDIS_URL": throwaway_redis.url, "DATABASE_POOL_MAX_SIZE": "20"}
    web, url = _start(tmp_path, stack)
    log = tmp_path / "web.log"
    try:
        wait_for(lambda: _healthz(url)[0] == 200, timeout=30, message="a healthy start")
        alice = _log_in(url)
        # A page open on the same process waits for events on the channel layer meanwhile.
        page = _open_page_socket(url, alice)
        status, body, took = _healthz(url)
        assert (status, _failing(body)) == (200, set()) and took < 2

        _through_an_outage(
            url,
            log,
            throwaway_postgres,
            name="PostgreSQL",
            failing={"database", "workers"},
            answering={"broker", "channel_layer"},
        )
        _through_an_outage(
            url,
            log,
            throwaway_redis,
            name="Redis",
            failing={"broker", "channel_layer"},
            answering={"database", "workers"},
        )

        # The page reconnects, as its script does; the process stays healthy with it open.
        page.close()
        page = _open_page_socket(url, alice)
        status, body, took = _healthz(url)
        assert (status, _failing(body)) == (200, set()) and took < 2
        page.close()
    finally:
        stop(web)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _leaves_nothing_behind(tmp_path, stack: dict[str, str]) -> None:
    web, url = _start(tmp_path, stack)
    log = tmp_path / "web.log"
    try:
        (pid,) = web_processes(web)
        with requests.Session() as session:
            # Every request thread of the process (WEB_THREADS) has started and served a page.
            for _ in range(2 * int(WEB_THREADS)):
                assert session.get(f"{url}/login/", timeout=10).status_code == 200
            threads = _threads(pid)
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            answers = []
            while len(answers) < 200 and answers.count(200) == len(answers):
                answers.append(session.get(f"{url}/healthz", timeout=10).status_code)
        lines = len(_lines(log))
        time.sleep(2)
        # A busy machine may close the last sockets a moment later: they must go, soon.
        wait_for(lambda: _threads(pid) <= threads, timeout=10, message="threads left running after /healthz")
        wait_for(
            lambda: len(os.listdir(f"/proc/{pid}/fd")) <= fds,
            timeout=10,
            message="connections or files left open after /healthz",
        )
        cpu = _cpu_seconds(pid)
        time.sleep(3)
        idle = _cpu_seconds(pid) - cpu
        new = _lines(log)[lines:]
        assert not new, "the web process went on logging after /healthz:\n" + "\n".join(new[:5])
        assert idle < 0.05, f"the idle web process used {idle:.2f} s of CPU in 3 s after /healthz"
        assert answers == [200] * 200
    finally:
        stop(web)


@in_sqlite_pass
def test_healthz_leaves_nothing_running_on_the_embedded_defaults(tmp_path):
    _leaves_nothing_behind(tmp_path, _embedded(tmp_path))


@in_postgres_pass
def test_healthz_leaves_nothing_running_with_redis(tmp_path, throwaway_redis):
    import redis

    _leaves_nothing_behind(tmp_path, _embedded(tmp_path, REDIS_URL=throwaway_redis.url))
    with redis.Redis.from_url(throwaway_redis.url) as client:
        assert client.keys("*healthz*") == [], "the checks' channels were left in Redis"
