"""End-to-end: the real web server (daphne), the real gpu worker and the demo model,
driven through Debian's Chromium by Playwright."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Page, sync_playwright

from tests.conftest import make_user
from tests.helpers import BASE_DIR, LAYER_DATABASES, start_cluster, start_web, stop, worker_env

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ARTIFACTS = BASE_DIR / "test-artifacts"

# A generator that fails or hangs on "[fail]" and "[hang]" in a prompt (tests/faults.py),
# a small cool-down so the circuit-breaker scenario recovers within the test, and the
# worker's start-up warm-up passes.
STACK_ENV = {
    "IMAGEGEN_GENERATOR": "tests.faults.FaultyGenerator",
    "IMAGEGEN_BREAKER_COOLDOWN_SECONDS": "4",
    "LOG_LEVEL": "WARNING",
    "IMAGEGEN_WARMUP": "1",  # as in production: the worker times the model when it starts
}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.configured_layer)
            item.add_marker(pytest.mark.django_db(transaction=True, databases=LAYER_DATABASES))
    # The browser tests run last: while Playwright runs, this thread has an event loop.
    items.sort(key=lambda item: "tests/e2e/" in str(item.fspath))


_static_collected = False


def _collect_static(env: dict[str, str]) -> None:
    """The pages' static files, collected once a session (STATIC_ROOT is the project's, not a stack's)."""
    global _static_collected
    if not _static_collected:
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=BASE_DIR, env=env, check=True
        )
        _static_collected = True


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory, request):
    """daphne, a gpu cluster and the maintenance cluster (which sends the queue
    broadcasts) against the test database, for the whole module.

    A module's STACK_EXTRA_ENV adds to the settings of all three."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is needed for the browser tests: {CHROMIUM} is missing (apt-get install chromium)")
    data_dir = tmp_path_factory.mktemp("stack")
    with django_db_blocker.unblock():
        from generation.models import Worker

        # The previous module's gpu worker beat until it stopped: for the next 20 s its
        # row would count as a live worker, a second lane in every ETA.
        Worker.objects.all().delete()
    stack_env = {**STACK_ENV, **getattr(request.module, "STACK_EXTRA_ENV", {})}
    env = worker_env(data_dir, IMAGEGEN_LOCK_DIR=str(data_dir / "locks"), **stack_env)
    _collect_static(env)
    web_env = {"IMAGEGEN_LOCK_DIR": str(data_dir / "locks"), **stack_env}
    web, url = start_web(data_dir, data_dir / "web.log", **web_env)
    gpu = start_cluster("gpu", data_dir, data_dir / "gpu.log", IMAGEGEN_LOCK_DIR=str(data_dir / "locks"), **stack_env)
    maintenance = start_cluster("maintenance", data_dir, data_dir / "maintenance.log", **stack_env)
    stack = {"url": url, "data_dir": data_dir, "web": web}

    def stop_web():
        stop(stack["web"])

    def start_web_again():
        """The web server comes back on the same address, as after a restart."""
        port = int(url.rsplit(":", 1)[1])
        stack["web"], _ = start_web(data_dir, data_dir / "web.log", port=port, **web_env)

    stack.update(stop_web=stop_web, start_web_again=start_web_again)
    try:
        yield stack
    finally:
        stop(maintenance)
        stop(gpu)
        stop(stack["web"])


@pytest.fixture(scope="module")
def browser(stack):
    # Playwright's sync API keeps an event loop on this thread, which makes Django
    # refuse ORM calls from the test itself; the tests only use the ORM to arrange
    # and check, never concurrently with the loop, so the check is lifted here.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def open_page(browser, stack, request):
    """Log a named user in, in a fresh browser context; returns (page, user).

    Every console error and uncaught exception of the page fails the test, except the
    browser's own reports that the test expects (`allow`: parts of the message, such as
    "status of 400" for a refused form or "ERR_CONNECTION_REFUSED" while the server is down).
    """
    contexts = []
    problems: list[str] = []

    def login(
        username: str,
        *,
        width: int = 1280,
        height: int = 800,
        color_scheme: str = "light",
        allow: tuple[str, ...] = (),
        existing: bool = False,
        touch: bool = False,
    ) -> tuple[Page, object]:
        user = get_user_model().objects.get(username=username) if existing else make_user(username)
        context = browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=color_scheme, has_touch=touch, is_mobile=touch
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)

        def on_console(message):
            if message.type != "error":
                return
            if any(part in message.text for part in allow):
                return
            problems.append(f"{username}: console error: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(f"{username}: uncaught: {error}"))
        page.goto(f"{stack['url']}/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", f"{username}-secret-pw")
        page.click("button[type=submit]")
        page.wait_for_url(f"{stack['url']}/")
        return page, user

    yield login
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    if failed:
        _report_stack(stack["data_dir"])
    _settle_worker(stack["data_dir"] / "locks")
    if failed:
        for n, context in enumerate(contexts):
            for page in context.pages:
                shot(page, f"FAILED-{request.node.name}-{n}")
    for context in contexts:
        context.close()
    assert problems == [], "the pages reported errors"


def _report_stack(data_dir: Path) -> None:
    """What a failed browser test needs to be understood: the jobs and the processes' logs."""
    from generation.models import ImageJob

    for row in ImageJob.objects.order_by("pk").values(
        "pk", "status", "worker", "not_before", "started_at", "heartbeat_at"
    ):
        print("job", row)
    for name in ("web", "gpu", "maintenance"):
        log = data_dir / f"{name}.log"
        if log.exists():
            print(f"--- last lines of {name}.log ---")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))


def _settle_worker(lock_dir: Path) -> None:
    """Stop what the test left running, so the database is emptied with no writer busy."""
    from django_q.brokers import get_broker

    from generation.locks import DeviceBusy, device_lock
    from generation.models import ImageJob, QueueBroadcast

    ImageJob.objects.filter(status__in=["queued", "processing"]).update(status="cancelled")
    gpu, maintenance = get_broker("gpu"), get_broker("maintenance")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # The worker holds the device lock while it runs jobs and records them; the
        # maintenance cluster clears the request when its broadcast starts.
        try:
            with device_lock("cpu", lock_dir=lock_dir, wait=0):
                pending = QueueBroadcast.objects.filter(requested_at__isnull=False).exists()
                if not gpu.queue_size() and not maintenance.queue_size() and not pending:
                    break
        except DeviceBusy:
            pass
        time.sleep(0.2)
    time.sleep(0.3)  # a broadcast that has just started writes for a few milliseconds


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def shot(page: Page, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def wait_chat_ready(page: Page) -> None:
    """The conversation page's scripts have bound the composer and the cards."""
    page.wait_for_selector("[data-conversation-id][data-ready]", state="attached")


def new_conversation(page: Page) -> None:
    page.click("#new-conversation")
    wait_chat_ready(page)


def submit_prompt(page: Page, prompt: str, **advanced: str) -> None:
    """Type a prompt and press Enter; wait until its card is on the page."""
    wait_chat_ready(page)
    count = page.locator(".job-card").count()
    if advanced:
        page.evaluate("document.querySelector('details.advanced').open = true")
        for field, value in advanced.items():
            page.fill(f"#id_{field}", value)
    page.fill("[data-testid=prompt-input]", prompt)
    page.press("[data-testid=prompt-input]", "Enter")
    page.wait_for_function(f"document.querySelectorAll('.job-card').length > {count}")
