"""Several images in one card, and several users' images in one pass, in a real Chromium."""

from playwright.sync_api import expect

from chat.services import conversation_create
from generation import services
from generation.models import ImageJob
from tests.conftest import make_user
from tests.e2e.conftest import new_conversation, shot, submit_prompt
from tests.helpers import wait_for

# The CPU worker makes up to 4 images per pass here (on a GPU that is the default).
STACK_EXTRA_ENV = {"IMAGEGEN_MAX_BATCH": "4"}


def test_four_images_asked_for_in_one_prompt_show_in_one_card_with_their_own_downloads(open_page):
    page, alice = open_page("alice")
    new_conversation(page)

    submit_prompt(page, "four lighthouses", count="4", seed="500", steps="6", width="128", height="128")

    group = page.get_by_test_id("job-group")
    expect(group).to_have_count(1)
    cards = group.locator(".job-card")
    expect(cards).to_have_count(4)
    expect(group).to_contain_text("4 images")
    for n in range(4):
        expect(cards.nth(n).get_by_test_id("image-number")).to_have_text(f"Image {n + 1} of 4")
        expect(cards.nth(n).locator("[data-testid=job-complete] img")).to_be_visible(timeout=90_000)
    shot(page, "four-images")
    downloads = [cards.nth(n).get_by_role("link", name="Download").get_attribute("href") for n in range(4)]
    assert len(set(downloads)) == 4, "each image has its own download"
    for n in range(4):
        expect(cards.nth(n).locator("figcaption")).to_contain_text(f"Seed {500 + n}")
    jobs = list(ImageJob.objects.filter(owner=alice).order_by("image_index"))
    assert len({job.message_id for job in jobs}) == 1, "one prompt, one message"

    page.reload()  # and the same after a reload
    expect(page.get_by_test_id("job-group").locator("[data-testid=job-complete] img")).to_have_count(4)


def test_two_users_compatible_jobs_run_in_one_pass_and_both_see_live_progress(open_page):
    page_a, alice = open_page("alice")
    page_b, bob = open_page("bob")
    # A job of another size holds the worker until both have submitted.
    carol = make_user("carol")
    blocker = services.job_submit(
        user=carol, conversation=conversation_create(owner=carol, title="blocker"), prompt="[hang] hold on", width=64
    ).jobs[0]
    wait_for(lambda: ImageJob.objects.get(pk=blocker.pk).status == "processing", timeout=60, message="blocker runs")
    shared = {"steps": "40", "width": "192", "height": "192", "guidance": "7"}
    for page, prompt in ((page_a, "alice's harbour"), (page_b, "bob's harbour")):
        new_conversation(page)
        submit_prompt(page, prompt, **shared)
        expect(page.locator("[data-testid=queue-position]")).to_be_visible()

    services.job_cancel(job=blocker)  # the worker is free: one pass for both

    for page in (page_a, page_b):
        card = page.locator(".job-card").last
        expect(card.locator("[data-testid=progress-bar]")).to_be_visible(timeout=60_000)
        expect(card.locator("[data-role=percent]")).not_to_have_text("0%", timeout=30_000)
    shot(page_b, "batched-progress")
    for page in (page_a, page_b):
        expect(page.locator(".job-card").last.locator("[data-testid=job-complete] img")).to_be_visible(timeout=90_000)
    jobs = list(ImageJob.objects.filter(owner__in=[alice, bob]))
    assert len(jobs) == 2 and jobs[0].batch == jobs[1].batch and jobs[0].batch_size == 2, "one pass for both"
    # Each page shows only its own user's job.
    expect(page_a.locator(".job-card")).to_have_count(1)
    expect(page_b.locator(".job-card")).to_have_count(1)
