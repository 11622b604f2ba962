"""Honest time on the cards and in the tab: times left in plain words, "Almost done" only
near the end, a wait that follows the server's latest estimate, and a tab title that
drops the percentage as soon as nothing runs."""

import json
import re
from datetime import timedelta

from django.db import transaction
from django.utils import timezone
from playwright.sync_api import expect

from chat.services import conversation_create
from generation import services
from generation.models import ImageJob, Worker
from tests.conftest import make_user
from tests.e2e.conftest import new_conversation, shot, submit_prompt, wait_chat_ready
from tests.helpers import wait_for

PHONE = {"width": 390, "height": 844}
# Every text a running card's time left may read.
TIME_LEFT = re.compile(
    r"^(About \d+(\.\d)? (s|min|h) left|A few seconds left|Almost done…|Taking longer than expected…)$"
)


def _submit(user, conversation, prompt, **fields):
    """A job of `user`'s, changed in the transaction that makes it, so the worker never
    sees it as it was submitted."""
    with transaction.atomic():
        job = services.job_submit(
            user=user, conversation=conversation, prompt=prompt, steps=40, width=64, height=64
        ).jobs[0]
        ImageJob.objects.filter(pk=job.pk).update(**fields)
    return job


def _open(page, stack, conversation):
    page.goto(f"{stack['url']}/conversations/{conversation.pk}/")
    wait_chat_ready(page)


def _stand_in_socket(page):
    """The page's WebSocket talks to a stand-in that sends what the test says."""
    sockets = []
    page.route_web_socket("**/ws/events/", lambda ws: sockets.append(ws))
    return sockets


def _send(sockets, event_type, **fields):
    sockets[-1].send(json.dumps({"type": event_type, **fields}))


def test_a_running_card_says_its_time_left_in_plain_words_and_almost_done_only_near_the_end(open_page, stack):
    page, alice = open_page("alice")
    conversation = conversation_create(owner=alice, title="Honest time")
    # Running on a worker elsewhere, at 8 %: only this test's events move it.
    job = _submit(
        alice,
        conversation,
        "a slow sunrise",
        status="processing",
        worker="elsewhere:1",
        progress=8,
        started_at=timezone.now() - timedelta(seconds=2),
        heartbeat_at=timezone.now(),
    )
    sockets = _stand_in_socket(page)
    page.clock.install()
    _open(page, stack, conversation)
    wait_for(lambda: sockets, timeout=10, message="the page's WebSocket")
    page.clock.pause_at(page.evaluate("Date.now()") + 1000)
    card = page.locator(f"#job-{job.pk}")
    left = card.locator("[data-role=remaining]")
    expect(left).to_have_text(TIME_LEFT)

    # The server's latest estimate: 2 s left. It counts down, and runs out at 8 %.
    running = {"job_id": job.pk, "message_id": job.message_id, "conversation_id": conversation.pk}
    running |= {"status": "processing", "progress": 8, "estimated_start_seconds": None, "estimated_seconds": 2}
    _send(sockets, "snapshot", version=1, jobs=[running], service={"state": "closed", "message": ""})
    expect(left).to_have_text("A few seconds left")
    page.clock.run_for(3000)
    expect(left).to_have_text("Taking longer than expected…")
    expect(page).to_have_title("(8%) Honest time · Imagegen")

    # Its steps: 10 % of them in 1.5 s, so 80 % more take 12 s.
    progress = {"job_id": job.pk, "status": "processing", "total": 40}
    _send(sockets, "job.progress", step=4, progress=10, **progress)
    expect(card.locator("[data-role=percent]")).to_have_text("10%")
    page.clock.run_for(1500)
    _send(sockets, "job.progress", step=8, progress=20, **progress)
    expect(left).to_have_text("About 15 s left")
    expect(page).to_have_title("(20%) Honest time · Imagegen")
    shot(page, "honest-time-running")
    page.clock.run_for(5000)
    expect(left).to_have_text("About 10 s left")
    # No step for much longer than the rest should take: it says so.
    page.clock.run_for(15_000)
    expect(left).to_have_text("Taking longer than expected…")
    # Near the end, by its steps and by its clock.
    _send(sockets, "job.progress", step=37, progress=92, **progress)
    expect(left).to_have_text("Almost done…")
    expect(page).to_have_title("(92%) Honest time · Imagegen")


