"""The fair queue policy in the browser: a light user's image is not stuck behind a
heavy user's backlog, and everyone's cards say so, live and after a reload."""

import pytest
from playwright.sync_api import expect

from generation import services
from generation.models import ImageJob
from tests.conftest import make_user
from tests.e2e.conftest import new_conversation, shot, submit_prompt
from tests.e2e.test_browser_scenarios import _block_the_worker
from tests.helpers import wait_for

STACK_EXTRA_ENV = {"IMAGEGEN_QUEUE_POLICY": "fair"}
FAST = {"steps": "4", "width": "128", "height": "128"}


@pytest.fixture
def fair(settings):
    # The blocker is queued from this process: as the stack's web server does it.
    settings.IMAGEGEN_QUEUE_POLICY = "fair"


def _positions(page) -> list[str]:
    return page.locator("[data-testid=queue-position]").all_inner_texts()


def test_bobs_one_image_goes_second_behind_alices_eight_and_her_cards_move_back(fair, open_page):
    alice_page, alice = open_page("alice")
    bob_page, bob = open_page("bob")
    blocker = _block_the_worker(make_user("carol"))
    new_conversation(alice_page)
    new_conversation(bob_page)

    submit_prompt(alice_page, "eight lighthouses", count="8", **FAST)
    mine = [f"Position: {n}" for n in range(1, 9)]
    expect(alice_page.locator("[data-testid=queue-position]")).to_have_text(mine)

    submit_prompt(bob_page, "one boat", **FAST)
    bob_card = bob_page.locator(".job-card")
    expect(bob_card.get_by_test_id("queue-position")).to_have_text("Position: 2")
    expect(bob_card.get_by_test_id("images-ahead")).to_have_text("1 image ahead of yours in the shared queue.")
    # Alice's first keeps its place; the other seven move back by one, live.
    moved = ["Position: 1", *(f"Position: {n}" for n in range(3, 10))]
    expect(alice_page.locator("[data-testid=queue-position]")).to_have_text(moved)
    shot(alice_page, "fair-queue-alice")
    shot(bob_page, "fair-queue-bob")

    for page in (alice_page, bob_page):
        page.reload()
    expect(alice_page.locator("[data-testid=queue-position]")).to_have_text(moved)
    expect(bob_page.get_by_test_id("queue-position")).to_have_text("Position: 2")
    expect(alice_page.locator("[data-testid=images-ahead]").nth(1)).to_have_text(
        "2 images ahead of yours in the shared queue."
    )

    services.job_cancel(job=blocker)
    expect(bob_card.locator("[data-testid=job-complete] img")).to_be_visible(timeout=60_000)
    bobs = ImageJob.objects.get(owner=bob)
    alices_before = ImageJob.objects.filter(owner=alice, started_at__lt=bobs.started_at).count()
    assert alices_before == 1, "bob's image started after exactly one of alice's"
    wait_for(lambda: ImageJob.objects.filter(owner=alice, status="complete").count() == 8, timeout=120)
