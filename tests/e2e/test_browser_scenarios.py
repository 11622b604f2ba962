"""The browser scenarios of the product specification, in a real Chromium."""

import re
import subprocess
import sys
from datetime import timedelta

from django.utils import timezone
from playwright.sync_api import expect

from chat.services import conversation_create
from generation import services
from generation.models import CircuitBreaker, ImageJob
from tests.e2e.conftest import new_conversation, shot, submit_prompt
from tests.helpers import BASE_DIR, wait_for, worker_env

FAST = {"steps": "6", "width": "256", "height": "256"}


def _block_the_worker(user, *, steps=60):
    """Another user's long job keeps the worker busy while the test submits."""
    conversation = conversation_create(owner=user, title="blocker")
    job = services.job_submit(user=user, conversation=conversation, prompt="a long one", steps=steps).jobs[0]
    wait_for(lambda: ImageJob.objects.get(pk=job.pk).status == "processing", timeout=60, message="blocker running")
    return job


def _cards(page):
    return page.locator(".job-card")


def test_three_prompts_get_their_own_positions_which_move_up_live_and_survive_a_reload(open_page):
    page, alice = open_page("alice")
    page2, carol = open_page("carol")
    _block_the_worker(carol)
    new_conversation(page)

    # The first takes a few seconds, so the moved-up positions can be seen while it runs.
    submit_prompt(page, "castle number 0", steps="25", width="512", height="512")
    for n in (1, 2):
        submit_prompt(page, f"castle number {n}", **FAST)

    cards = _cards(page)
    for n in range(3):  # scenario 1: each card its own position
        expect(cards.nth(n).locator("[data-testid=queue-position]")).to_have_text(f"Position: {n + 1}")
    expect(cards.nth(0).locator(".eta")).to_contain_text("Starts in")
    shot(page, "queued")

    # Scenario 2: the blocker finishes, alice's first starts, the others move up, live.
    expect(cards.nth(0).locator("[data-testid=job-processing]")).to_be_visible(timeout=60_000)
    expect(cards.nth(1).locator("[data-testid=queue-position]")).to_have_text("Position: 1")
    expect(cards.nth(2).locator("[data-testid=queue-position]")).to_have_text("Position: 2")
    expect(cards.nth(0).locator("[data-testid=progress-bar]")).to_be_visible()
    shot(page, "processing")
    expect(cards.nth(0).locator("[data-testid=job-complete] img")).to_be_visible(timeout=60_000)
    expect(cards.nth(0)).to_contain_text("Your image is ready.")

    # Scenario 3: a reload brings back positions, progress and images from the database.
    page.reload()
    cards = _cards(page)
    expect(cards).to_have_count(3)
    expect(cards.nth(0).locator("[data-testid=job-complete] img")).to_be_visible()
    second_state = cards.nth(1).get_attribute("data-status")
    assert second_state in {"processing", "complete"}
    # The page as the server renders it, in one piece: a short job may start between two
    # reads of the live page.
    rendered = page.request.get(page.url).text()
    if 'data-status="queued"' in rendered:
        assert "Position: 1</p>" in rendered and "Position: 2" not in rendered
    expect(cards.nth(2).locator("[data-testid=job-complete] img")).to_be_visible(timeout=60_000)
    shot(page, "complete")
    natural = page.evaluate("document.querySelector('[data-testid=job-complete] img').naturalWidth")
    assert natural == 512, "the image came through the access-checked view"
    page2.close()


def test_a_failing_job_shows_its_error_and_the_next_one_runs(open_page):
    page, alice = open_page("alice")
    new_conversation(page)

    submit_prompt(page, "[fail] this one breaks", **FAST)
    submit_prompt(page, "this one works", **FAST)

    cards = _cards(page)
    expect(cards.nth(0).locator("[data-testid=job-error]")).to_contain_text(
        "Image generation failed because of a problem on the server. Please try again."
    )
    shot(page, "error")
    expect(cards.nth(1).locator("[data-testid=job-complete] img")).to_be_visible(timeout=60_000)

    # The retry button gives the failed job a new attempt (it fails again on purpose).
    cards.nth(0).locator("[data-testid=retry-button]").click()
    expect(cards.nth(0).locator("[data-testid=job-error]")).to_be_visible(timeout=30_000)