def test_a_queued_cards_wait_follows_the_servers_latest_estimate(open_page, stack):
    page, alice = open_page("alice")
    conversation = conversation_create(owner=alice, title="Waiting")
    job = _submit(alice, conversation, "wait here", not_before=timezone.now() + timedelta(hours=1))
    sockets = _stand_in_socket(page)
    page.clock.install()
    _open(page, stack, conversation)
    wait_for(lambda: sockets, timeout=10, message="the page's WebSocket")
    page.clock.pause_at(page.evaluate("Date.now()") + 1000)
    eta = page.locator(f"#job-{job.pk} [data-role=eta]")

    def positions(version, start, ready):
        entry = {"job_id": job.pk, "position": 2, "estimated_start_seconds": start, "estimated_seconds": ready}
        _send(sockets, "queue.positions", version=version, jobs=[entry])

    positions(1, 60, 85)
    expect(eta).to_have_text("Starts in about 60 s, ready in about 85 s")
    page.clock.run_for(10_000)
    expect(eta).to_have_text("Starts in about 50 s, ready in about 75 s")
    positions(2, 20, 30)  # the job ahead went faster than thought: the card follows at once
    expect(eta).to_have_text("Starts in about 20 s, ready in about 30 s")
    page.clock.run_for(25_000)
    # Its start is overdue: it is still ready no sooner than its own run takes.
    expect(eta).to_have_text("Starting soon, ready in about 10 s")
    positions(3, 0.2, 0.6)  # a sub-second job's estimate is not rounded away
    expect(eta).to_have_text("Starts in a few seconds, ready in a few seconds")


def test_the_tab_title_drops_the_percentage_as_soon_as_no_job_runs(open_page, stack):
    page, alice = open_page("alice")
    # A tab in the background runs its timers once a minute at most: the title must
    # follow the events themselves, not the page's one-second tick.
    page.add_init_script("window.setInterval = () => 0;")
    new_conversation(page)
    title = re.compile(r"^[^(✓].* · Imagegen$")

    submit_prompt(page, "[slow] a quiet harbour", steps="12", width="64", height="64")
    card = page.locator(".job-card").nth(0)
    expect(card.get_by_test_id("job-processing")).to_be_visible(timeout=60_000)
    expect(page).to_have_title(re.compile(r"^\(\d+%\) .* · Imagegen$"))
    expect(card.get_by_test_id("job-complete")).to_be_visible(timeout=60_000)
    expect(page).to_have_title(title)

    submit_prompt(page, "[fail] a broken one", steps="3", width="64", height="64")
    expect(page.locator(".job-card").nth(1).get_by_test_id("job-error")).to_be_visible(timeout=60_000)
    expect(page).to_have_title(title)

    submit_prompt(page, "[slow] a long wait", steps="60", width="64", height="64")
    third = page.locator(".job-card").nth(2)
    expect(third.get_by_test_id("job-processing")).to_be_visible(timeout=60_000)
    expect(page).to_have_title(re.compile(r"^\(\d+%\) "))
    third.get_by_test_id("cancel-button").click()
    expect(third.locator(".chip")).to_have_text("Cancelled")
    expect(page).to_have_title(title)

    page.reload()
    wait_chat_ready(page)
    expect(page).to_have_title(title)


def test_a_real_running_job_never_says_almost_done_before_its_end_on_a_phone(open_page, stack):
    page, alice = open_page("alice", **PHONE)
    # The worker's history says jobs like this one take 0.3 s: this one takes 12 s, so
    # the server's estimate runs out while its progress is low.
    bob = make_user("bob")
    history = conversation_create(owner=bob, title="history")
    now = timezone.now()
    for n in range(3):
        started = now - timedelta(minutes=10 - n)
        _submit(
            bob,
            history,
            f"done {n}",
            steps=30,
            status="complete",
            worker="elsewhere:1",
            started_at=started,
            finished_at=started + timedelta(seconds=0.3),
            progress=100,
        )
    wait_for(
        lambda: Worker.objects.filter(loaded_model="demo").exclude(warmup={}).exists(),
        timeout=30,
        message="the worker's row to hold what its warm-up measured",
    )
    new_conversation(page)
    page.evaluate(
        """() => {
            window.seen = [];
            new MutationObserver(() => {
                document.querySelectorAll('.job-card[data-status="processing"]').forEach((card) => {
                    const text = card.querySelector('[data-role="remaining"]').textContent;
                    const percent = parseInt(card.querySelector('[data-role="percent"]').textContent, 10);
                    const last = window.seen[window.seen.length - 1];
                    if (!last || last[0] !== text || last[1] !== percent) window.seen.push([text, percent]);
                });
            }).observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
        }"""
    )
    submit_prompt(page, "[slow] a long sunrise", steps="30", width="64", height="64")
    card = page.locator(".job-card").nth(0)
    expect(card.get_by_test_id("job-processing")).to_be_visible(timeout=60_000)
    expect(card.locator("[data-role=remaining]")).to_have_text(re.compile(r"^About \d+ s left$"), timeout=20_000)
    shot(page, "honest-time-phone", full_page=False)
    expect(card.get_by_test_id("job-complete")).to_be_visible(timeout=60_000)

    seen = [(text, percent) for text, percent in page.evaluate("window.seen") if text]
    assert seen, "the card said how long was left"
    assert all(TIME_LEFT.match(text) for text, _ in seen), seen
    assert [(text, percent) for text, percent in seen if text == "Almost done…" and percent < 90] == [], seen
