"""Thirty jobs from three users: every position a page shows is the job's rank in the table."""

import re

from playwright.sync_api import expect

from chat.models import Conversation
from generation import selectors, services
from generation.models import ImageJob
from tests.e2e.conftest import new_conversation, shot
from tests.helpers import wait_for

TINY = {"steps": 2, "width": 64, "height": 64}
LONG = {"steps": 100, "width": 512, "height": 512}


def _shown_positions(page) -> dict[int, int]:
    """job id -> the position its card shows, for every queued card on the page."""
    shown = {}
    for card in page.locator('.job-card[data-status="queued"]').all():
        text = card.locator('[data-role="position"]').inner_text()
        match = re.fullmatch(r"Position: (\d+)", text.strip())
        shown[int(card.get_attribute("data-job-id"))] = int(match.group(1)) if match else None
    return shown


def _all_exact(pages) -> bool:
    ranks = selectors.queue_positions()
    for page in pages:
        shown = _shown_positions(page)
        if not shown or any(ranks.get(job_id) != position for job_id, position in shown.items()):
            return False
    return True


def test_thirty_jobs_from_three_users_show_their_exact_ranks_live_and_after_a_reload(open_page):
    pages, chats = [], {}
    for name in ("alice", "bob", "carol"):
        page, user = open_page(name)
        new_conversation(page)
        chats[name] = (user, Conversation.objects.filter(owner=user).latest("pk"))
        pages.append(page)

    # Ten each, interleaved as people would send them; the eighth is long, so the queue
    # stands still with jobs waiting once the first seven are done.
    jobs = []
    for n in range(30):
        user, conversation = chats[("alice", "bob", "carol")[n % 3]]
        params = LONG if n == 7 else TINY
        jobs.append(services.job_submit(user=user, conversation=conversation, prompt=f"job {n}", **params).jobs[0])
    for page in pages:
        page.reload()

    long_job = jobs[7]
    wait_for(
        lambda: ImageJob.objects.get(pk=long_job.pk).status == "processing",
        timeout=120,
        message="the first seven done and the long one running",
    )
    assert ImageJob.objects.filter(pk__in=[job.pk for job in jobs[:7]], status="complete").count() == 7

    # Bob cancels one of his waiting jobs from his page.
    bob_page = pages[1]
    cancelled = jobs[13]
    bob_page.locator(f'[data-job-id="{cancelled.pk}"] form[action$="/cancel/"] button').click()
    expect(bob_page.locator(f'[data-job-id="{cancelled.pk}"]')).to_have_attribute("data-status", "cancelled")

    # Live: every visible position equals the rank in the job table.
    wait_for(lambda: _all_exact(pages), timeout=30, message="every shown position equal to its rank")
    ranks = selectors.queue_positions()
    assert sorted(ranks.values()) == list(range(1, 22)), "22 waiting, less the cancelled one"
    shot(pages[0], "thirty-jobs-live")

    # After a reload: the same numbers, from the database.
    for page in pages:
        page.reload()
    assert _all_exact(pages), "a reload shows the ranks of the job table"
    assert selectors.queue_positions() == ranks, "the queue stood still meanwhile"
    shot(pages[0], "thirty-jobs-reloaded")
    services.job_cancel(job=ImageJob.objects.get(pk=long_job.pk))
