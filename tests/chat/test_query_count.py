from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from generation.models import ImageJob


def _page_queries(client, conversation) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("chat:conversation", args=[conversation.pk]))
    assert response.status_code == 200
    return len(queries)


def _add_jobs(submit, count):
    jobs = [submit(f"prompt {n}") for n in range(count)]
    # A mix of states, as a long conversation has.
    for n, job in enumerate(jobs):
        state = ["queued", "processing", "complete", "error", "cancelled"][n % 5]
        ImageJob.objects.filter(pk=job.pk).update(status=state, progress=50 if state == "processing" else 0)


def test_the_conversation_page_makes_the_same_number_of_queries_however_long_it_is(
    settings, client, alice, alice_chat, submit
):
    settings.IMAGEGEN_MAX_PENDING_PER_USER = 1000
    settings.IMAGEGEN_SUBMISSIONS_PER_MINUTE = 1000
    client.force_login(alice)
    _add_jobs(submit, 5)
    short = _page_queries(client, alice_chat)
    _add_jobs(submit, 45)
    long = _page_queries(client, alice_chat)
    assert long == short, f"{short} queries for 10 messages, {long} for 100"