def test_several_users_submitting_at_once_get_unique_positions_and_see_only_their_own(open_page):
    alice_page, alice = open_page("alice")
    bob_page, bob = open_page("bob")
    carol_page, carol = open_page("carol")
    _block_the_worker(carol)
    new_conversation(alice_page)
    new_conversation(bob_page)

    for n in range(3):
        submit_prompt(alice_page, f"alice's fox {n}", **FAST)
        submit_prompt(bob_page, f"bob's owl {n}", **FAST)

    def positions(page):
        texts = page.locator("[data-testid=queue-position]").all_inner_texts()
        return [int(re.search(r"\d+", text).group()) for text in texts]

    expect(alice_page.locator("[data-testid=queue-position]")).to_have_count(3)
    expect(bob_page.locator("[data-testid=queue-position]")).to_have_count(3)
    everyone = positions(alice_page) + positions(bob_page)
    assert sorted(everyone) == [1, 2, 3, 4, 5, 6]
    assert "bob's owl" not in alice_page.content()
    assert "alice's fox" not in bob_page.content()
    carol_page.close()


def test_a_stuck_job_becomes_an_error_in_the_browser_without_a_reload(open_page, stack):
    page, alice = open_page("alice")
    new_conversation(page)
    submit_prompt(page, "[hang] this one stops answering", **FAST)
    card = _cards(page).nth(0)
    expect(card.locator("[data-testid=job-processing]")).to_be_visible(timeout=60_000)

    # Move the clock: its last heartbeat was six minutes ago. Then the guard runs, as
    # the maintenance cluster (or an operator) runs it: in a process of its own.
    job = ImageJob.objects.get(owner=alice)
    ImageJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=6))
    guard = subprocess.run(
        [sys.executable, "manage.py", "expire_stuck_jobs"],
        cwd=BASE_DIR,
        env=worker_env(stack["data_dir"]),
        capture_output=True,
        text=True,
    )

    # The maintenance cluster's own run of the guard, every minute, may get there first.
    assert guard.returncode == 0 and "Expired" in guard.stdout, guard.stderr
    assert ImageJob.objects.get(pk=job.pk).error == "Generation timed out (stuck job guard)"
    expect(card.locator("[data-testid=job-error]")).to_contain_text("Generation timed out (stuck job guard)")
    # The worker moves on to the next job.
    submit_prompt(page, "after the stuck one", **FAST)
    expect(_cards(page).nth(1).locator("[data-testid=job-complete] img")).to_be_visible(timeout=60_000)


def test_an_open_circuit_breaker_shows_a_notice_holds_jobs_and_resumes_them(open_page):
    page, alice = open_page("alice")
    new_conversation(page)
    notice = page.locator("#service-notice")
    expect(notice).to_be_hidden()

    for n in range(5):
        submit_prompt(page, f"[fail] broken backend {n}", **FAST)
    expect(notice).to_contain_text("paused after repeated failures", timeout=60_000)
    assert CircuitBreaker.objects.get(name="generation").state == "open"
    expect(_cards(page).locator("[data-testid=job-error]")).to_have_count(5)

    submit_prompt(page, "kept while open 1", **FAST)
    submit_prompt(page, "kept while open 2", **FAST)
    kept = _cards(page).nth(5)
    expect(kept.locator("[data-testid=queue-position]")).to_have_text("Position: 1")
    shot(page, "breaker-open")

    # After the cool-down the first kept job is the trial; it succeeds and the rest follow.
    expect(_cards(page).nth(6).locator("[data-testid=job-complete] img")).to_be_visible(timeout=60_000)
    expect(kept.locator("[data-testid=job-complete] img")).to_be_visible()
    expect(notice).to_be_hidden()
    assert CircuitBreaker.objects.get(name="generation").state == "closed"


def test_a_card_whose_job_ends_before_the_submit_answers_still_shows_the_outcome(open_page):
    page, alice = open_page("alice")
    new_conversation(page)
    # The answer to the submit reaches the page only once the worker has finished the
    # job: every live event about it came before its card existed.
    done = []

    def hold_the_answer(route):
        answer = route.fetch()
        job = ImageJob.objects.filter(owner=alice).first()
        wait_for(lambda: ImageJob.objects.get(pk=job.pk).status == "complete", timeout=60, message="job done")
        done.append(job.pk)
        route.fulfill(response=answer)

    page.route("**/submit/", hold_the_answer)
    submit_prompt(page, "a quick one", **FAST)
    assert done, "the answer was not held"
    expect(_cards(page).nth(0).locator("[data-testid=job-complete] img")).to_be_visible(timeout=10_000)
    expect(_cards(page).nth(0)).to_contain_text("Your image is ready.")
